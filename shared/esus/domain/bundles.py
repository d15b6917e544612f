"""POST /fhir with a Bundle. `transaction`: every entry (with its history item, Provenance and index
items) in ONE TransactWriteItems, so all succeed or none is stored; never split. `batch`: entries
processed independently through the ordinary interactions."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esus.domain.conditional import ConditionalService
from esus.domain.fhir import RESOURCE_TYPES, now_instant, require_id
from esus.domain.resources import ResourceService, check_entry_content, check_entry_target, same_content
from esus.errors import Conflict, FhirError, InvalidRequest, Issue, PreconditionFailed
from esus.model import IndexEntry, Version
from esus.security.auth import CREATE, SEARCH, Principal
from esus.storage.store import Store, TransientConflict, VersionConflict

METHOD_INTERACTION = {"POST": "create", "PUT": "update", "DELETE": "delete"}
URN_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F-]{36}$")


@dataclass
class EntryResult:
    status: int
    version: Version | None = None
    outcome: FhirError | None = None


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
            method, resource_type, resource_id, resource, request = _parse_entry(entry)
            principal.require_interaction(resource_type, _interaction(method, request))
            if_match = _if_match(request)
            if method == "POST":
                if request.get("ifNoneExist"):
                    version, created = self._conditional.create(
                        principal, resource_type, resource, str(request["ifNoneExist"]), x_provenance)
                    return EntryResult(201 if created else 200, version)
                return EntryResult(201, self._resources.create(principal, resource_type, resource, x_provenance))
            if method == "PUT":
                outcome = self._resources.update(principal, resource_type, str(resource_id), resource, if_match,
                                                 x_provenance)
                return EntryResult(201 if outcome.created else 200, outcome.version)
            deleted = self._resources.delete(principal, resource_type, str(resource_id), if_match, x_provenance)
            return EntryResult(204, deleted)
        except Exception as exc:  # any failure is this entry's outcome: a batch always answers 200
            error = self._error_for(exc)
            return EntryResult(error.status, outcome=error)

    # ---------- transaction ----------
    def _transaction(
        self, principal: Principal, entries: list[Any], x_provenance: dict[str, Any] | None
    ) -> list[EntryResult]:
        parsed = [_parse_entry(e) for e in entries]
        ids = self._assign_ids(parsed)
        # urn:uuid (or other) fullUrls of this Bundle's entries resolve to Type/id.
        assigned = {str(entry["fullUrl"]): f"{p[1]}/{i}" for entry, p, i in zip(entries, parsed, ids, strict=True)
                    if entry.get("fullUrl")}
        results: list[EntryResult] = []
        items: list[dict[str, Any]] = []
        deferred: list[IndexEntry] = []  # search index items: beside the transaction, never in it
        touched: set[str] = set()
        for method, resource_type, _, _, request in parsed:  # every scope is checked before any read
            principal.require_interaction(resource_type, _interaction(method, request))
        conditions: dict[str, int] = {}  # conditional-create guard -> the entry that holds it
        for index, (method, resource_type, _, resource, request) in enumerate(parsed):
            if resource is not None:
                resource = _resolve_references(resource, assigned)
            target_id = ids[index]
            key = f"{resource_type}/{target_id}"
            if key in touched:
                raise InvalidRequest(f"The transaction changes {key} twice")
            touched.add(key)
            result, entry_items = self._transaction_entry(
                principal, method, resource_type, str(target_id), resource, request, x_provenance, index, conditions,
                deferred)
            results.append(result)
            items += entry_items
        if items:
            self._commit(items)
            self._store.put_index_items(deferred)  # before the response: read-your-writes
        return results

    def _transaction_entry(
        self, principal: Principal, method: str, resource_type: str, resource_id: str,
        resource: dict[str, Any] | None, request: dict[str, Any], x_provenance: dict[str, Any] | None, index: int,
        conditions: dict[str, int], deferred: list[IndexEntry],
    ) -> tuple[EntryResult, list[dict[str, Any]]]:
        where = f"Bundle.entry[{index}]"
        if_match = _if_match(request)
        current = self._store.current(principal.tenant, resource_type, resource_id) if method != "POST" else None
        check_entry_target(principal, method, resource_type, resource_id, current)
        if if_match is not None and (current is None or current.version != if_match):
            found = f"is at version {current.version}" if current else "does not exist"
            raise PreconditionFailed(f"{where}: If-Match {if_match} failed: {resource_type}/{resource_id} {found}")
        guard = None
        if method == "POST" and request.get("ifNoneExist"):
            matches = self._conditional.matches_for_transaction(principal.tenant, resource_type,
                                                                str(request["ifNoneExist"]),
                                                                principal.confined_to(resource_type, SEARCH))
            # The same condition twice would make both entries create (or write the guard twice): the
            # second create would break the condition the first one set, so the transaction is refused.
            first = conditions.setdefault(matches.guard[0], index)
            if first != index:
                message = (f"Bundle.entry[{first}] and {where} both create a {resource_type} only if none matches "
                           "the same search (ifNoneExist); a transaction may hold each condition once. Keep one "
                           "entry and point references at its fullUrl.")
                raise InvalidRequest(message, [Issue("invalid", message, f"{where}.request.ifNoneExist")])
            if matches.existing is not None:
                return EntryResult(200, matches.existing), []
            guard = matches.guard
        if method == "PUT" and (current is None or current.deleted):
            principal.require(resource_type, CREATE)  # this update creates the resource
        if method == "DELETE":
            if current is None or current.deleted:
                return EntryResult(204), []
            version = Version(resource_type, resource_id, current.version + 1, now_instant(), True, None, "DELETE", 204)
        else:
            assert resource is not None
            if current is not None and not current.deleted and current.resource is not None \
                    and same_content(current.resource, resource):
                return EntryResult(200, current), []
            number = current.version + 1 if current else 1
            status = 200 if current and not current.deleted else 201
            version = self._resources.new_version(resource_type, resource_id, number, resource, method, status)
        if method != "DELETE":
            check_entry_content(principal, method, version)
        write, sort_key = self._resources.prepare(
            principal, version, current.version if current else None, current.deleted if current else None,
            current.index_refs if current else (), x_provenance)
        write.unique_guard = guard
        deferred += write.deferred_index
        return EntryResult(version.status, version), self._store.resource_write_items(write, sort_key)

    @staticmethod
    def _assign_ids(parsed: list[tuple[str, str, str | None, Any, dict[str, Any]]]) -> list[str | None]:
        """A fresh server id for every POST entry; PUT and DELETE keep the id of their url."""
        return [str(uuid.uuid4()) if method == "POST" else resource_id for method, _, resource_id, _, _ in parsed]

    def _commit(self, items: list[dict[str, Any]]) -> None:
        token = str(uuid.uuid4())
        for _ in range(3):
            try:
                self._store.transact(items, token)
                return
            except TransientConflict:
                continue
            except VersionConflict:
                raise Conflict("A resource in the transaction was changed concurrently; nothing was stored") from None
        raise Conflict("The transaction kept conflicting with concurrent writes; nothing was stored",
                       headers={"Retry-After": "1"})


def _interaction(method: str, request: dict[str, Any]) -> str:
    """The stand-alone interaction an entry performs: it needs exactly that interaction's scopes."""
    if method == "POST":
        return "conditional-create" if request.get("ifNoneExist") else "create"
    return METHOD_INTERACTION[method]


