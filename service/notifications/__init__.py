"""Webhook subscriptions and at-least-once delivery from the transactional outbox (signing,
SSRF checks, retries with back-off, leases). May import `service.repositories`,
`service.infra` and `service.errors`.
"""
