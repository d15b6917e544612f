"""The CapabilityStatement: generated from what the code supports, so it cannot drift from it."""

from __future__ import annotations

from typing import Any

from esus.domain.fhir import PROVENANCE, RESOURCE_TYPES, now_instant
from esus.domain.search_legacy import PROVENANCE_PARAMS
from esus.domain.search_params import params_for
from esus.settings import Settings

SEARCH_PARAM_TYPES = {
    "phone": "token", "email": "token", "telecom": "token", "identifier": "token",
    "target": "reference", "agent": "reference", "patient": "reference", "entity": "reference",
    "recorded": "date", "_id": "token",
}


def capability_statement(settings: Settings, base_url: str) -> dict[str, Any]:
    resources = [_resource_entry(t) for t in sorted(RESOURCE_TYPES)]
    resources.append({
        "type": PROVENANCE,
        "interaction": [{"code": c} for c in ("create", "read", "vread", "search-type")],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "searchParam": _params(PROVENANCE_PARAMS),
    })
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "publisher": "ESUS",
        "kind": "instance",
        "software": {"name": "ESUS FHIR API", "version": "0.1.0"},
        "implementation": {"description": "ESUS serverless FHIR R4 API", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": False,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
                }]}],
                "description": "Bearer JWT (RS256/ES256) with tenant, scope (SMART v1/v2) and fhirUser claims",
            },
            "resource": resources,
            "interaction": [{"code": "history-system"}],
        }],
    }


def _resource_entry(resource_type: str) -> dict[str, Any]:
    """Search parameters: exactly those of the generated table (esus.domain.search_params), which all work."""
    interactions = ["create", "read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                    "search-type"]
    params = params_for(resource_type)
    return {
        "type": resource_type,
        "interaction": [{"code": c} for c in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchParam": [{"name": code, "type": p.type} for code, p in sorted(params.items())],
    }


def _params(names: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"name": n, "type": SEARCH_PARAM_TYPES[n]} for n in names]
