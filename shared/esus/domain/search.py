"""FHIR search (docs/SEARCH.md): plan lookups on the index, re-check every candidate's current version.

Every type: each AND-ed parameter that the index can narrow gives its candidates (keys-only Queries, side
by side); their intersection's current items are read (BatchGetItem), decrypted and checked against the
WHOLE query with the brute-force matcher, so stale items, orphans and token collisions never show.
Without a narrowing parameter the candidates are the type's live resources from its change-log partition
(no table scan). Provenance keeps its own reference and recorded indexes.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any

from esus.domain.compartment import (
    PATIENT,
    compartment_types,
    in_compartment,
    patients_named,
    refuse_other_patients,
)
from esus.domain.fhir import PROVENANCE, RESOURCE_TYPES
from esus.domain.params import last_value, page_size
from esus.domain.provenance import recorded_key
from esus.domain.search_index import SearchKeys, in_parallel, parse_compartment_sort_key, parse_sort_key
from esus.domain.search_legacy import (
    PROVENANCE_REFERENCE_PARAMS,
    RECORDED_PREFIXES,
    canonical_reference,
    parse_query,
)
from esus.domain.search_legacy import Criterion as ProvenanceCriterion
from esus.domain.search_params import params_for
from esus.domain.search_semantics import (
    MIN_INSTANT,
    Criterion,
    date_matches,
    date_range,
    lookup_terms,
    matches,
    parse_search,
    sort_key,
)
from esus.errors import InvalidRequest, NotFound
from esus.model import Version
from esus.security.auth import SEARCH, Principal
from esus.security.crypto import BlindIndex, CursorSigner
from esus.settings import Settings
from esus.storage.store import BATCH_GET_LIMIT, Store, change_log_partition

MAX_LOOKUPS_PER_PARAMETER = 64  # beyond this a parameter only filters (e.g. a date range over centuries)
CHEAP_LOOKUPS = 4  # parameters this cheap also narrow, beside the cheapest one
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


@dataclass
class SearchPage:
    resources: list[dict[str, Any]]
    total: int | None
    next_cursor: str | None
    last_cursor: str | None
    ignored: list[str] = field(default_factory=list)
    previous_cursor: str | None = None
    # The parameters the search applied, as the self link shows them (unknown ones dropped when lenient).
    applied: dict[str, list[str]] | None = None
    counted_only: bool = False  # _summary=count: a total and no entries
    candidates: int = 0  # resources decrypted to answer (for the benchmark)


@dataclass(frozen=True)
class ResultOptions:
    count: int
    sort: tuple[tuple[str, bool], ...]  # (parameter, descending)
    total: bool
    summary: str | None
    elements: tuple[str, ...] | None


class SearchService:
    def __init__(
        self, settings: Settings, store: Store, blind: BlindIndex, cursors: CursorSigner, keys: SearchKeys
    ) -> None:
        self._s = settings
        self._store = store
        self._blind = blind
        self._cursors = cursors
        self._keys = keys

    def search(
        self, principal: Principal, resource_type: str, params: dict[str, list[str]], lenient: bool,
        compartment: str | None = None,
    ) -> SearchPage:
        """`compartment`: a Patient id (GET /Patient/{id}/{type}): only resources in its compartment. A caller
        whose token allows this search only inside its patient's compartment is confined to it the same way
        (as if patient=<id> were given), and a search naming another patient answers 404."""
        within = principal.confined_to(resource_type, SEARCH)
        if within is not None and compartment not in (None, within):
            raise NotFound(f"{PATIENT}/{compartment} is not known")
        patient = compartment or within
        if patient is not None and resource_type not in compartment_types():
            raise InvalidRequest(f"{resource_type} is never in a Patient compartment")
        if resource_type == PROVENANCE:
            return self._provenance_search(principal, params, lenient, patient, within)
        if resource_type not in RESOURCE_TYPES:
            raise InvalidRequest(f"Search is not supported for {resource_type}")
        tenant = principal.tenant
        parsed = parse_search(resource_type, params, lenient)
        if within is not None:
            refuse_other_patients(patients_named(parsed.criteria), within)
        options = _result_options(self._s, resource_type, parsed.applied)
        scope = [resource_type, _canonical(parsed.criteria), options.sort]
        binding = json.dumps([*scope, patient] if patient is not None else scope)
        cursor = last_value(params.get("_cursor"))
        offset = self._cursors.verify(tenant, binding, cursor) if cursor else 0
        if not isinstance(offset, int) or offset < 0:
            raise InvalidRequest("The paging cursor is invalid")
        count = 0 if options.summary == "count" else options.count
        listing = patient is None and all(c.param.code == "_lastUpdated" for c in parsed.criteria) and \
            all(code == "_lastUpdated" for code, _ in options.sort)
        # A page never shows part of a large transaction (docs/TRANSACTIONS.md, readers).
        if listing:
            resources, total, decrypted = self._store.consistent(lambda: self._listing_page(
                tenant, resource_type, parsed.criteria, options, offset, count))
        else:
            found, decrypted = self._store.consistent(
                lambda: self._matches(tenant, resource_type, parsed.criteria, patient))
            ordered = _sorted(resource_type, found, options.sort)
            total = len(ordered)
            resources = ordered[offset : offset + count]
        resources = [_shape(r, options) for r in resources]

        def sign(position: int) -> str:
            return self._cursors.sign(tenant, binding, position)

        next_cursor = sign(offset + count) if count and offset + count < total else None
        previous_cursor = sign(max(0, offset - count)) if count and offset > 0 else None
        last_start = ((total - 1) // count) * count if count and total else 0
        return SearchPage(
            resources, total if options.total else None, next_cursor,
            sign(last_start) if last_start > 0 else None, parsed.ignored, previous_cursor,
            parsed.applied, options.summary == "count", decrypted,
        )

    def matching_ids(
        self, tenant: str, resource_type: str, params: dict[str, list[str]], within: str | None = None,
    ) -> list[str]:
        """Exact matches of a conditional interaction's search (strict: unknown parameters are a 400), only in
        Patient `within`'s compartment when the caller is confined to it."""
        return sorted(r["id"] for r in self.matching_resources(tenant, resource_type, params, within))

    def matching_resources(
        self, tenant: str, resource_type: str, params: dict[str, list[str]], within: str | None = None,
    ) -> list[dict[str, Any]]:
        if resource_type not in RESOURCE_TYPES:
            raise InvalidRequest(f"Conditional interactions on {resource_type} are not supported")
        criteria = parse_search(resource_type, params, lenient=False).criteria
        if within is not None:
            refuse_other_patients(patients_named(criteria), within)
        return self._store.consistent(lambda: self._matches(tenant, resource_type, criteria, within))[0]

    def current_matches(
        self, tenant: str, resource_type: str, resource_id: str, params: dict[str, list[str]],
        within: str | None = None,
    ) -> bool:
        """Does this resource's current version match the search (and lie in `within`'s compartment)?"""
        criteria = parse_search(resource_type, params, lenient=False).criteria
        current = self._store.current(tenant, resource_type, resource_id)
        return bool(current and current.resource is not None and matches(current.resource, criteria)
                    and (within is None or in_compartment(within, resource_type, current.resource)))

    def resource_matches(self, resource_type: str, params: dict[str, list[str]], resource: dict[str, Any]) -> bool:
        """Does this content (e.g. a transaction entry's new resource) match the search? No read."""
        criteria = parse_search(resource_type, params, lenient=False).criteria
        return resource.get("resourceType") == resource_type and matches(resource, criteria)

    def canonical_query(self, resource_type: str, params: dict[str, list[str]], within: str | None = None) -> str:
        """The search in normalised form: equal searches written differently give the same string. A search
        confined to a patient's compartment is another search."""
        canonical = _canonical(parse_search(resource_type, params, lenient=False).criteria)
        return canonical if within is None else f"{canonical}|{PATIENT}/{within}"

    def compartment_ids(self, tenant: str, patient_id: str, types: list[str]) -> dict[str, set[str]]:
        """Per type, the ids of the members of Patient {patient_id}'s compartment partition (a superset to re-check:
        items of older versions remain): one keys-only Query per live key version, side by side; for a single
        type only that type's key range. Provenance is not among `types` (it has its own index)."""
        if not types:
            return {}
        prefix = f"{types[0]}|" if len(types) == 1 else ""
        calls: list[Callable[[], list[str]]] = [
            partial(self._store.index_sort_keys, partition, prefix=prefix)
            for partition in self._keys.compartment_partitions(tenant, patient_id)
        ]
        found: dict[str, set[str]] = {t: ({patient_id} if t == PATIENT else set()) for t in types}
        for sort_keys in in_parallel(calls):
            for sort in sort_keys:
                resource_type, resource_id, _ = parse_compartment_sort_key(sort)
                if resource_type in found:
                    found[resource_type].add(resource_id)
        return found

    # ---------- candidates and the re-check ----------
    def _matches(
        self, tenant: str, resource_type: str, criteria: list[Criterion], patient: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """(every match, current version re-checked, and how many candidates were decrypted). `patient`: only
        resources in that Patient's compartment (any compartment parameter referencing it, OR-ed)."""
        within_ids = self.compartment_ids(tenant, patient, [resource_type])[resource_type] if patient else None
        ids = self._candidates(tenant, resource_type, criteria, within_ids)
        if len(ids) > self._s.search_candidates_max:
            raise InvalidRequest(
                f"This search has {len(ids)} candidates (the limit is {self._s.search_candidates_max}): "
                "add a narrowing parameter (e.g. patient, code, a date) or split it"
            )
        versions = self._currents(tenant, resource_type, ids)
        found = [v.resource for v in versions
                 if not v.deleted and v.resource is not None and matches(v.resource, criteria)
                 and (patient is None or in_compartment(patient, resource_type, v.resource))]
        return found, len(versions)

    def _candidates(
        self, tenant: str, resource_type: str, criteria: list[Criterion], within_ids: set[str] | None = None,
    ) -> list[str]:
        """Ids that may match (a superset); `within_ids`, when given, bounds them (a compartment)."""
        id_sets = [{str(v.token[1]) for v in c.values} for c in criteria if c.param.code == "_id" and not c.modifier]
        if within_ids is not None:
            id_sets.append(within_ids)
        if id_sets:
            return sorted(set.intersection(*id_sets))
        planned = sorted(
            ((len(terms), i, c, terms) for i, c in enumerate(criteria)
             if (terms := lookup_terms(c)) is not None and len(terms) <= MAX_LOOKUPS_PER_PARAMETER),
            key=lambda p: (p[0], p[1]),
        )
        if not planned:
            live = self._live(tenant, resource_type)
            if len(live) > self._s.search_scan_max:
                raise InvalidRequest(
                    f"No parameter of this search can use an index and {resource_type} has {len(live)} resources "
                    f"(the limit for a filtered listing is {self._s.search_scan_max}): add a narrowing parameter"
                )
            return [resource_id for _, resource_id in live]
        chosen = [planned[0], *(p for p in planned[1:] if p[0] <= CHEAP_LOOKUPS)]
        lookups: list[tuple[int, str]] = [
            (n, partition)
            for n, (_, _, criterion, terms) in enumerate(chosen)
            for term in terms
            for partition in self._keys.lookup_partitions(tenant, criterion.param, term)
        ]
        calls: list[Callable[[], list[str]]] = [
            partial(self._store.index_sort_keys, partition) for _, partition in lookups
        ]
        found: list[set[str]] = [set() for _ in chosen]
        for (n, _), sort_keys in zip(lookups, in_parallel(calls), strict=True):
            found[n].update(parse_sort_key(k)[0] for k in sort_keys)
        return sorted(set.intersection(*found))

    def _currents(self, tenant: str, resource_type: str, ids: list[str]) -> list[Version]:
        chunks = [ids[i : i + BATCH_GET_LIMIT] for i in range(0, len(ids), BATCH_GET_LIMIT)]
        calls: list[Callable[[], list[Version]]] = [
            partial(self._store.currents, tenant, resource_type, chunk) for chunk in chunks
        ]
        return [v for batch in in_parallel(calls) for v in batch]

    def _live(self, tenant: str, resource_type: str) -> list[tuple[str, str]]:
        """(lastUpdated, id) of every live resource of the type, oldest first, from its change log."""
        latest: dict[str, tuple[int, str, bool]] = {}
        for sort, deleted in self._store.change_log_entries(change_log_partition(tenant, resource_type)):
            last_updated, _, resource_id, number = sort.split("|")
            version = int(number)
            if resource_id not in latest or version > latest[resource_id][0]:
                latest[resource_id] = (version, last_updated, deleted)
        return sorted((lu, rid) for rid, (_, lu, deleted) in latest.items() if not deleted)

    def _listing_page(
        self, tenant: str, resource_type: str, criteria: list[Criterion], options: ResultOptions, offset: int,
        count: int,
    ) -> tuple[list[dict[str, Any]], int, int]:
        """Type listing, optionally by _lastUpdated: keys decide membership, order and total; only the
        page's current items are read (one Query, one BatchGetItem)."""
        live = [(lu, rid) for lu, rid in self._live(tenant, resource_type)
                if all(_last_updated_matches(c, lu) for c in criteria)]
        if options.sort and options.sort[0][1]:
            live.reverse()
        page = [rid for _, rid in live[offset : offset + count]]
        by_id = {v.resource_id: v for v in self._currents(tenant, resource_type, page)}
        resources = [by_id[i].resource for i in page if i in by_id and by_id[i].resource is not None
                     and not by_id[i].deleted]
        return [r for r in resources if r is not None and matches(r, criteria)], len(live), len(by_id)

    # ---------- Provenance ----------
    def _provenance_search(
        self, principal: Principal, params: dict[str, list[str]], lenient: bool, patient: str | None = None,
        within: str | None = None,
    ) -> SearchPage:
        criteria, ignored = parse_query(PROVENANCE, params, lenient)
        if within is not None:
            refuse_other_patients(_provenance_patients(criteria), within)
        if patient is not None:  # the compartment: Provenance whose targets include Patient/{patient}
            criteria.append(ProvenanceCriterion("patient", (f"{PATIENT}/{patient}",)))
        count = page_size(self._s, last_value(params.get("_count")))
        binding = json.dumps([PROVENANCE, sorted((c.param, c.values) for c in criteria)])
        cursor = last_value(params.get("_cursor"))
        position = self._cursors.verify(principal.tenant, binding, cursor) if cursor else None

        def page() -> tuple[list[str], list[str], list[dict[str, Any]]]:
            keys = self._provenance_keys(principal.tenant, criteria)
            start = bisect.bisect_right(keys, position) if position is not None else 0
            page_keys = keys[start : start + count]
            by_id = {r["id"]: r for r in self._store.provenances(principal.tenant, [_id_of(k) for k in page_keys])}
            return keys, page_keys, [by_id[_id_of(k)] for k in page_keys if _id_of(k) in by_id]

        # A page never shows part of a large transaction (docs/TRANSACTIONS.md, readers).
        keys, page_keys, resources = self._store.consistent(page)
        start = bisect.bisect_right(keys, position) if position is not None else 0

        def sign(key: str) -> str:
            return self._cursors.sign(principal.tenant, binding, key)

        next_cursor = sign(page_keys[-1]) if page_keys and start + count < len(keys) else None
        last_start = ((len(keys) - 1) // count) * count if count and keys else 0
        last_cursor = sign(keys[last_start - 1]) if last_start > 0 else None
        shown = {k: v for k, v in params.items() if k not in ignored and k != "_cursor"}
        return SearchPage(resources, len(keys), next_cursor, last_cursor, ignored, applied=shown)

    def provenance_ids_referencing(self, tenant: str, param: str, references: list[str]) -> list[str]:
        """Ids of every Provenance whose `param` (target, agent, patient, entity) names one of `references`
        (Type/id: a versioned target Type/id/_history/n is found through its resource), keys only."""
        if not references:
            return []
        keys = self._provenance_keys(tenant, [ProvenanceCriterion(param, tuple(references))])
        if len(keys) > self._s.search_candidates_max:
            raise InvalidRequest(f"More than {self._s.search_candidates_max} Provenance records are involved: "
                                 "narrow the search")
        return sorted({_id_of(k) for k in keys})

    def provenance_referencing(self, tenant: str, param: str, references: list[str]) -> list[dict[str, Any]]:
        """The Provenance records provenance_ids_referencing() names."""
        return self._store.provenances(tenant, self.provenance_ids_referencing(tenant, param, references))

    def _provenance_keys(self, tenant: str, criteria: list[ProvenanceCriterion]) -> list[str]:
        key_sets: list[set[str]] = []
        ids: set[str] | None = None
        recorded: list[ProvenanceCriterion] = []
        for criterion in criteria:
            if criterion.param in PROVENANCE_REFERENCE_PARAMS:
                # Keyed tokens, looked up under every live key version (a rotation keeps records findable).
                partitions = [p for value in criterion.values for p in self._keys.provenance_partitions(
                    tenant, criterion.param, _reference_value(criterion.param, value))]
                calls = [partial(self._store.index_sort_keys, p, resolve=True) for p in partitions]
                key_sets.append({key for keys in in_parallel(calls) for key in keys})
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

def _provenance_patients(criteria: list[ProvenanceCriterion]) -> set[str]:
    """The Patient ids a Provenance search names (target=Patient/1, patient=1, agent=Patient/1 ...)."""
    named = set()
    for criterion in criteria:
        if criterion.param not in PROVENANCE_REFERENCE_PARAMS:
            continue
        for value in criterion.values:
            reference = _reference_value(criterion.param, value) if "/" in value or criterion.param == "patient" \
                else value
            if reference.startswith(f"{PATIENT}/"):
                named.add(reference.split("/")[1])
    return named


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


# ---------- result parameters ----------
def _result_options(settings: Settings, resource_type: str, applied: dict[str, list[str]]) -> ResultOptions:
    count = page_size(settings, last_value(applied.get("_count")))
    sort: list[tuple[str, bool]] = []
    offered = params_for(resource_type)
    for raw in (last_value(applied.get("_sort")) or "").split(","):
        if not raw.strip():
            continue
        descending = raw.strip().startswith("-")
        code = raw.strip().lstrip("-")
        param = offered.get(code)
        if code not in ("_lastUpdated", "_id") and (param is None or param.type != "date"):
            raises = "_lastUpdated, _id or a date parameter"
            raise InvalidRequest(f"_sort by '{code[:64]}' is not supported for {resource_type} (use {raises})")
        sort.append((code, descending))
    total = last_value(applied.get("_total")) or "accurate"
    if total not in ("none", "estimate", "accurate"):
        raise InvalidRequest("_total must be none, estimate or accurate")
    summary = last_value(applied.get("_summary"))
    if summary not in (None, "true", "false", "count", "data"):
        raise InvalidRequest("_summary must be true, false, count or data (text is not supported)")
    elements = last_value(applied.get("_elements"))
    names: tuple[str, ...] | None = None
    if elements is not None:
        names = tuple(e.strip() for e in elements.split(",") if e.strip())
        if not names or not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n) for n in names):
            raise InvalidRequest("_elements takes a comma-separated list of element names")
    return ResultOptions(count, tuple(sort), total != "none", summary if summary not in ("false",) else None, names)


