"""Use cases of the trial service, grouped by role; every import points down this list.

reads | fhir -> access -> derivation | notifications -> studies -> stats -> protocol -> repositories ->
infra -> errors. `pyproject.toml`'s import-linter contracts check the order, that study kinds
never import each other, and that only `studies.registry` names a kind.
"""
