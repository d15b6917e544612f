"""The CapabilityStatement: generated from what the code supports, so it cannot drift from it."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any

from esus.domain.compartment import COMPARTMENT_DEFINITION, PATIENT
from esus.domain.fhir import PROVENANCE, RESOURCE_TYPES, SUPPORTED_TYPES, now_instant
from esus.domain.search_legacy import PROVENANCE_PARAMS, PROVENANCE_REFERENCE_PARAMS
from esus.domain.search_params import params_for
from esus.security.auth import V1_MEANING
from esus.settings import Settings

EVERYTHING = {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
PROVENANCE_AGENT_TYPES = ("Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson")

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
        "searchInclude": [f"{PROVENANCE}:{code}" for code in PROVENANCE_REFERENCE_PARAMS],
        "searchRevInclude": _rev_includes().get(PROVENANCE, []),
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
                **_oauth_uris(settings),
                "cors": False,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
                }]}],
                "description": "Bearer JWT (RS256/ES256) with tenant, scope (SMART v1/v2: user/, system/ and patient/ "
                               "scopes), fhirUser and, for patient/ scopes, patient (the launch context) claims; "
                               "discovery at .well-known/smart-configuration",
            },
            "resource": resources,
            "compartment": [COMPARTMENT_DEFINITION],
            "interaction": [{"code": "history-system"}],
        }],
    }


def _resource_entry(resource_type: str) -> dict[str, Any]:
    """Search parameters: exactly those of the generated table (esus.domain.search_params), which all work."""
    interactions = ["create", "read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                    "search-type"]
    params = params_for(resource_type)
    extra = {"operation": [EVERYTHING]} if resource_type == PATIENT else {}
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
        "searchInclude": sorted(f"{resource_type}:{code}" for code, p in params.items() if p.type == "reference"),
        "searchRevInclude": _rev_includes().get(resource_type, []),
        **extra,
    }


@lru_cache(maxsize=1)
def _rev_includes() -> dict[str, list[str]]:
    """Per type, every `Source:param` whose references can point at it (the _revinclude values that work)."""
    found: dict[str, set[str]] = defaultdict(set)
    for source in RESOURCE_TYPES:
        for code, param in params_for(source).items():
            if param.type == "reference":
                for target in (param.resolve,) if param.resolve else param.targets or tuple(SUPPORTED_TYPES):
                    found[target].add(f"{source}:{code}")
    for target in SUPPORTED_TYPES:  # Provenance.target and .entity may name any resource
        found[target] |= {f"{PROVENANCE}:target", f"{PROVENANCE}:entity"}
    found[PATIENT].add(f"{PROVENANCE}:patient")
    for target in PROVENANCE_AGENT_TYPES:
        found[target].add(f"{PROVENANCE}:agent")
    return {t: sorted(v) for t, v in found.items() if t in SUPPORTED_TYPES}


def _oauth_uris(settings: Settings) -> dict[str, Any]:
    """SMART App Launch's oauth-uris extension (what SMART v1 clients read), when the endpoints are configured."""
    uris = [(name, url) for name, url in (("authorize", settings.smart_authorization_endpoint),
                                          ("token", settings.smart_token_endpoint)) if url]
    if not uris:
        return {}
    return {"extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                           "extension": [{"url": name, "valueUri": url} for name, url in uris]}]}


SMART_CAPABILITIES = (
    # What ESUS itself enforces; launch flows and client authentication are the identity provider's.
    "context-ehr-patient", "context-standalone-patient", "permission-patient", "permission-user", "permission-v1",
    "permission-v2",
)


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """GET /fhir/.well-known/smart-configuration (SMART App Launch 2.0 discovery). The OAuth endpoints are the
    identity provider's (template parameters SmartAuthorizationEndpoint and SmartTokenEndpoint)."""
    contexts = ("patient", "user", "system")
    scopes = ["openid", "fhirUser", "launch/patient", *(f"{c}/*.{a}" for c in contexts for a in (*V1_MEANING, "cruds",
                                                                                                 "rs"))]
    document: dict[str, Any] = {
        "issuer": settings.jwt_issuer,
        "jwks_uri": settings.jwks_url,
        "authorization_endpoint": settings.smart_authorization_endpoint,
        "token_endpoint": settings.smart_token_endpoint,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
        "capabilities": list(SMART_CAPABILITIES),
    }
    return {k: v for k, v in document.items() if v}


def _params(names: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"name": n, "type": SEARCH_PARAM_TYPES[n]} for n in names]
