"""The FHIR REST use cases: create, read, update, delete, search, history, transaction and batch,
$import; ingest planning and writing, model-check workers, response Bundles and the
CapabilityStatement. Each use case is one unit of work that runs derivation before it commits.
May import `service.derivation` and everything below it.
"""