def _parse_entry(entry: Any) -> tuple[str, str, str | None, Any, dict[str, Any]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise InvalidRequest("Every Bundle entry needs a request")
    request = entry["request"]
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", "")).split("?", 1)
    path = url[0].strip("/").split("/")
    if method not in METHOD_INTERACTION:
        raise InvalidRequest(f"Bundle entry method '{method[:10]}' is not supported (POST, PUT, DELETE)")
    if len(url) > 1:
        raise InvalidRequest("Conditional URLs in Bundle entries are not supported; use ifNoneExist on POST")
    resource_type = path[0]
    if resource_type not in RESOURCE_TYPES:
        raise InvalidRequest(f"Bundle entry type '{resource_type[:64]}' is not supported")
    resource_id = require_id(path[1]) if len(path) == 2 else None
    if (method == "POST") != (resource_id is None) or len(path) > 2:
        raise InvalidRequest(f"Bundle entry url '{request.get('url')}' does not fit {method}")
    resource = entry.get("resource")
    if method != "DELETE" and not isinstance(resource, dict):
        raise InvalidRequest(f"Bundle entry {method} {request.get('url')} needs a resource")
    if method == "PUT" and isinstance(resource, dict) and resource.get("id") != resource_id:
        raise InvalidRequest(f"Bundle entry PUT {request.get('url')}: the resource id must match the url",
                             [Issue("invalid", "id does not match the url", "Bundle.entry.resource.id")])
    return method, resource_type, resource_id, resource, request


def _if_match(request: dict[str, Any]) -> int | None:
    raw = request.get("ifMatch")
    if raw is None:
        return None
    match = re.match(r'^\s*(?:W/)?"?([0-9]{1,18})"?\s*$', str(raw))
    if not match:
        raise InvalidRequest("Bundle entry ifMatch must be a version ETag like W/\"3\"")
    return int(match.group(1))


def _resolve_references(resource: dict[str, Any], assigned: dict[str, str]) -> dict[str, Any]:
    """urn:uuid references to entries of this transaction become Type/id."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (assigned.get(v, v) if k == "reference" and isinstance(v, str) else walk(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    resolved: dict[str, Any] = walk(resource)
    unresolved = [m for m in re.findall(r'"reference":\s*"(urn:uuid:[^"]+)"', json.dumps(resolved))
                  if URN_UUID.match(m)]
    if unresolved:
        raise InvalidRequest(f"Reference {unresolved[0]} does not point at an entry of this transaction")
    return resolved


