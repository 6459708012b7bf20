"""The official CDISC Dataset-JSON v1.1 JSON Schema (vendored, MIT; see its licence file)."""
