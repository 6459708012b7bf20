"""One error hierarchy: every refusal carries the HTTP status it answers with; `api/` renders it.

`TrialbridgeError` is the base. `FhirError` carries OperationOutcome issues (FHIR endpoints),
`ApiError` a stable code, message and details (the JSON API), and `DatabaseUnavailableError` is the
one way any use case says the database cannot be reached: api/errors.py renders it as the FHIR
`transient` outcome or the JSON `database_unavailable` error, by endpoint.
"""

from __future__ import annotations

from typing import Literal

from fhir_mapping.issues import InvalidContentError, Issue


class TrialbridgeError(Exception):
    """A request the service refuses on purpose, with the HTTP status that says why."""

    status: int = 500


class FhirError(TrialbridgeError):
    """A FHIR request we refuse: HTTP status plus OperationOutcome issues."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = issues

    @classmethod
    def of(cls, status: int, code: str, diagnostics: str, *expression: str) -> FhirError:
        """Shorthand for a single-issue error."""
        return cls(status, [Issue(code, diagnostics, expression)])

    @classmethod
    def from_invalid(cls, exc: InvalidContentError) -> FhirError:
        """Status for content problems: 422 when only business rules failed, else 400."""
        business = {"extension", "not-supported", "business-rule"}
        status = 422 if exc.issues and all(i.code in business for i in exc.issues) else 400
        return cls(status, exc.issues)


class ApiError(TrialbridgeError):
    """A JSON-API request we refuse: status, a stable machine code, and a message for people."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, object]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class NotReadyError(ApiError):
    """A result that is being computed off the request path: 503, and when to ask again."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(503, code, message)
        self.retry_after = retry_after


class DatabaseUnavailableError(FhirError):
    """The database could not be reached; during a write, nothing was written.

    A FhirError (a `transient` issue) so FHIR use cases treat it like any refusal; the JSON API
    renders it as `database_unavailable`.
    """

    def __init__(self, during: Literal["read", "write"]) -> None:
        retry = "nothing was written, retry later" if during == "write" else "retry later"
        super().__init__(503, [Issue("transient", f"the database is unavailable; {retry}")])
        self.during = during


class AuthError(TrialbridgeError):
    """A request without a valid token (401 `invalid_token`) or without the scope (403)."""

    def __init__(self, status: Literal[401, 403], code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class OAuthError(TrialbridgeError):
    """A token request refused per RFC 6749 §5.2: `{"error", "error_description"}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class RateLimitedError(TrialbridgeError):
    """A client or address that spent its request budget: 429, and when to come back."""

    status = 429

    def __init__(self, retry_after: int, whose: Literal["client", "address"]) -> None:
        super().__init__(
            f"too many requests from this {whose}; retry after {retry_after} second(s)"
        )
        self.retry_after = retry_after
        self.whose = whose
