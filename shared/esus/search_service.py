"""Search over index items: one keys-only Query per (parameter value) plus one BatchGetItem for the page.

Provenance reference parameters index plain references; PHI parameters index blind tokens, so their
candidates are decrypted and compared exactly (tokens collide on purpose) before counting and paging.
Results are ordered (Provenance by recorded, others by id) and paged by a signed position cursor.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from esus.auth import Principal
from esus.crypto import BlindIndex, CursorSigner
from esus.errors import InvalidRequest
from esus.fhir import PROVENANCE
from esus.params import last_value, page_size
from esus.provenance import recorded_key
from esus.search import (
    HASHED_PARAMS,
    PROVENANCE_REFERENCE_PARAMS,
    RECORDED_PREFIXES,
    Criterion,
    canonical_reference,
    hashed_index_values,
    hashed_query_value,
    parse_query,
)
from esus.settings import Settings
from esus.store import Store, index_partition


@dataclass
class SearchPage:
    resources: list[dict[str, Any]]
    total: int
    next_cursor: str | None
    last_cursor: str | None
    ignored: list[str] = field(default_factory=list)


class SearchService:
    def __init__(self, settings: Settings, store: Store, blind: BlindIndex, cursors: CursorSigner) -> None:
        self._s = settings
        self._store = store
        self._blind = blind
        self._cursors = cursors

    def search(
        self, principal: Principal, resource_type: str, params: dict[str, list[str]], lenient: bool
    ) -> SearchPage:
        criteria, ignored = parse_query(resource_type, params, lenient)
        count = page_size(self._s, last_value(params.get("_count")))
        binding = json.dumps([resource_type, sorted((c.param, c.values) for c in criteria)])
        cursor = last_value(params.get("_cursor"))
        position = self._cursors.verify(principal.tenant, binding, cursor) if cursor else None
        if resource_type == PROVENANCE:
            keys = self._provenance_keys(principal.tenant, criteria)
        elif resource_type in HASHED_PARAMS:
            keys, matches = self._hashed_matches(principal.tenant, resource_type, criteria)
        else:
            raise InvalidRequest(f"Search is not supported for {resource_type}")
        start = bisect.bisect_right(keys, position) if position is not None else 0
        page_keys = keys[start : start + count]
        if resource_type == PROVENANCE:
            by_id = {r["id"]: r for r in self._store.provenances(principal.tenant, [_id_of(k) for k in page_keys])}
            resources = [by_id[_id_of(k)] for k in page_keys if _id_of(k) in by_id]
        else:
            resources = [matches[k] for k in page_keys]
        def sign(key: str) -> str:
            return self._cursors.sign(principal.tenant, binding, key)

        next_cursor = sign(page_keys[-1]) if page_keys and start + count < len(keys) else None
        last_start = ((len(keys) - 1) // count) * count if count and keys else 0
        last_cursor = sign(keys[last_start - 1]) if last_start > 0 else None
        return SearchPage(resources, len(keys), next_cursor, last_cursor, ignored)

    def matching_ids(self, tenant: str, resource_type: str, params: dict[str, list[str]]) -> list[str]:
        """Exact matches of a conditional interaction's search (strict: unknown parameters are a 400)."""
        if resource_type not in HASHED_PARAMS:
            raise InvalidRequest(f"Conditional interactions on {resource_type} are not supported: it has no "
                                 "search parameters")
        criteria, _ = parse_query(resource_type, params, lenient=False)
        ids, _ = self._hashed_matches(tenant, resource_type, criteria)
        return ids

    def canonical_query(self, resource_type: str, params: dict[str, list[str]]) -> str:
        """The search in normalised form: equal searches written differently give the same string."""
        criteria, _ = parse_query(resource_type, params, lenient=False)
        return json.dumps(sorted((c.param, sorted(hashed_query_value(c.param, v) for v in c.values))
                                 for c in criteria))

    # ---------- Provenance ----------
    def _provenance_keys(self, tenant: str, criteria: list[Criterion]) -> list[str]:
        key_sets: list[set[str]] = []
        ids: set[str] | None = None
        recorded: list[Criterion] = []
        for criterion in criteria:
            if criterion.param in PROVENANCE_REFERENCE_PARAMS:
                found: set[str] = set()
                for value in criterion.values:
                    ref = _reference_value(criterion.param, value)
                    found.update(self._store.index_sort_keys(index_partition(tenant, PROVENANCE, criterion.param, ref)))
                key_sets.append(found)
            elif criterion.param == "_id":
                wanted = set(criterion.values)
                ids = wanted if ids is None else ids & wanted
            else:
                recorded.append(criterion)
        if not key_sets:
            if ids is None:
                raise InvalidRequest("Provenance search needs target, agent, patient, entity or _id")
            records = self._store.provenances(tenant, sorted(ids)[: self._s.page_size_max])
            key_sets.append({f"{recorded_key(r['recorded'])}|{r['id']}" for r in records})
        keys = set.intersection(*key_sets)
        if ids is not None:
            keys = {k for k in keys if _id_of(k) in ids}
        for criterion in recorded:
            ranges = [_recorded_range(v) for v in criterion.values]
            keys = {k for k in keys if any(_in_range(k.split("|", 1)[0], r) for r in ranges)}
        return sorted(keys)

    # ---------- PHI (hashed) ----------
    def _hashed_matches(
        self, tenant: str, resource_type: str, criteria: list[Criterion]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        if not criteria:
            raise InvalidRequest(
                f"{resource_type} search needs one of: {', '.join(HASHED_PARAMS[resource_type])}"
            )
        wanted: list[set[tuple[str, str]]] = []
        candidate_sets: list[set[str]] = []
        for criterion in criteria:
            values = {(criterion.param, hashed_query_value(criterion.param, v)) for v in criterion.values}
            wanted.append(values)
            candidates: set[str] = set()
            for param, value in values:
                for token in self._blind.tokens_for_search(tenant, param, value):
                    candidates.update(self._store.index_sort_keys(index_partition(tenant, resource_type, param, token)))
            candidate_sets.append(candidates)
        candidate_ids = sorted(set.intersection(*candidate_sets))
        matches: dict[str, dict[str, Any]] = {}
        for version in self._store.currents(tenant, resource_type, candidate_ids):
            if version.deleted or version.resource is None:
                continue
            indexed = hashed_index_values(resource_type, version.resource)
            if all(indexed & values for values in wanted):  # exact: drop token collisions
                matches[version.resource_id] = version.resource
        return sorted(matches), matches


def _id_of(sort_key: str) -> str:
    return sort_key.rsplit("|", 1)[-1]


def _reference_value(param: str, value: str) -> str:
    if "/" not in value:
        if param == "patient":
            value = f"Patient/{value}"
        else:
            raise InvalidRequest(f"{param} needs a reference like Type/id")
    return canonical_reference(value)


DATE_FORMATS = ((4, "%Y", "year"), (7, "%Y-%m", "month"), (10, "%Y-%m-%d", "day"))


def _recorded_range(raw: str) -> tuple[str, str, str]:
    """`ge2024-01-15` -> (prefix, low, high) as sortable UTC strings covering the value's precision."""
    prefix = raw[:2] if raw[:2] in RECORDED_PREFIXES else "eq"
    value = raw[2:] if raw[:2] in RECORDED_PREFIXES else raw
    try:
        low, high = _date_bounds(value)
    except ValueError:
        raise InvalidRequest(f"recorded value '{raw[:40]}' is not a FHIR date or dateTime") from None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return prefix, low.strftime(fmt), high.strftime(fmt)


def _date_bounds(value: str) -> tuple[datetime, datetime]:
    for length, fmt, unit in DATE_FORMATS:
        if len(value) == length:
            low = datetime.strptime(value, fmt).replace(tzinfo=UTC)
            if unit == "year":
                return low, low.replace(year=low.year + 1)
            if unit == "month":
                return low, (low + timedelta(days=32)).replace(day=1)
            return low, low + timedelta(days=1)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    precision = timedelta(seconds=1) if "." not in value else timedelta(microseconds=1)
    low = moment.astimezone(UTC)
    return low, low + precision


def _in_range(key: str, bounds: tuple[str, str, str]) -> bool:
    prefix, low, high = bounds
    return {
        "eq": low <= key < high,
        "ge": key >= low,
        "gt": key >= high,
        "le": key < high,
        "lt": key < low,
    }[prefix]
