"""Study kinds as plug-ins. `kind.py` says what a kind supplies (membership, per-subject refresh,
cohort report, optional capabilities); `registry.py` lists the kinds; each kind is a package
(`interventional/`, `cirae/`) that never imports another kind. Clinical logic here is pure
functions over trial events; refresh functions write through `service.repositories`. May import
`service.stats`, `service.protocol`, `service.repositories`, `service.infra`, `fhir_mapping`.
"""
