"""Binary as raw content (FHIR http.html#binary), through API Gateway's binary media types.

A Binary is created or updated either as a FHIR resource (application/fhir+json, `data` base64) or as raw content:
the bytes as the body with their own Content-Type (and optionally X-Security-Context: a reference). It is stored as
a FHIR resource either way (in the object store, sealed like any body).

Reading: `Accept: application/fhir+json` (or json, `*/*`, none) returns the resource. A non-FHIR Accept returns the
raw content with the Binary's contentType. How raw bytes can travel is set by API Gateway: a REST API proxy hands
bytes over only as base64 text, and turns a base64 response back into bytes only when the client's first Accept
type is one of the API's binary media types (template.yaml: FhirApi BinaryMediaTypes, equal to BINARY_MEDIA_TYPES
below; tests hold the two together). So the bytes are returned as such when the client's Accept names one of those
types, or when the content is text (UTF-8) and not of a binary media type; any other request for raw content gets
406 naming what to ask for, instead of base64 text in a Content-Type that promises bytes.
"""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools.event_handler import Response

from esus.errors import InvalidRequest, Issue, NotAcceptable, UnsupportedMediaType
from esus.http.api import FhirRequest, resource_response, version_headers
from esus.model import Version

BINARY = "Binary"
# API Gateway's binary media types (template.yaml, FhirApi BinaryMediaTypes with "/" written "~1"). Specific types
# and type families only: never */* or application/*, or FHIR JSON bodies would reach the functions base64-encoded.
BINARY_MEDIA_TYPES: tuple[str, ...] = (
    "application/pdf", "application/octet-stream", "application/dicom", "application/zip", "application/gzip",
    "image/*", "audio/*", "video/*",
)
FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
FHIR_TYPES = (*FHIR_JSON_TYPES, "application/fhir+xml", "application/xml+fhir")
SECURITY_CONTEXT_HEADER = "X-Security-Context"


def media_type(header: str | None) -> str:
    """`type/subtype` of a Content-Type or Accept entry, lower case, without parameters."""
    return (header or "").split(";", 1)[0].strip().lower()


def matches(value: str, patterns: tuple[str, ...]) -> bool:
    """`value` (type/subtype) is one of `patterns`, which may be `type/*` families (as API Gateway matches them)."""
    kind = value.split("/", 1)[0]
    return any(value == p or (p.endswith("/*") and kind == p[:-2]) for p in patterns)


def is_raw_content(content_type: str | None) -> bool:
    """A Binary body sent as itself rather than as a FHIR resource."""
    kind = media_type(content_type)
    return bool(kind) and kind not in FHIR_TYPES


def request_body(request: FhirRequest, resource_type: str, resource_id: str | None = None) -> Any:
    """The body of a create or update: JSON, or for a Binary also raw content in its own Content-Type."""
    content_type = request.header("Content-Type")
    if resource_type != BINARY or not is_raw_content(content_type):
        return request.json_body()
    assert content_type is not None
    return resource_from_content(content_type, request.raw_body(), request.header(SECURITY_CONTEXT_HEADER),
                                 resource_id)


def read_response(request: FhirRequest, version: Version) -> Response[Any]:
    """A read or vread: the resource, or for a Binary whose reader's Accept asks for it, its content (see the
    module docstring)."""
    accept = request.header("Accept")
    if version.resource_type != BINARY or wants_resource(accept):
        return resource_response(version)
    return content_response(version, accept, version_headers(version))


def resource_from_content(content_type: str, content: bytes, security_context: str | None,
                          resource_id: str | None = None) -> dict[str, Any]:
    """The Binary resource that raw content stands for (validated like any body afterwards)."""
    kind = media_type(content_type)
    if "/" not in kind:
        raise UnsupportedMediaType(f"'{kind[:60]}' is not a media type (type/subtype)")
    resource: dict[str, Any] = {"resourceType": BINARY, **({"id": resource_id} if resource_id else {}),
                                "contentType": content_type.strip()}
    if security_context:
        reference = security_context.strip()
        if not reference or len(reference) > 256:
            raise InvalidRequest(f"{SECURITY_CONTEXT_HEADER} must be a reference such as Patient/123",
                                 [Issue("invalid", "bad X-Security-Context", SECURITY_CONTEXT_HEADER)])
        resource["securityContext"] = {"reference": reference}
    if content:
        resource["data"] = base64.b64encode(content).decode("ascii")
    return resource


def first_accept(accept: str | None) -> str:
    """The media type API Gateway looks at (the first in Accept), or "" for none."""
    return media_type((accept or "").split(",", 1)[0])


def wants_resource(accept: str | None) -> bool:
    kind = first_accept(accept)
    return kind in ("", "*/*", *FHIR_JSON_TYPES)


def content_response(version: Version, accept: str | None, headers: dict[str, str]) -> Response[Any]:
    """The raw content of a Binary version, as the client's Accept lets it travel (see the module docstring)."""
    resource = version.resource or {}
    content_type = str(resource.get("contentType") or "application/octet-stream")
    content = base64.b64decode(str(resource.get("data") or ""))
    if matches(first_accept(accept), BINARY_MEDIA_TYPES):
        return Response(status_code=200, content_type=content_type, body=content, headers=headers)  # base64 out
    if not matches(media_type(content_type), BINARY_MEDIA_TYPES):
        try:
            return Response(status_code=200, content_type=content_type, body=content.decode("utf-8"),
                            headers=headers)
        except UnicodeDecodeError:
            pass
    asked = first_accept(accept)[:60]
    raise NotAcceptable(
        f"{version.reference} holds {content_type[:60]} content, which this API returns as bytes only to an Accept of "
        f"one of its binary media types ({', '.join(BINARY_MEDIA_TYPES)}), not '{asked}'. Ask with such an Accept "
        "(for example the content's own type), or with Accept: application/fhir+json for the Binary resource.")
