"""Writing FHIR to the live server over HTTP the way feeds do: one transaction of PUTs."""

from __future__ import annotations

from typing import Any

import httpx

from tests.kit.fhir import put_all


def put_resources(
    fhir: httpx.Client, *resources: dict[str, Any], status: int = 200
) -> httpx.Response:
    """PUT the resources by id in one transaction Bundle; the answer must have `status`."""
    response = fhir.post("", content=put_all(*resources))
    assert response.status_code == status, response.text
    return response