def _canonical(criteria: list[Criterion]) -> str:
    def value(v: Any) -> str:
        return repr((v.prefix, v.text, v.token, sorted(v.references), v.range, str(v.number), v.system, v.code,
                     v.missing))

    return json.dumps(sorted([c.param.code, c.modifier or "", sorted(value(v) for v in c.values)] for c in criteria))


def _sorted(resource_type: str, resources: list[dict[str, Any]], sort: tuple[tuple[str, bool], ...]
            ) -> list[dict[str, Any]]:
    """Default: oldest change first. Missing values sort last either way."""
    ordered = sorted(resources, key=lambda r: ((r.get("meta") or {}).get("lastUpdated", ""), r["id"]))
    offered = params_for(resource_type)
    for code, descending in reversed(sort):
        if code in ("_lastUpdated", "_id"):
            def text_key(r: dict[str, Any], code: str = code, descending: bool = descending) -> tuple[bool, str]:
                value = r["id"] if code == "_id" else (r.get("meta") or {}).get("lastUpdated")
                return (value is None) != descending, value or ""
            ordered.sort(key=text_key, reverse=descending)
        else:
            param = offered[code]

            def date_key(r: dict[str, Any], param: Any = param, descending: bool = descending) -> tuple[bool, datetime]:
                value = sort_key(param, r, descending)
                return (value is None) != descending, value or MIN_INSTANT
            ordered.sort(key=date_key, reverse=descending)
    return ordered


