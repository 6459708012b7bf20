"""The CapabilityStatement: what this server really does, derived from the same tables it uses."""

from __future__ import annotations

from typing import Any

from fhir_mapping.bundles import ACCEPTED_BUNDLE_TYPES
from fhir_mapping.resource_types import REFERENCE_PARAMS, SUPPORTED_TYPES
from service.infra.clock import fhir_instant, utcnow

_PARAM_DOCS = {
    "_id": ("token", "Logical id, comma-separated for any of several"),
    "identifier": ("token", "system|value, |value, system| or value"),
    "_lastUpdated": (
        "date",
        "When the current version was stored; prefixes eq ne gt lt ge le sa eb",
    ),
}
_CAPABILITY_DATE = "2026-11-21"


# The audit trail's own search parameters (service.reads.audit_log), `audit` scope only.
_AUDIT_PARAMS = {
    "AuditEvent": [
        ("agent", "reference", "Client id (or urn:trialbridge:client|id) that made the request"),
        ("entity", "reference", "Type/id, or :identifier system|value of a study or subject"),
        ("date", "date", "When the request was answered; prefixes eq gt lt ge le sa eb"),
    ],
    "Provenance": [
        ("agent", "reference", "Client id (or urn:trialbridge:client|id) that wrote"),
        ("target", "reference", "Type/id of a resource written"),
        ("recorded", "date", "When the write committed; prefixes eq gt lt ge le sa eb"),
    ],
}


def _search_params(rtype: str) -> list[dict[str, str]]:
    if rtype in _AUDIT_PARAMS:
        return [{"name": n, "type": t, "documentation": d} for n, t, d in _AUDIT_PARAMS[rtype]]
    params = [
        {"name": name, "type": kind, "documentation": doc}
        for name, (kind, doc) in _PARAM_DOCS.items()
    ]
    for name in sorted(REFERENCE_PARAMS.get(rtype, {})):
        params.append({"name": name, "type": "reference", "documentation": "Type/id or id"})
    return params


def _security(base_url: str) -> dict[str, Any]:
    """SMART on FHIR (Backend Services): where to get a token, advertised as the spec asks."""
    token_url = base_url.removesuffix("/fhir") + "/auth/token"
    return {
        "cors": False,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "Bearer tokens from the token endpoint (SMART Backend Services: "
        "client_credentials with an RS384/ES384 client assertion); system scopes per resource type",
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token_url}],
            }
        ],
    }


def capability_statement(*, base_url: str, version: str) -> dict[str, Any]:
    """CapabilityStatement (kind=instance) for FHIR R4 4.0.1, JSON only."""
    interactions = ["read", "vread", "update", "delete", "create", "search-type"]
    resources = [
        {
            "type": rtype,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "local"],
            "searchParam": _search_params(rtype),
        }
        for rtype in sorted(SUPPORTED_TYPES)
    ]
    resources.append(
        {
            "type": "AuditEvent",
            "documentation": "The audit trail, recorded by this server (scope `audit`)",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": _search_params("AuditEvent"),
        }
    )
    resources.sort(key=lambda r: str(r["type"]))
    for resource in resources:
        if resource["type"] == "Provenance":
            resource["documentation"] = (
                "Search answers the Provenance this server records for every write (scope "
                "`audit`); Provenance a client sends is stored as received and read by id"
            )
    doc = (
        "FHIR R4 store for clinical-trial ingest. Only the resource types listed are accepted; "
        "others are refused with OperationOutcome not-supported. Bundle types accepted at the base: "
        + ", ".join(ACCEPTED_BUNDLE_TYPES)
        + ". collection and message Bundles are stored atomically as an upsert of every resource "
        "they carry (the MessageHeader of a message is not stored). POST with identical content "
        "returns the existing resource (200) instead of a copy; updates with identical content "
        "create no new version. Unknown search parameters and modifierExtensions are refused."
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _CAPABILITY_DATE,
        "publisher": "trialbridge",
        "kind": "instance",
        "software": {"name": "trialbridge", "version": version},
        "implementation": {"description": "trialbridge FHIR R4 endpoint", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": doc,
                "security": _security(base_url),
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [
                    {
                        "name": "import",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import",
                        "documentation": "POST application/fhir+ndjson; one resource per line, each "
                        "upserted on its own; answers a batch-response with one entry per line",
                    }
                ],
            }
        ],
        "meta": {"lastUpdated": fhir_instant(utcnow())},
    }
