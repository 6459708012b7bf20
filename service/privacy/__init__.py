"""What the trial API and its webhooks may show of a patient: opaque evidence ids, ages, no FHIR ids."""