def _last_updated_matches(criterion: Criterion, last_updated: str) -> bool:
    found = date_range(last_updated)
    if found is None:
        return False
    return any(q.range is not None and date_matches(q.prefix, q.range, found) for q in criterion.values)


@lru_cache(maxsize=64)
def _summary_elements(resource_type: str) -> frozenset[str]:

    from fhir.resources.R4B import get_fhir_model_class  # the models load on first use (cold start)

    fields = get_fhir_model_class(resource_type).model_fields.values()
    return frozenset(f.alias for f in fields if f.alias and isinstance(f.json_schema_extra, dict)
                     and f.json_schema_extra.get("summary_element_property"))


def _shape(resource: dict[str, Any], options: ResultOptions) -> dict[str, Any]:
    """_summary=true|data and _elements: a SUBSETTED copy (the stored resource is never changed)."""
    keep: set[str]
    if options.summary == "true":
        keep = {*_summary_elements(resource["resourceType"]), "resourceType", "id", "meta"}
    elif options.summary == "data":
        keep = set(resource) - {"text"}
    elif options.elements is not None:
        keep = {*options.elements, "resourceType", "id", "meta"}
    else:
        return resource
    shaped = {k: v for k, v in resource.items() if k in keep}
    meta = dict(shaped.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    shaped["meta"] = meta
    return shaped
