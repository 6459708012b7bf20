"""Errors that carry their HTTP status and FHIR issues, so one handler can render them all."""

from __future__ import annotations

from fhir_mapping.issues import InvalidContentError, Issue


class FhirError(Exception):
    """A request we refuse: HTTP status plus OperationOutcome issues."""

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


class WriteConflictError(Exception):
    """Another request changed the same resource first; the unit of work is retried."""


class ApiError(Exception):
    """A JSON-API request we refuse: status, a stable machine code, and a message for people."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, object]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
