"""FHIR resources → typed trial events: one module per resource type, one explicit registry."""
