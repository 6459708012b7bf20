"""Pulling from hospital FHIR servers: sources, SMART Backend Services tokens, Bulk Data `$export`
with a per-type search fallback, and the jobs the API starts. Ingest is the push path's `$import`."""
