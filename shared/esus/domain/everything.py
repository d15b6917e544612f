"""Patient/{id}/$everything (FHIR R4 patient-operation-everything): the patient and every resource in its
compartment, plus the Practitioners, Organizations, Locations and Medications they reference; `_type`,
`_since` and `_count`, paged with a signed cursor.

Candidates come from the patient's compartment partition, keys only (one Query per live key version, filtered to
the types the caller may see and asked for; docs/SEARCH.md, "Compartments"), plus Provenance's own index, side by
side. They are ordered (the Patient first, then by type and id) and each page reads only
as many current items as it needs, re-checking every one: live, still in the compartment (membership is
judged on the current version), changed since `_since`, and visible to the caller as if read directly.
The cursor is the last candidate examined, so a page may hold fewer than `_count` entries.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from esus.domain.compartment import PATIENT, compartment_types, in_compartment, may_see_type, visible
from esus.domain.fhir import PROVENANCE, REFERENCE_PATTERN, SUPPORTED_TYPES, reference_strings
from esus.domain.includes import IncludeService
from esus.domain.params import instant_param, last_value, page_size
from esus.domain.resources import ResourceService
from esus.domain.search import SearchService
from esus.domain.search_index import pool
from esus.errors import InvalidRequest
from esus.security.auth import Principal
from esus.security.crypto import CursorSigner
from esus.settings import Settings
from esus.storage.store import Store

REFERENCED_TYPES = ("Practitioner", "Organization", "Location", "Medication")
PARAMETERS = frozenset({"_type", "_since", "_count", "_cursor", "_format", "_pretty"})


@dataclass(frozen=True)
class EverythingPage:
    resources: list[dict[str, Any]]  # the patient and members of its compartment (search mode "match")
    included: list[dict[str, Any]]  # what they reference (search mode "include")
    next_cursor: str | None
    candidates: int  # compartment candidates found in the index (for the benchmark)


class EverythingService:
    def __init__(
        self, settings: Settings, store: Store, resources: ResourceService, search: SearchService,
        includes: IncludeService, cursors: CursorSigner,
    ) -> None:
        self._s = settings
        self._store = store
        self._resources = resources
        self._search = search
        self._includes = includes
        self._cursors = cursors

    def everything(self, principal: Principal, patient_id: str, params: dict[str, list[str]]) -> EverythingPage:
        """The caller must be able to read the Patient (else 403/404/410 as a read); every entry is a resource
        it could read or search directly."""
        unknown = sorted(set(params) - PARAMETERS)
        if unknown:
            raise InvalidRequest(f"$everything does not support '{unknown[0][:40]}' (supported: _type, _since, "
                                 "_count)")
        tenant = principal.tenant
        self._resources.read(tenant, PATIENT, patient_id, within=principal.confinement(PATIENT, "read"))
        types = _types(params.get("_type"))
        since = instant_param("_since", last_value(params.get("_since")))
        count = page_size(self._s, last_value(params.get("_count")))
        binding = json.dumps(["$everything", patient_id, sorted(types) if types else None, since, count])
        cursor = last_value(params.get("_cursor"))
        after, pending = _position(self._cursors.verify(tenant, binding, cursor)) if cursor else (None, None)
        # A later page looks up only the types that still had candidates after the previous page.
        wanted = [t for t in sorted(compartment_types()) if (types is None or t in types)
                  and (pending is None or t in pending) and may_see_type(principal, t)]
        keys = self._candidate_keys(tenant, patient_id, wanted)
        start = bisect.bisect_right(keys, after) if after is not None else 0
        page, position = self._page(principal, patient_id, keys, start, count, since)
        referenced = [t for t in REFERENCED_TYPES if (types is None or t in types) and may_see_type(principal, t)]
        included = self._referenced(principal, page, referenced, since)
        next_cursor = None
        if count and position < len(keys):
            remaining = sorted({key.split("|")[1] for key in keys[position:]})
            next_cursor = self._cursors.sign(tenant, binding, {"k": keys[position - 1], "t": remaining})
        return EverythingPage(page, included, next_cursor, len(keys))

    def _candidate_keys(self, tenant: str, patient_id: str, types: list[str]) -> list[str]:
        """`rank|type|id`, sorted: the Patient itself first (rank 0), then every other candidate."""
        # Provenance's index in a worker while this thread reads the compartment partition.
        provenance = pool().submit(self._search.provenance_ids_referencing, tenant, "patient",
                                   [f"{PATIENT}/{patient_id}"]) if PROVENANCE in types else None
        found = self._search.compartment_ids(tenant, patient_id, [t for t in types if t != PROVENANCE])
        if provenance is not None:
            found[PROVENANCE] = set(provenance.result())
        keys = {f"{0 if (t, i) == (PATIENT, patient_id) else 1}|{t}|{i}" for t, ids in found.items() for i in ids}
        if len(keys) > self._s.search_candidates_max:
            raise InvalidRequest(f"This patient has {len(keys)} candidate resources (the limit is "
                                 f"{self._s.search_candidates_max}): narrow $everything with _type or _since")
        return sorted(keys)

    def _page(
        self, principal: Principal, patient_id: str, keys: list[str], start: int, count: int, since: str | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to `count` members from keys[start:], reading `count` candidates at a time; and the position
        after the last candidate examined."""
        page: list[dict[str, Any]] = []
        position = start
        while count and position < len(keys) and len(page) < count:
            chunk = keys[position : position + count - len(page)]
            loaded = self._load(principal.tenant, chunk)
            for key in chunk:
                position += 1
                _, resource_type, resource_id = key.split("|", 2)
                resource = loaded.get((resource_type, resource_id))
                if resource is not None and in_compartment(patient_id, resource_type, resource) \
                        and _changed_since(resource, since) and visible(principal, resource_type, resource):
                    page.append(resource)
        return page, position

    def _load(self, tenant: str, keys: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for key in keys:
            _, resource_type, resource_id = key.split("|", 2)
            wanted[resource_type].add(resource_id)
        return {(r["resourceType"], r["id"]): r for r in self._includes.current(tenant, wanted)}

    def _referenced(
        self, principal: Principal, page: list[dict[str, Any]], types: list[str], since: str | None,
    ) -> list[dict[str, Any]]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for resource in page:
            for resource_type, resource_id in _references(resource):
                if resource_type in types:
                    wanted[resource_type].add(resource_id)
        found = self._includes.current(principal.tenant, wanted) if wanted else []
        return [r for r in found if _changed_since(r, since) and visible(principal, r["resourceType"], r)]


def _position(value: Any) -> tuple[str, set[str]]:
    """A verified cursor: (the last candidate key served, the types that still had candidates)."""
    if not isinstance(value, dict) or not isinstance(value.get("k"), str) or not isinstance(value.get("t"), list):
        raise InvalidRequest("The paging cursor is invalid")
    return value["k"], {str(t) for t in value["t"]}


def _types(values: list[str] | None) -> set[str] | None:
    if not values:
        return None
    types = {t.strip() for value in values for t in value.split(",") if t.strip()}
    unknown = sorted(types - SUPPORTED_TYPES)
    if unknown or not types:
        raise InvalidRequest(f"_type: '{(unknown or [''])[0][:64]}' is not a resource type this server stores")
    return types


def _changed_since(resource: dict[str, Any], since: str | None) -> bool:
    return since is None or str((resource.get("meta") or {}).get("lastUpdated") or "") >= since


def _references(value: Any) -> Iterator[tuple[str, str]]:
    """(type, id) of every relative reference anywhere in a resource (contained and absolute ones skipped)."""
    for reference in reference_strings(value):
        match = REFERENCE_PATTERN.match(reference.strip())
        if match and not match.group("base"):
            yield match.group("type"), match.group("id")
