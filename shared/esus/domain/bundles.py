"""POST /fhir with a Bundle. `transaction`: all entries or none (ONE TransactWriteItems when they fit,
else the large-transaction protocol of docs/TRANSACTIONS.md); conditional URLs and references resolved.
`batch`: entries processed independently through the ordinary interactions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from esus.domain.conditional import ConditionalService
from esus.domain.fhir import RESOURCE_TYPES, reference_strings, require_id
from esus.domain.resources import (
    LOCK_ATTEMPTS,
    ResourceService,
    check_entry_content,
    check_entry_target,
    same_content,
)
from esus.domain.search_index import in_parallel, index_writes
from esus.errors import Conflict, FhirError, InvalidRequest, Issue, PayloadTooLarge, PreconditionFailed
from esus.limits import MAX_TRANSACTION_ENTRIES
from esus.model import ResourceWrite, Version
from esus.security.auth import CREATE, SEARCH, Principal
from esus.storage.errors import Locked, TransientConflict, VersionConflict
from esus.storage.store import (
    BATCH_GET_LIMIT,
    TRANSACTION_ITEM_LIMIT,
    Store,
)
from esus.storage.write_plan import transaction_item_count

METHOD_INTERACTION = {"POST": "create", "PUT": "update", "DELETE": "delete"}
URN_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F-]{36}$")


@dataclass
class EntryResult:
    status: int
    version: Version | None = None
    outcome: FhirError | None = None


@dataclass
class _Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None  # the url's id, a POST's new id; a conditional url's match is filled in later
    query: dict[str, list[str]] | None  # a conditional url's search
    resource: dict[str, Any] | None
    request: dict[str, Any]
    full_url: str | None
    creates_only: bool = False  # a conditional update that matched nothing: the id must be new

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


class BundleService:
    def __init__(
        self, store: Store, resources: ResourceService, conditional: ConditionalService,
        error_for: Callable[[Exception], FhirError],
    ) -> None:
        self._store = store
        self._resources = resources
        self._conditional = conditional
        # The HTTP edge's one exception -> outcome mapping, injected: each batch entry answers like a request.
        self._error_for = error_for

    def process(
        self, principal: Principal, bundle: Any, x_provenance: dict[str, Any] | None
    ) -> tuple[str, list[EntryResult]]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidRequest("POST [base] takes a Bundle of type transaction or batch")
        kind = bundle.get("type")
        entries = bundle.get("entry") or []
        if kind not in ("transaction", "batch") or not isinstance(entries, list):
            raise InvalidRequest("Bundle.type must be transaction or batch")
        if kind == "batch":
            return "batch-response", [self._batch_entry(principal, e, x_provenance) for e in entries]
        return "transaction-response", self._transaction(principal, entries, x_provenance)

    # ---------- batch ----------
    def _batch_entry(self, principal: Principal, entry: Any, x_provenance: dict[str, Any] | None) -> EntryResult:
        try:
            parsed = _parse_entry(entry)
            method, resource_type, resource, request = parsed.method, parsed.resource_type, parsed.resource, \
                parsed.request
            principal.require_interaction(resource_type, _interaction(method, request, parsed.query is not None))
            if_match = _if_match(request)
            if parsed.query is not None:  # conditional update or delete, as the stand-alone interactions
                if method == "PUT":
                    outcome = self._conditional.update(principal, resource_type, parsed.query, resource, if_match,
                                                       x_provenance)
                    return EntryResult(201 if outcome.created else 200, outcome.version)
                return EntryResult(204, self._conditional.delete(principal, resource_type, parsed.query,
                                                                 x_provenance))
            if method == "POST":
                if request.get("ifNoneExist"):
                    version, created = self._conditional.create(
                        principal, resource_type, resource, str(request["ifNoneExist"]), x_provenance)
                    return EntryResult(201 if created else 200, version)
                return EntryResult(201, self._resources.create(principal, resource_type, resource, x_provenance))
            resource_id = str(parsed.resource_id)
            if method == "PUT":
                outcome = self._resources.update(principal, resource_type, resource_id, resource, if_match,
                                                 x_provenance)
                return EntryResult(201 if outcome.created else 200, outcome.version)
            deleted = self._resources.delete(principal, resource_type, resource_id, if_match, x_provenance)
            return EntryResult(204, deleted)
        except Exception as exc:  # any failure is this entry's outcome: a batch always answers 200
            error = self._error_for(exc)
            return EntryResult(error.status, outcome=error)

    # ---------- transaction ----------
    def _transaction(
        self, principal: Principal, entries: list[Any], x_provenance: dict[str, Any] | None
    ) -> list[EntryResult]:
        """Everything is read and checked first (nothing is written when an entry is invalid or a
        precondition fails); then all entries commit as one: ONE TransactWriteItems when they fit in 100
        items, else the large-transaction protocol (docs/TRANSACTIONS.md)."""
        if len(entries) > MAX_TRANSACTION_ENTRIES:
            message = (f"A transaction Bundle may hold at most {MAX_TRANSACTION_ENTRIES} entries (what commits within "
                       f"the API's 29 s); this one has {len(entries)}. Nothing was stored. Split it into several "
                       "transactions, or send a batch.")
            raise PayloadTooLarge(message, [Issue("too-costly", message, "Bundle.entry")])
        parsed = [_parse_entry(e, n) for n, e in enumerate(entries)]
        for entry in parsed:  # every scope is checked before any read
            principal.require_interaction(entry.resource_type, _interaction(entry.method, entry.request,
                                                                            entry.query is not None))
        tenant = principal.tenant
        self._resolve_conditional_urls(tenant, parsed)
        touched: dict[str, int] = {}
        for entry in parsed:
            if entry.resource_id is None:
                continue
            first = touched.setdefault(entry.key, entry.index)
            if first != entry.index:
                raise InvalidRequest(f"Bundle.entry[{first}] and Bundle.entry[{entry.index}] both change "
                                     f"{entry.key}; a transaction may change each resource once")
        # urn:uuid (or other) fullUrls of this Bundle's entries resolve to Type/id.
        assigned = {e.full_url: e.key for e in parsed if e.full_url and e.resource_id is not None}
        self._resolve_references(tenant, parsed, assigned)
        currents = self._currents(tenant, parsed)
        results: list[EntryResult] = []
        writes: list[tuple[ResourceWrite, str]] = []
        conditions: dict[str, int] = {}  # conditional-create guard -> the entry that holds it
        for entry in parsed:
            result, write = self._transaction_entry(principal, entry, currents.get(entry.key), x_provenance,
                                                    conditions)
            results.append(result)
            if write is not None:
                writes.append(write)
        if writes:
            self._commit(tenant, writes)
        return results

    def _resolve_conditional_urls(self, tenant: str, parsed: list[_Entry]) -> None:
        """`PUT Type?search` and `DELETE Type?search` become the one resource they select (R4 http.html):
        PUT: 0 matches -> create (the body's id, which must be new, or a new one), 1 -> update it;
        DELETE: 0 -> nothing to delete, 1 -> delete it; more than one -> 412."""
        for entry in parsed:
            if entry.query is None:
                continue
            where = f"Bundle.entry[{entry.index}]"
            try:
                ids = self._conditional.match_ids(tenant, entry.resource_type, entry.query)
            except (PreconditionFailed, InvalidRequest) as exc:
                raise type(exc)(f"{where}: {exc.diagnostics}") from None
            if entry.method == "DELETE":
                entry.resource_id = ids[0] if ids else None
                continue
            assert entry.resource is not None
            body_id = entry.resource.get("id")
            if ids:
                if body_id is not None and body_id != ids[0]:
                    raise InvalidRequest(f"{where}: the resource's id does not match the resource the search found")
                entry.resource_id = ids[0]
            else:
                if _if_match(entry.request) is not None:
                    raise PreconditionFailed(f"{where}: If-Match was given but no resource matches the search")
                entry.creates_only = True  # R5 http.html: an id that exists but did not match is a 409
                entry.resource_id = require_id(str(body_id)) if body_id is not None else str(uuid.uuid4())
            entry.resource = {**entry.resource, "id": entry.resource_id}

    def _resolve_references(self, tenant: str, parsed: list[_Entry], assigned: dict[str, str]) -> None:
        """urn:uuid references to entries become Type/id; conditional references (`Type?search`) become
        the one resource they match, stored or in this Bundle."""
        contents = [(e.resource_type, str(e.resource_id), e.resource) for e in parsed
                    if e.resource is not None and e.resource_id is not None]
        conditional: dict[str, str] = {}
        for entry in parsed:
            if entry.resource is None:
                continue
            for reference in reference_strings(entry.resource):
                if reference not in assigned and reference not in conditional and _is_conditional(reference):
                    conditional[reference] = self._conditional.resolve_reference(
                        tenant, reference, contents, f"Bundle.entry[{entry.index}]")
        targets = {**assigned, **conditional}
        for entry in parsed:
            if entry.resource is not None:
                entry.resource = _resolve_references(entry.resource, targets, entry.index)

    def _currents(self, tenant: str, parsed: list[_Entry]) -> dict[str, Version]:
        """The current versions of every PUT and DELETE target: one BatchGetItem per 100, per type."""
        by_type: dict[str, list[str]] = {}
        for entry in parsed:
            if entry.method != "POST" and entry.resource_id is not None:
                by_type.setdefault(entry.resource_type, []).append(entry.resource_id)
        found: dict[str, Version] = {}
        for resource_type, ids in by_type.items():
            for start in range(0, len(ids), BATCH_GET_LIMIT):
                for version in self._store.currents(tenant, resource_type, ids[start : start + BATCH_GET_LIMIT]):
                    found[version.reference] = version
        return found

    def _transaction_entry(
        self, principal: Principal, entry: _Entry, current: Version | None, x_provenance: dict[str, Any] | None,
        conditions: dict[str, int],
    ) -> tuple[EntryResult, tuple[ResourceWrite, str] | None]:
        where = f"Bundle.entry[{entry.index}]"
        method, resource_type, request = entry.method, entry.resource_type, entry.request
        if_match = _if_match(request)
        if entry.resource_id is None:  # a conditional delete that matched nothing
            return EntryResult(204), None
        resource_id = entry.resource_id
        check_entry_target(principal, method, resource_type, resource_id, current)
        if if_match is not None and (current is None or current.version != if_match):
            found = f"is at version {current.version}" if current else "does not exist"
            raise PreconditionFailed(f"{where}: If-Match {if_match} failed: {resource_type}/{resource_id} {found}")
        if entry.creates_only and current is not None:
            raise Conflict(f"{where}: {resource_type}/{resource_id} already exists but does not match the search; a "
                           "conditional update that matches nothing may not take over an existing id")
        guard = None
        if method == "POST" and request.get("ifNoneExist"):
            matches = self._conditional.matches_for_transaction(principal.tenant, resource_type,
                                                                str(request["ifNoneExist"]),
                                                                principal.confined_to(resource_type, SEARCH))
            # The same condition twice would make both entries create (or write the guard twice): the
            # second create would break the condition the first one set, so the transaction is refused.
            first = conditions.setdefault(matches.guard[0], entry.index)
            if first != entry.index:
                message = (f"Bundle.entry[{first}] and {where} both create a {resource_type} only if none matches "
                           "the same search (ifNoneExist); a transaction may hold each condition once. Keep one "
                           "entry and point references at its fullUrl.")
                raise InvalidRequest(message, [Issue("invalid", message, f"{where}.request.ifNoneExist")])
            if matches.existing is not None:
                return EntryResult(200, matches.existing), None
            guard = matches.guard
        if method == "PUT" and (current is None or current.deleted):
            principal.require(resource_type, CREATE)  # this update creates the resource
        if method == "DELETE":
            if current is None or current.deleted:
                return EntryResult(204), None
            version = self._resources.delete_version(current)
        else:
            assert entry.resource is not None
            if current is not None and not current.deleted and current.resource is not None \
                    and same_content(current.resource, entry.resource):
                return EntryResult(200, current), None
            number = current.version + 1 if current else 1
            status = 200 if current and not current.deleted else 201
            version = self._resources.new_version(resource_type, resource_id, number, entry.resource, method, status)
        if method != "DELETE":
            check_entry_content(principal, method, version)
        write, sort_key = self._resources.prepare(
            principal, version, current.version if current else None, current.deleted if current else None,
            current.index_refs if current else (), x_provenance)
        write.unique_guard = guard
        return EntryResult(version.status, version), (write, sort_key)

    def _commit(self, tenant: str, writes: list[tuple[ResourceWrite, str]]) -> None:
        if sum(transaction_item_count(write) for write, _ in writes) > TRANSACTION_ITEM_LIMIT:
            try:
                self._store.transactions.commit(tenant, writes)
            except VersionConflict:
                raise Conflict("A resource in the transaction was changed concurrently; nothing was stored",
                               headers={"Retry-After": "1"}) from None
            return
        items = [item for write, sort_key in writes for item in self._store.resource_write_items(write, sort_key)]
        token = str(uuid.uuid4())

        def transact() -> None:
            for attempt in range(LOCK_ATTEMPTS):
                try:
                    self._store.transact(items, token)
                    return
                except TransientConflict:
                    continue
                except Locked as locked:  # a large transaction holds a resource: settle it, then try again
                    self._resources.settle(locked, attempt)
                except VersionConflict:
                    raise Conflict("A resource in the transaction was changed concurrently; nothing was stored") \
                        from None
            raise Conflict("The transaction kept conflicting with concurrent writes; nothing was stored",
                           headers={"Retry-After": "1"})

        # Search index items side by side with the transaction, as for a single write: one round trip, and the
        # response waits for both (read-your-writes). If the transaction fails they are orphans that no search
        # ever returns (docs/SEARCH.md); its error is the one raised.
        in_parallel([transact, *index_writes(self._store, [e for write, _ in writes for e in write.deferred_index])])


def _interaction(method: str, request: dict[str, Any], conditional_url: bool = False) -> str:
    """The stand-alone interaction an entry performs: it needs exactly that interaction's scopes."""
    if method == "POST":
        return "conditional-create" if request.get("ifNoneExist") else "create"
    if conditional_url:
        return "conditional-update" if method == "PUT" else "conditional-delete"
    return METHOD_INTERACTION[method]


def _parse_entry(entry: Any, index: int | None = None) -> _Entry:
    """One entry's request. `index`: a transaction entry (POST gets its new id here, for fullUrls)."""
    where = f"Bundle.entry[{index}]: " if index is not None else ""
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise InvalidRequest(f"{where}Every Bundle entry needs a request")
    request = entry["request"]
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", "")).split("?", 1)
    path = url[0].strip("/").split("/")
    shown = str(request.get("url"))[:200]
    if method not in METHOD_INTERACTION:
        raise InvalidRequest(f"{where}Bundle entry method '{method[:10]}' is not supported (POST, PUT, DELETE)")
    resource_type = path[0]
    if resource_type not in RESOURCE_TYPES:
        raise InvalidRequest(f"{where}Bundle entry type '{resource_type[:64]}' is not supported")
    query = None
    if len(url) > 1:  # a conditional update or delete (POST takes its condition in ifNoneExist)
        if method == "POST" or len(path) != 1:
            raise InvalidRequest(f"{where}Bundle entry url '{shown}' does not fit {method}: a search goes on "
                                 "PUT Type?search or DELETE Type?search (POST uses ifNoneExist)")
        query = parse_qs(url[1], keep_blank_values=True)
    resource_id = require_id(path[1]) if len(path) == 2 else None
    if query is None and ((method == "POST") != (resource_id is None) or len(path) > 2):
        raise InvalidRequest(f"{where}Bundle entry url '{shown}' does not fit {method}")
    resource = entry.get("resource")
    if method != "DELETE" and not isinstance(resource, dict):
        raise InvalidRequest(f"{where}Bundle entry {method} {shown} needs a resource")
    if method == "PUT" and query is None and isinstance(resource, dict) and resource.get("id") != resource_id:
        raise InvalidRequest(f"{where}Bundle entry PUT {shown}: the resource id must match the url",
                             [Issue("invalid", "id does not match the url", "Bundle.entry.resource.id")])
    if method == "POST" and index is not None:
        resource_id = str(uuid.uuid4())
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    return _Entry(index or 0, method, resource_type, resource_id, query,
                  resource if isinstance(resource, dict) else None, request, full_url)


def _if_match(request: dict[str, Any]) -> int | None:
    raw = request.get("ifMatch")
    if raw is None:
        return None
    match = re.match(r'^\s*(?:W/)?"?([0-9]{1,18})"?\s*$', str(raw))
    if not match:
        raise InvalidRequest("Bundle entry ifMatch must be a version ETag like W/\"3\"")
    return int(match.group(1))


def _is_conditional(reference: str) -> bool:
    """`Type?search` (Synthea's style for Organization and Practitioner), not an absolute URL."""
    resource_type, sep, query = reference.partition("?")
    return bool(sep and query) and resource_type in RESOURCE_TYPES


def _resolve_references(resource: dict[str, Any], targets: dict[str, str], index: int) -> dict[str, Any]:
    """urn:uuid and conditional references to this transaction's targets become Type/id."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (targets.get(v, v) if k == "reference" and isinstance(v, str) else walk(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    resolved: dict[str, Any] = walk(resource)
    unresolved = [r for r in reference_strings(resolved) if URN_UUID.match(r)]
    if unresolved:
        raise InvalidRequest(f"Bundle.entry[{index}]: reference {unresolved[0]} does not point at an entry of this "
                             "transaction")
    return resolved
