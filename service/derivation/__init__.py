"""Keeps trial events and study subjects in step with the FHIR store inside each write: maps
written resources to events, follows dependencies, recomputes membership and asks each study
kind (through the registry) to refresh its subjects. Also loads the catalog of protocols and
value sets. May import `service.studies`, `service.protocol`, `service.repositories`,
`service.infra`, `fhir_mapping`.
"""
