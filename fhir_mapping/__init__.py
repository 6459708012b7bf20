"""Pure FHIR R4 logic: lossless JSON, validation, references; no DB, HTTP or settings."""
