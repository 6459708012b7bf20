"""The live server over HTTP: writing FHIR the way feeds do (one transaction of PUTs), reading JSON."""

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


def get_json(api: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """The JSON body of a GET that must answer 200."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
