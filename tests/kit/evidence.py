"""Evidence ids resolved back to the FHIR versions they cite, as a monitor's SDV tool does."""

from __future__ import annotations

from typing import Any

import httpx

_RESOLVED: dict[tuple[str, str, str], dict[str, Any]] = {}


def cited(api: httpx.Client, study: str, body: Any) -> Any:
    """`body` with every {evidence_id, resource_type} resolved through the evidence endpoint.

    Each becomes {resource_type, id, version, reference} (and keeps its `value`), so a test can
    name the resource version it expects; `api` is a client on /api/v1 allowed to read /fhir.
    """
    if isinstance(body, list):
        return [cited(api, study, item) for item in body]
    if not isinstance(body, dict):
        return body
    if "evidence_id" in body and "resource_type" in body:
        key = (str(api.base_url), study, body["evidence_id"])
        if key not in _RESOLVED:
            answer = api.get(f"/studies/{study}/evidence/{body['evidence_id']}")
            assert answer.status_code == 200, answer.text
            reference = answer.json()["reference"]
            rtype, rid, _, version = reference.split("/")
            _RESOLVED[key] = {
                "resource_type": rtype,
                "id": rid,
                "version": version,
                "reference": reference,
            }
        rest = {k: v for k, v in body.items() if k not in ("evidence_id", "resource_type")}
        return {**_RESOLVED[key], **rest}
    return {k: cited(api, study, v) for k, v in body.items()}
