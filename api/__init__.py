"""HTTP edge: routes, content negotiation, FHIR and JSON error bodies."""
