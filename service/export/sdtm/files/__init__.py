"""The SDTMIG 3.4 variable metadata, CDISC CT subset and FHIR-to-CDISC maps (TOML), read with importlib.resources."""
