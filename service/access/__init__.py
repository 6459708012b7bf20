"""Who may do what: registered API clients, SMART Backend Services access tokens, and scopes.

Authentication happens at the edge (`api/`), which asks this package to exchange a client's
signed assertion for an access token, to verify a bearer token, and whether its scopes allow a
FHIR interaction or a study action. May import `service.notifications` (the outbound-URL
rules for JWKS URLs), `service.repositories`, `service.infra` and `service.errors`.
"""
