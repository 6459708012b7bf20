"""Use cases: ingest, search, persistence and configuration of the trial service."""
