"""Search parameters: which values a resource is indexed under, how they are normalised, and how a
query string is parsed. Hashed parameters (PHI) are indexed by blind token; so are the reference
parameters of Provenance (esus.domain.search_index.SearchKeys.provenance_token: a target or agent may
be a patient)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from esus.domain.fhir import PROVENANCE, parse_reference
from esus.errors import InvalidRequest

# Types whose telecom/identifier are indexed through blind tokens, and the parameters they offer.
HASHED_PARAMS: dict[str, tuple[str, ...]] = {
    "Patient": ("phone", "email", "telecom", "identifier"),
    "Practitioner": ("phone", "email", "telecom", "identifier"),
    "Organization": ("phone", "email", "telecom", "identifier"),
}
PROVENANCE_REFERENCE_PARAMS = ("target", "agent", "patient", "entity")
PROVENANCE_PARAMS = (*PROVENANCE_REFERENCE_PARAMS, "recorded", "_id")
# Result-shaping parameters accepted on every search.
CONTROL_PARAMS = frozenset({"_count", "_cursor", "_format", "_pretty", "_summary", "_total", "_elements"})

PHONE_SYSTEMS = frozenset({"phone", "sms", "fax", "pager"})
PHONE_SIGNIFICANT_DIGITS = 10


def normalise_email(value: str) -> str:
    return value.strip().lower()


def normalise_phone(value: str) -> str:
    """Digits only; the comparison uses the last 10 digits (the national number), so "+1 555-326-5839",
    "1 (555) 326 5839", "001 555 326 5839" and "555.326.5839" are the same phone. Shorter numbers
    (extensions, short codes) compare in full."""
    digits = re.sub(r"\D", "", value)
    return digits[-PHONE_SIGNIFICANT_DIGITS:]


def normalise_token_value(value: str) -> str:
    return value.strip()


def _contact_value(system: str | None, value: str) -> str:
    if system == "email" or (system is None and "@" in value):
        return normalise_email(value)
    if system in PHONE_SYSTEMS or system is None:
        return normalise_phone(value) or value.strip().lower()
    return value.strip().lower()


def hashed_index_values(resource_type: str, resource: dict[str, Any]) -> set[tuple[str, str]]:
    """(param, normalised value) pairs this resource is found under."""
    params = HASHED_PARAMS.get(resource_type)
    if not params:
        return set()
    values: set[tuple[str, str]] = set()
    for point in _dicts(resource.get("telecom")):
        raw, system = point.get("value"), point.get("system")
        if not isinstance(raw, str) or not raw.strip():
            continue
        if system == "email":
            values.add(("email", normalise_email(raw)))
        elif system in PHONE_SYSTEMS and normalise_phone(raw):
            values.add(("phone", normalise_phone(raw)))
        values.add(("telecom", _contact_value(system, raw)))
        if isinstance(system, str):
            values.add(("telecom", f"{system}|{_contact_value(system, raw)}"))
    for ident in _dicts(resource.get("identifier")):
        raw, system = ident.get("value"), ident.get("system")
        if not isinstance(raw, str) or not raw.strip():
            continue
        values.add(("identifier", normalise_token_value(raw)))
        if isinstance(system, str):
            values.add(("identifier", f"{system}|{normalise_token_value(raw)}"))
    return values


def hashed_query_value(param: str, raw: str) -> str:
    """Normalise a search value the same way the resource's values were normalised."""
    if param == "email":
        return normalise_email(raw)
    if param == "phone":
        digits = normalise_phone(raw)
        if not digits:
            raise InvalidRequest("phone must contain digits")
        return digits
    system, sep, value = raw.partition("|")
    if not sep:
        system, value = "", raw
    normalised = _contact_value(system or None, value) if param == "telecom" else normalise_token_value(value)
    if not normalised:
        raise InvalidRequest(f"{param} needs a value")
    return f"{system}|{normalised}" if system else normalised


def provenance_index_values(resource: dict[str, Any]) -> set[tuple[str, str]]:
    """target (unversioned and versioned), agent (who and onBehalfOf), patient, entity."""
    values: set[tuple[str, str]] = set()
    for target in _dicts(resource.get("target")):
        for ref in _references(target):
            values.add(("target", ref))
            if ref.startswith("Patient/"):
                values.add(("patient", ref))
    for agent in _dicts(resource.get("agent")):
        for key in ("who", "onBehalfOf"):
            for ref in _references(agent.get(key)):
                values.add(("agent", ref))
    for entity in _dicts(resource.get("entity")):
        for ref in _references(entity.get("what")):
            values.add(("entity", ref))
    return values


def canonical_reference(value: str, versioned: bool = True) -> str:
    resource_type, resource_id, version = parse_reference(value)
    if version is not None and versioned:
        return f"{resource_type}/{resource_id}/_history/{version}"
    return f"{resource_type}/{resource_id}"


def _references(reference: Any) -> Iterator[str]:
    """A Reference's relative forms: `T/id` always, `T/id/_history/n` too when it is versioned."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return
    try:
        resource_type, resource_id, version = parse_reference(reference["reference"])
    except InvalidRequest:
        return  # contained (#x), urn: or logical references are not indexed
    yield f"{resource_type}/{resource_id}"
    if version is not None:
        yield f"{resource_type}/{resource_id}/_history/{version}"


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


@dataclass(frozen=True)
class Criterion:
    """One AND-ed search parameter with its OR-ed values and an optional comparison prefix."""

    param: str
    values: tuple[str, ...]


RECORDED_PREFIXES = ("eq", "ge", "le", "gt", "lt")


def parse_query(
    resource_type: str, params: dict[str, list[str]], lenient: bool
) -> tuple[list[Criterion], list[str]]:
    """-> (criteria, ignored parameter names). Unknown parameters are a 400 unless lenient."""
    allowed = PROVENANCE_PARAMS if resource_type == PROVENANCE else HASHED_PARAMS.get(resource_type, ())
    criteria: list[Criterion] = []
    ignored: list[str] = []
    for name, raw_values in params.items():
        if name in CONTROL_PARAMS:
            continue
        base = name.split(":", 1)[0]
        if base not in allowed or ":" in name:
            if lenient:
                ignored.append(name)
                continue
            supported = ", ".join(allowed) or "none"
            raise InvalidRequest(
                f"Search parameter '{name[:64]}' is not supported for {resource_type} (supported: {supported})"
            )
        for raw in raw_values:
            values = tuple(v for v in raw.split(",") if v != "")
            if not values:
                raise InvalidRequest(f"Search parameter '{name}' needs a value")
            criteria.append(Criterion(base, values))
    return criteria, ignored
