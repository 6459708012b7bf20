"""Protocol files as data: the shared schema every study kind's protocol extends (strict pydantic,
`extra="forbid"`), loading and checking files, and the packaged protocol and value-set TOML files
(`files/`). May import `service.infra` and `fhir_mapping`; it knows no study kind (each kind's
protocol model lives in its own package and is registered in `service.studies.registry`).
"""
