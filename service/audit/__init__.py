"""The audit trail: an AuditEvent for every request that touches patient data, a Provenance per write."""
