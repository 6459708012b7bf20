"""All SQL, one module per kind of row: FHIR versions and search, trial events, study subjects,
eligibility results, deviation records, the webhook outbox, service secrets. Functions take a
session and never commit (the use case owns the transaction). May import `service.infra`,
`service.errors` (search refuses bad parameters) and `fhir_mapping` only.
"""
