"""The OpenAPI 3.0 description of the API, generated from what the code supports (served at
GET /fhir/openapi.json and kept in docs/openapi.json; a test holds both to the template's routes)."""

from __future__ import annotations

from typing import Any

from esus.domain.compartment import compartment_types
from esus.domain.fhir import ID_PATTERN, PROVENANCE, RESOURCE_TYPES, SUPPORTED_TYPES
from esus.domain.search_legacy import PROVENANCE_PARAMS
from esus.domain.search_params import params_for

FHIR_JSON = "application/fhir+json"
OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}
RESOURCE = {"$ref": "#/components/schemas/Resource"}
BUNDLE = {"$ref": "#/components/schemas/Bundle"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {FHIR_JSON: {"schema": schema}, "application/json": {"schema": schema}}


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False, text: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": text}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _responses(success: dict[str, Any]) -> dict[str, Any]:
    errors = {
        "400": "Invalid request (OperationOutcome lists the problems with their element paths)",
        "401": "Missing or invalid bearer token", "403": "The token's scopes do not allow this",
        "404": "Unknown type, resource or route", "409": "Lost a race with a concurrent writer; retry",
        "410": "Deleted", "412": "If-Match (or a conditional search) did not hold",
        "413": "Too large for one item or one transaction", "415": "Unsupported Content-Type",
        "422": "Unprocessable (e.g. a failing JSON Patch test)", "429": "Throttled; see Retry-After",
        "500": "Internal error (correlation id only)", "503": "A backing service failed; see Retry-After",
    }
    return {**success, **{code: {"description": text, "content": {FHIR_JSON: {"schema": OUTCOME}}}
                          for code, text in errors.items()}}


def _ok(code: str, text: str, schema: dict[str, Any] | None = RESOURCE) -> dict[str, Any]:
    content = {"content": {FHIR_JSON: {"schema": schema}}} if schema else {}
    return {code: {"description": text, **content}}


def _op(summary: str, params: list[dict[str, Any]], responses: dict[str, Any], body: dict[str, Any] | None = None,
        public: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": params, "responses": _responses(responses)}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    if public:
        operation["security"] = []
    return operation


def _search_parameters() -> list[dict[str, Any]]:
    """Every search parameter name, with the types that offer it (the CapabilityStatement has them per type)."""
    offered: dict[str, dict[str, str]] = {name: {PROVENANCE: "reference" if name != "recorded" else "date"}
                                          for name in PROVENANCE_PARAMS}
    offered["_id"][PROVENANCE] = "token"
    for resource_type in sorted(RESOURCE_TYPES):
        for code, param in params_for(resource_type).items():
            offered.setdefault(code, {})[resource_type] = param.type
    return [
        _param(name, "query", {"type": "string"}, text="; ".join(
            f"{kind} on {', '.join(sorted(t for t, k in types.items() if k == kind))}"
            for kind in sorted(set(types.values()))))
        for name, types in sorted(offered.items())
    ]


def openapi_document(base_url: str) -> dict[str, Any]:
    write_headers = [_ref("Prefer"), _ref("XProvenance")]
    search_params = [*_search_parameters(),
                     _param("_count", "query", {"type": "integer", "minimum": 0}, text="Page size (capped)"),
                     _param("_cursor", "query", {"type": "string"}, text="Paging position (from next/previous links)"),
                     _param("_sort", "query", {"type": "string"},
                            text="_lastUpdated, _id or a date parameter, '-' for descending; comma-separated"),
                     _param("_total", "query", {"type": "string", "enum": ["none", "estimate", "accurate"]}),
                     _param("_summary", "query", {"type": "string", "enum": ["true", "false", "count", "data"]}),
                     _param("_elements", "query", {"type": "string"}, text="Comma-separated element names")]
    include_params = [_param(name, "query", {"type": "string"}, text=text) for name, text in (
        ("_include", "Type:param[:TargetType]: add what the matches reference"),
        ("_revinclude", "Type:param[:TargetType]: add what references the matches (e.g. Provenance:target)"),
        ("_include:iterate", "as _include, also on included resources"),
        ("_revinclude:iterate", "as _revinclude, also on included resources"))]
    compartment = _param("type", "path", {"type": "string", "enum": ["Patient"]}, True, "The compartment (Patient)")
    history_params = [_param("_count", "query", {"type": "integer", "minimum": 0}),
                      _param("_since", "query", {"type": "string", "format": "date-time"}),
                      _param("_cursor", "query", {"type": "string"})]
    return {
        "openapi": "3.0.3",
        "info": {"title": "ESUS FHIR R4 API", "version": "0.1.0",
                 "description": "Versioned FHIR R4 resources with optimistic locking, atomic Provenance and "
                                "field-level PHI encryption. Errors are FHIR OperationOutcomes."},
        "servers": [{"url": base_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/metadata": {"get": _op("CapabilityStatement", [], _ok("200", "CapabilityStatement"), public=True)},
            "/openapi.json": {"get": _op("This document", [], {"200": {"description": "OpenAPI 3.0",
                                         "content": {"application/json": {"schema": {"type": "object"}}}}},
                                         public=True)},
            "/": {"post": _op("transaction or batch Bundle", write_headers, _ok("200", "Response Bundle", BUNDLE),
                              _json({"$ref": "#/components/schemas/RequestBundle"}))},
            "/_history": {"get": _op("System history", [*history_params, _param("_at", "query", {"type": "string"})],
                                     _ok("200", "history Bundle", BUNDLE))},
            "/{type}": {
                "get": _op("Search", [_ref("type"), *search_params, *include_params],
                           _ok("200", "searchset Bundle", BUNDLE)),
                "post": _op("Create (If-None-Exist: conditional create)",
                            [_ref("type"), *write_headers, _param("If-None-Exist", "header", {"type": "string"})],
                            {**_ok("201", "Created"), **_ok("200", "An existing match (conditional create)")},
                            _json(RESOURCE)),
                "put": _op("Conditional update", [_ref("type"), _ref("IfMatch"), *write_headers, *search_params],
                           {**_ok("200", "Updated"), **_ok("201", "Created")}, _json(RESOURCE)),
                "delete": _op("Conditional delete", [_ref("type"), _ref("XProvenance"), *search_params],
                              _ok("204", "Deleted (or nothing matched)", None)),
            },
            "/{type}/_search": {"post": _op("Search (form body)", [_ref("type")],
                                            _ok("200", "searchset Bundle", BUNDLE),
                                            {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}})},
            "/{type}/_history": {"get": _op("Type history", [_ref("type"), *history_params,
                                                             _param("_at", "query", {"type": "string"})],
                                            _ok("200", "history Bundle", BUNDLE))},
            "/{type}/{id}": {
                "get": _op("Read", [_ref("type"), _ref("id")], _ok("200", "The current version")),
                "put": _op("Update (If-Match honoured; unknown id: create)",
                           [_ref("type"), _ref("id"), _ref("IfMatch"), *write_headers],
                           {**_ok("200", "Updated"), **_ok("201", "Created or revived")}, _json(RESOURCE)),
                "patch": _op("JSON Patch", [_ref("type"), _ref("id"), _ref("IfMatch"), *write_headers],
                             _ok("200", "Patched"),
                             {"application/json-patch+json": {"schema": {"type": "array", "items": {
                                 "type": "object"}}}}),
                "delete": _op("Delete (soft, idempotent)", [_ref("type"), _ref("id"), _ref("IfMatch"),
                                                            _ref("XProvenance")], _ok("204", "Deleted", None)),
            },
            "/{type}/{id}/_history": {"get": _op("Instance history", [_ref("type"), _ref("id"), *history_params],
                                                 _ok("200", "history Bundle", BUNDLE))},
            "/{type}/{id}/_history/{vid}": {"get": _op("Vread", [_ref("type"), _ref("id"), _ref("vid")],
                                                       _ok("200", "That version"))},
            "/{type}/{id}/{member_type}": {"get": _op(
                "Patient compartment search: GET /Patient/{id}/{member_type}?…",
                [compartment, _ref("id"), _param("member_type", "path", {"type": "string", "enum": sorted(
                    compartment_types())}, True, "The type searched within the patient's compartment"),
                 *search_params, *include_params],
                _ok("200", "searchset Bundle", BUNDLE))},
            "/{type}/{id}/$everything": {"get": _op(
                "Patient $everything: the patient, its compartment and the Practitioners, Organizations, Locations "
                "and Medications they reference (paged)",
                [compartment, _ref("id"), _param("_type", "query", {"type": "string"}, text="Comma-separated types"),
                 *history_params], _ok("200", "searchset Bundle", BUNDLE))},
            "/.well-known/smart-configuration": {"get": _op(
                "SMART App Launch discovery", [], {"200": {"description": "SMART configuration", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}, public=True)},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "RS256/ES256 JWT with tenant, scope, fhirUser claims"}},
            "parameters": {
                "type": _param("type", "path", {"type": "string", "enum": sorted(SUPPORTED_TYPES)}, True,
                               f"Resource type ({len(RESOURCE_TYPES)} types plus Provenance)"),
                "id": _param("id", "path", {"type": "string", "pattern": ID_PATTERN.pattern}, True),
                "vid": _param("vid", "path", {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"}, True),
                "IfMatch": _param("If-Match", "header", {"type": "string"}, text='W/"n", "n" or n'),
                "Prefer": _param("Prefer", "header", {"type": "string"},
                                 text="return=minimal|representation|OperationOutcome, handling=lenient"),
                "XProvenance": _param("X-Provenance", "header", {"type": "string"},
                                      text="A Provenance (JSON) without target, stored with the write"),
            },
            "schemas": {
                "Resource": {"type": "object", "required": ["resourceType"],
                             "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
                             "additionalProperties": True},
                "Bundle": {"type": "object", "required": ["resourceType", "type"],
                           "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]},
                                          "type": {"type": "string"}, "total": {"type": "integer"},
                                          "link": {"type": "array", "items": {"type": "object"}},
                                          "entry": {"type": "array", "items": {"type": "object"}}},
                           "additionalProperties": True},
                # What POST [base] takes: described entry by entry, so generated requests (schemathesis)
                # exercise conditional entries, If-Match and references, not just empty objects.
                "RequestBundle": {
                    "type": "object", "required": ["resourceType", "type"],
                    "properties": {
                        "resourceType": {"type": "string", "enum": ["Bundle"]},
                        "type": {"type": "string", "enum": ["transaction", "batch"]},
                        "entry": {"type": "array", "maxItems": 8, "items": {
                            "type": "object", "required": ["request"],
                            "properties": {
                                "fullUrl": {"type": "string"},
                                "resource": {"$ref": "#/components/schemas/Resource"},
                                "request": {
                                    "type": "object", "required": ["method", "url"],
                                    "properties": {
                                        "method": {"type": "string", "enum": ["POST", "PUT", "DELETE", "GET", "PATCH"]},
                                        "url": {"type": "string"},
                                        "ifNoneExist": {"type": "string"},
                                        "ifMatch": {"type": "string"},
                                    },
                                },
                            },
                        }},
                    },
                    "additionalProperties": True,
                },
                "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"],
                                     "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                                                    "issue": {"type": "array", "minItems": 1,
                                                              "items": {"type": "object"}}}},
            },
        },
    }
