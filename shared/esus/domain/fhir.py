"""FHIR model knowledge: supported types, validation (fhir.resources R4B), ids, references."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from esus.domain.bindings import code_issues
from esus.domain.fast_validation import proves_valid
from esus.errors import InvalidRequest, Issue, NotFound
from esus.fhir_types import RESOURCE_TYPES as RESOURCE_TYPES

PROVENANCE = "Provenance"

# RESOURCE_TYPES (generated from the R4 schema, see esus.fhir_types) are served by the generic resource routes.
# Provenance is special-cased (own table, immutable).
SUPPORTED_TYPES: frozenset[str] = RESOURCE_TYPES | {PROVENANCE}

# A Bundle stored as a resource holds a document, a message or a collection; the other types are interactions
# (transaction, batch) or server responses (searchset, history, *-response).
STORED_BUNDLE_TYPES = ("document", "message", "collection")

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE_PATTERN = re.compile(
    r"^(?:(?P<base>https?://[^\s]+?)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[0-9]{1,18}))?$"
)


def require_type(resource_type: str) -> str:
    if resource_type not in SUPPORTED_TYPES:
        raise NotFound(f"Resource type '{resource_type[:64]}' is not supported by this server")
    return resource_type


def require_id(resource_id: str) -> str:
    if not ID_PATTERN.match(resource_id):
        raise InvalidRequest("The resource id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")
    return resource_id


def validate_resource(resource_type: str, body: Any) -> dict[str, Any]:
    """Validate a body for `resource_type`; returns it unchanged (the client's JSON is what we keep)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object holding a FHIR resource")
    found = body.get("resourceType")
    if found != resource_type:
        raise InvalidRequest(
            f"resourceType '{str(found)[:64]}' does not match the URL type '{resource_type}'",
            [Issue("invalid", "resourceType does not match the URL", "resourceType")],
        )
    if not proves_valid(resource_type, body):
        validate_with_models(resource_type, body)
    issues = code_issues(resource_type, body)
    if issues:
        raise InvalidRequest(
            f"The {resource_type} has {len(issues)} code(s) outside their required value set: {issues[0].diagnostics}",
            issues,
        )
    if resource_type == "Bundle" and body.get("type") not in STORED_BUNDLE_TYPES:
        message = (f"A Bundle of type '{str(body.get('type'))[:32]}' is not stored; a transaction or batch is "
                   f"POSTed to the base URL. Stored Bundle types: {', '.join(STORED_BUNDLE_TYPES)}")
        raise InvalidRequest(message, [Issue("invalid", message, "Bundle.type")])
    return body


def validate_with_models(resource_type: str, body: dict[str, Any]) -> None:
    """fhir.resources' verdict, with its problems as issues. Its models cost a cold function ~160 ms to import and
    build, so they are loaded only for a body the fast check (esus.domain.fast_validation) cannot prove valid."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    unknown = _unknown_nested_types(resource_type, body, get_fhir_model_class)
    if unknown:
        raise InvalidRequest(f"The {resource_type} holds {len(unknown)} nested object(s) whose resourceType is not a "
                             f"FHIR R4 type: {unknown[0].diagnostics}", unknown)
    try:
        get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(
            f"The {resource_type} is not valid FHIR R4 ({exc.error_count()} problem(s))",
            [_issue_from_pydantic(resource_type, err) for err in exc.errors()[:50]],
        ) from None
    except (ValueError, TypeError) as exc:  # some fhir.resources validators raise plain errors
        raise InvalidRequest(f"The {resource_type} is not valid FHIR R4: {str(exc)[:200]}") from None
    except KeyError:  # fhir_core looks nested types up in its table of models (a name _unknown_nested_types missed)
        raise InvalidRequest(f"The {resource_type} is not valid FHIR R4: a nested element names an unknown type") \
            from None


def _unknown_nested_types(resource_type: str, body: dict[str, Any], model_class: Any) -> list[Issue]:
    """Nested objects whose resourceType is not a string naming an R4B model: fhir_core fails on those (a contained
    resource or a Bundle entry's) with a KeyError or a TypeError, not a validation error, so they are named here,
    with their path. A known name in the wrong place is left to the models (their message says why)."""
    issues: list[Issue] = []

    def known(name: Any) -> bool:
        try:
            return isinstance(name, str) and model_class(name) is not None
        except ValueError:
            return False

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if path != resource_type and "resourceType" in node and not known(node["resourceType"]):
                where = f"{path}.resourceType"
                issues.append(Issue("invalid", f"{where}: {str(node['resourceType'])[:64]!r} is not a FHIR R4 type",
                                    where))
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(body, resource_type)
    return issues[:50]


def _issue_from_pydantic(resource_type: str, err: Any) -> Issue:
    path = resource_type
    for part in err.get("loc", ()):
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = str(err.get("msg", "invalid value"))[:300]
    return Issue("invalid" if err.get("type") != "extra_forbidden" else "structure", message, path)


def parse_reference(value: str) -> tuple[str, str, int | None]:
    """`Patient/1`, `https://host/fhir/Patient/1` or `Patient/1/_history/2` -> (type, id, version)."""
    match = REFERENCE_PATTERN.match(value.strip())
    if not match:
        raise InvalidRequest(f"'{value[:100]}' is not a resource reference")
    version = match.group("version")
    return match.group("type"), match.group("id"), int(version) if version else None


def now_instant() -> str:
    """FHIR instant with millisecond precision, UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reference_strings(value: Any) -> list[str]:
    """Every `reference` string anywhere in a resource (contained resources and extensions included), in
    document order."""
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in ([item] if key == "reference" and isinstance(item, str) else reference_strings(item))]
    if isinstance(value, list):
        return [found for item in value for found in reference_strings(item)]
    return []
