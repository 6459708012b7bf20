"""Small builders for FHIR test payloads."""

from __future__ import annotations

import json
from typing import Any


def entry(
    resource: dict[str, Any], method: str, url: str, full_url: str | None = None, **request: str
) -> dict[str, Any]:
    """A transaction/batch entry."""
    out: dict[str, Any] = {
        "resource": resource,
        "request": {"method": method, "url": url, **request},
    }
    if full_url:
        out["fullUrl"] = full_url
    return out


def bundle(kind: str, *entries: dict[str, Any]) -> bytes:
    """A Bundle of the given type, serialised."""
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    """A Patient with one MRN identifier."""
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], **extra}


def observation(subject: str, value: float | str = 1, **extra: Any) -> dict[str, Any]:
    """A final Observation about `subject` with a quantity."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "percent viable tumour"},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "%"},
        **extra,
    }


def statuses(response_bundle: dict[str, Any]) -> list[str]:
    """The response.status of each entry of a transaction/batch response."""
    return [e["response"]["status"] for e in response_bundle["entry"]]
