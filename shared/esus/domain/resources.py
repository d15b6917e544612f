"""Resource interactions: create, read, vread, update, delete, history. Optimistic locking lives here:
every write is one conditional transaction on the version the writer expects."""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # jsonpatch loads with the first PATCH, not with every function (cold start)
    import jsonpatch

from esus.domain import provenance as prov
from esus.domain.compartment import in_compartment
from esus.domain.fhir import PROVENANCE, RESOURCE_TYPES, now_instant, require_id, validate_resource
from esus.domain.params import instant_param, last_value, page_size
from esus.domain.search_index import SearchKeys, in_parallel, index_writes
from esus.errors import (
    Conflict,
    Forbidden,
    Gone,
    InvalidRequest,
    Issue,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
)
from esus.limits import (
    MAX_JSON_DEPTH,
    MAX_PATCH_OPERATIONS,
    MAX_RESOURCE_BYTES,
    depth_exceeds,
    require_representable,
)
from esus.model import IndexEntry, ResourceWrite, Version
from esus.security.auth import CREATE, DELETE, READ, UPDATE, Principal
from esus.security.crypto import BlindIndex, CursorSigner
from esus.settings import Settings
from esus.storage.errors import Locked, TransactionBusy, TransientConflict, VersionConflict
from esus.storage.store import (
    ALL_TYPES,
    TRANSACTION_ITEM_LIMIT,
    Store,
    change_log_entries,
    change_log_partition,
)
from esus.storage.write_plan import unique_entries

T = TypeVar("T")
LOCK_ATTEMPTS = 6  # a write meeting a large transaction in progress waits at most ~1.5 s, then 409
VERSION_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class HistoryPage:
    versions: list[Version]
    next_cursor: str | None


@dataclass(frozen=True)
class WriteOutcome:
    version: Version
    created: bool


class ResourceService:
    def __init__(
        self, settings: Settings, store: Store, blind_index: BlindIndex, cursors: CursorSigner,
        search_keys: SearchKeys, clock: Callable[[], str] = now_instant,
    ) -> None:
        self._s = settings
        self._store = store
        self._blind = blind_index
        self._cursors = cursors
        self._keys = search_keys
        self._clock = clock

    # ---------- reads ----------
    # `within`: None, or the Patient id whose compartment the caller is confined to (Principal.confinement).
    # Outside it, a resource answers exactly like an unknown one (404), judged on its CURRENT version.
    def read(self, tenant: str, resource_type: str, resource_id: str, *, within: str | None) -> Version:
        _check_generic(resource_type)
        require_id(resource_id)
        current = self._store.current(tenant, resource_type, resource_id)
        if current is None or not _reachable(within, current):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            raise Gone(f"{resource_type}/{resource_id} was deleted", headers={"ETag": current.etag})
        return current

    def vread(self, tenant: str, resource_type: str, resource_id: str, vid: str, *, within: str | None) -> Version:
        _check_generic(resource_type)
        require_id(resource_id)
        found = self._store.version(tenant, resource_type, resource_id, int(vid)) if _is_version(vid) else None
        if found is not None and within is not None:
            found = found if _reachable(within, self._store.current(tenant, resource_type, resource_id)) else None
        if found is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version '{vid[:20]}'")
        if found.deleted:
            raise Gone(f"Version {vid} of {resource_type}/{resource_id} is a delete", headers={"ETag": found.etag})
        return found

    def history(
        self, tenant: str, resource_type: str, resource_id: str, params: dict[str, list[str]], *, within: str | None,
    ) -> HistoryPage:
        """Newest first; `_count`, `_since` and a signed `_cursor` (the last version already served)."""
        _check_generic(resource_type)
        require_id(resource_id)
        if within is not None and not _reachable(within, self._store.current(tenant, resource_type, resource_id)):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        count = page_size(self._s, last_value(params.get("_count")))
        since = instant_param("_since", last_value(params.get("_since")))
        binding = f"history|{resource_type}/{resource_id}|{since}"
        cursor = last_value(params.get("_cursor"))
        before = self._cursors.verify(tenant, binding, cursor) if cursor else None
        if before is not None and not isinstance(before, int):
            raise InvalidRequest("The paging cursor is invalid")
        page, more = self._store.history(tenant, resource_type, resource_id, max(count, 1), since, before)
        if not page and before is None and self._store.current(tenant, resource_type, resource_id) is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        page = page[:count]
        next_cursor = self._cursors.sign(tenant, binding, page[-1].version) if more and page else None
        return HistoryPage(page, next_cursor)

    def changes(
        self, tenant: str, resource_type: str | None, params: dict[str, list[str]], *, within: str | None,
    ) -> HistoryPage:
        """Type-level (`/Patient/_history`) or system-level (`/_history`) history from the change log:
        newest first, `_since`, `_at` (versions up to that instant) and `_count`, signed cursor."""
        if resource_type is not None and resource_type not in RESOURCE_TYPES:
            _check_generic(resource_type)
        if within is not None:  # the log spans every patient; filtering it would read every version it lists
            raise Forbidden("Type-level history is not available to a patient-scoped token: use instance history "
                            "or Patient/[id]/$everything with _since")
        count = page_size(self._s, last_value(params.get("_count")))
        since = instant_param("_since", last_value(params.get("_since")))
        at = instant_param("_at", last_value(params.get("_at")))
        binding = f"changes|{resource_type or ALL_TYPES}|{since}|{at}"
        cursor = last_value(params.get("_cursor"))
        before = self._cursors.verify(tenant, binding, cursor) if cursor else None
        if before is None and at is not None:
            before = f"{at}|~"  # every change up to and including `at`
        partition = change_log_partition(tenant, resource_type or ALL_TYPES)

        def page() -> tuple[list[str], bool, list[Version]]:
            keys, more = self._store.change_log_keys(partition, max(count, 1), since, before)
            keys = keys[:count]
            return keys, more, self._store.versions_by_change_keys(tenant, keys) if keys else []

        # One page must not show part of a large transaction (docs/TRANSACTIONS.md, readers).
        keys, more, versions = self._store.consistent(page)
        next_cursor = self._cursors.sign(tenant, binding, keys[-1]) if more and keys else None
        return HistoryPage(versions, next_cursor)

    # ---------- writes ----------
    def create(
        self, principal: Principal, resource_type: str, body: Any, x_provenance: dict[str, Any] | None,
        guard: tuple[str, str | None] | None = None,
    ) -> Version:
        _check_generic(resource_type)
        resource_id = str(uuid.uuid4())
        version = self.new_version(resource_type, resource_id, 1, body, "POST", 201)
        _lands_inside(principal.confined_to(resource_type, CREATE), version)
        self._commit(principal, version, None, None, (), x_provenance, guard)
        return version

    def update(
        self, principal: Principal, resource_type: str, resource_id: str, body: Any, if_match: int | None,
        x_provenance: dict[str, Any] | None,
    ) -> WriteOutcome:
        _check_generic(resource_type)
        require_id(resource_id)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object holding a FHIR resource")
        if body.get("id") != resource_id:
            message = "The body's id must equal the id in the URL" if "id" in body else "The body must carry its id"
            raise InvalidRequest(message, [Issue("invalid", message, f"{resource_type}.id")])
        if if_match is None and self._s.require_if_match:
            raise InvalidRequest("This server requires If-Match on updates (versioned-update)")
        within = principal.confined_to(resource_type, UPDATE)
        if if_match is not None and within is None:  # index items are keyed by version: nothing to read first
            return self._update_blind(principal, resource_type, resource_id, body, if_match, x_provenance)

        def attempt() -> WriteOutcome:
            current = self._store.current(principal.tenant, resource_type, resource_id)
            if within is not None and (current is None or not _reachable(within, current)):
                # Confined callers update only what is in the compartment now: no update-as-create or revival
                # under an id of their choosing (that would tell them whether someone else's id exists).
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            _check_if_match(if_match, current, resource_type, resource_id)
            return self._write_over(principal, resource_type, resource_id, body, current, x_provenance, within)

        return self._optimistic(resource_type, resource_id, if_match, attempt)

    def create_with_id(
        self, principal: Principal, resource_type: str, resource_id: str, body: Any,
        x_provenance: dict[str, Any] | None,
    ) -> Version:
        """Create under a client-chosen id that must be new (a conditional update that matched nothing)."""
        _check_generic(resource_type)
        require_id(resource_id)
        _no_chosen_id(principal, resource_type)
        version = self.new_version(resource_type, resource_id, 1, body, "PUT", 201)
        try:
            self._commit(principal, version, None, None, (), x_provenance)
        except VersionConflict:
            raise Conflict(
                f"{resource_type}/{resource_id} already exists but does not match the search; a conditional "
                "update that matches nothing may not take over an existing id"
            ) from None
        return version

    def patch(
        self, principal: Principal, resource_type: str, resource_id: str, operations: Any, if_match: int | None,
        x_provenance: dict[str, Any] | None,
    ) -> WriteOutcome:
        """JSON Patch (RFC 6902) on the current version, validated like an update, retried like one."""
        _check_generic(resource_type)
        require_id(resource_id)
        patch = _json_patch(operations)
        within = principal.confined_to(resource_type, READ + UPDATE)

        def attempt() -> WriteOutcome:
            current = self.read(principal.tenant, resource_type, resource_id, within=within)
            _check_if_match(if_match, current, resource_type, resource_id)
            assert current.resource is not None
            import jsonpatch
            import jsonpointer

            try:
                patched = apply_bounded(current.resource, patch, MAX_RESOURCE_BYTES)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise Unprocessable(f"JSON Patch test failed: {str(exc)[:200]}") from None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise Unprocessable(f"JSON Patch cannot be applied: {str(exc)[:200]}") from None
            return self._write_over(principal, resource_type, resource_id, patched, current, x_provenance, within)

        return self._optimistic(resource_type, resource_id, if_match, attempt)

    def _optimistic(self, resource_type: str, resource_id: str, if_match: int | None, attempt: Callable[[], T]) -> T:
        """Read-decide-write with bounded, jittered retries when another writer wins the race; a client
        that pinned a version (If-Match) gets 412 instead, naming the current version."""
        for n in range(self._s.update_retry_attempts):
            try:
                return attempt()
            except VersionConflict as conflict:
                if if_match is not None:
                    raise _stale(resource_type, resource_id, if_match, conflict.current_version) from None
                _backoff(n)
        raise Conflict(f"{resource_type}/{resource_id} is being changed by others; retry", headers={"Retry-After": "1"})

    def _update_blind(
        self, principal: Principal, resource_type: str, resource_id: str, body: Any, if_match: int,
        x_provenance: dict[str, Any] | None,
    ) -> WriteOutcome:
        """If-Match: one conditional write, no read (one round trip on every type)."""
        version = self.new_version(resource_type, resource_id, if_match + 1, body, "PUT", 200)
        try:
            self._commit(principal, version, if_match, False, (), x_provenance)
            return WriteOutcome(version, created=False)
        except VersionConflict as conflict:
            if conflict.current_version == if_match and conflict.current_deleted:
                revived = replace(version, status=201)  # a revival creates the resource anew: it needs `c`
                _lands_inside(principal.confined_to(resource_type, CREATE), revived)
                try:
                    self._commit(principal, revived, if_match, True, (), x_provenance)
                except VersionConflict as again:
                    raise _stale(resource_type, resource_id, if_match, again.current_version) from None
                return WriteOutcome(revived, created=True)
            raise _stale(resource_type, resource_id, if_match, conflict.current_version) from None

    def _write_over(
        self, principal: Principal, resource_type: str, resource_id: str, body: Any, current: Version | None,
        x_provenance: dict[str, Any] | None, within: str | None = None,
    ) -> WriteOutcome:
        if current is None:  # update-as-create (the client chose the id)
            _no_chosen_id(principal, resource_type)
            version = self.new_version(resource_type, resource_id, 1, body, "PUT", 201)
            self._commit(principal, version, None, None, (), x_provenance)
            return WriteOutcome(version, created=True)
        if not current.deleted and current.resource is not None and same_content(current.resource, body):
            return WriteOutcome(current, created=False)  # identical content: no new version, nothing written
        if current.deleted:  # a revival creates the resource anew
            principal.require(resource_type, CREATE)
        status = 201 if current.deleted else 200
        version = self.new_version(resource_type, resource_id, current.version + 1, body, "PUT", status)
        _lands_inside(within, version)
        if current.deleted:
            _lands_inside(principal.confined_to(resource_type, CREATE), version)
        self._commit(principal, version, current.version, current.deleted, current.index_refs, x_provenance)
        return WriteOutcome(version, created=current.deleted)

    def delete(
        self, principal: Principal, resource_type: str, resource_id: str, if_match: int | None,
        x_provenance: dict[str, Any] | None,
    ) -> Version | None:
        """Soft delete as a new version. Returns None when there was nothing to delete (idempotent)."""
        _check_generic(resource_type)
        require_id(resource_id)
        if if_match is None and self._s.require_if_match:
            raise InvalidRequest("This server requires If-Match on deletes (versioned-update)")
        within = principal.confined_to(resource_type, DELETE)

        def attempt() -> Version | None:
            current = self._store.current(principal.tenant, resource_type, resource_id)
            if within is not None and (current is None or not _reachable(within, current)):
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            _check_if_match(if_match, current, resource_type, resource_id)
            if current is None or current.deleted:
                return None
            version = self.delete_version(current)
            self._commit(principal, version, current.version, False, current.index_refs, x_provenance)
            return version

        return self._optimistic(resource_type, resource_id, if_match, attempt)

    # ---------- the one write path ----------
    def delete_version(self, current: Version) -> Version:
        """The version that deletes `current` (no resource; what a delete, alone or in a Bundle, writes)."""
        return Version(resource_type=current.resource_type, resource_id=current.resource_id,
                       version=current.version + 1, last_updated=self._clock(), deleted=True, resource=None,
                       method="DELETE", status=204)

    def new_version(
        self, resource_type: str, resource_id: str, number: int, body: Any, method: str, status: int
    ) -> Version:
        last_updated = self._clock()
        resource = validate_resource(resource_type, _with_server_meta(body, resource_id, number, last_updated))
        require_representable(resource)
        return Version(resource_type=resource_type, resource_id=resource_id, version=number, last_updated=last_updated,
                       deleted=False, resource=resource, method=method, status=status)

    def prepare(
        self, principal: Principal, version: Version, expected_version: int | None, expected_deleted: bool | None,
        stale_refs: tuple[str, ...], x_provenance: dict[str, Any] | None,
    ) -> tuple[ResourceWrite, str]:
        """Everything one version writes: the version, its index entries and its Provenance.
        Search index items start out deferred (beside the transaction; a transaction Bundle keeps them
        there so they never take its room); a single write moves them in when they fit. Stale items of
        older versions are never deleted here (`stale_refs` is ignored): searches re-check every
        candidate against the current version, and cleanup is lazy (docs/SEARCH.md)."""
        activity = prov.ACTIVITY_BY_METHOD["POST" if version.version == 1 else version.method]
        record = (
            prov.finalize(prov.client_provenance(x_provenance, version, self._s, principal), str(uuid.uuid4()),
                          version.last_updated)
            if x_provenance is not None
            else prov.server_record(self._s, principal, version, activity, str(uuid.uuid4()))
        )
        sort_key = prov.recorded_key(record["recorded"])
        index_kv = self._keys.current_version()
        write = ResourceWrite(
            tenant=principal.tenant,
            version=version,
            expected_version=expected_version,
            expected_deleted=expected_deleted,
            index_entries=[],
            stale_index_refs=[],
            deferred_index=self.index_entries(principal.tenant, version),
            provenance=record,
            provenance_index=self.provenance_index(principal.tenant, record, sort_key, index_kv),
            provenance_index_kv=index_kv,
            change_log=change_log_entries(principal.tenant, version),
            request_token=str(uuid.uuid4()),
        )
        return write, sort_key

    def settle(self, locked: Locked, attempt: int) -> None:
        """A write met a large transaction's lock (docs/TRANSACTIONS.md): resolve it (roll it forward or
        back when it can be decided), or wait a little while it is in progress; the caller retries. After
        the last attempt a transaction still in progress is a 409 with Retry-After."""
        try:
            self._store.transactions.resolve(locked)
        except TransactionBusy:
            if attempt + 1 >= LOCK_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.5, 1.0) * min(0.05 * 2**attempt, 0.8))

    def index_entries(self, tenant: str, version: Version) -> list[IndexEntry]:
        """One entry per index item: values whose truncated tokens collide share an item."""
        return unique_entries(self._keys.entries(tenant, version))

    def provenance_index(
        self, tenant: str, record: dict[str, Any], sort_key: str, key_version: str | None
    ) -> list[IndexEntry]:
        """A Provenance record's index items with tokens under `key_version`; None: the clear keys items
        had before Provenance references were tokenised (only ever looked up to remove them)."""
        token = self._keys.provenance_token(tenant, key_version) if key_version else prov.clear_reference
        return prov.index_entries(tenant, record, sort_key, token)

    def _commit(
        self, principal: Principal, version: Version, expected_version: int | None, expected_deleted: bool | None,
        stale_refs: tuple[str, ...], x_provenance: dict[str, Any] | None,
        guard: tuple[str, str | None] | None = None,
    ) -> None:
        write, sort_key = self.prepare(principal, version, expected_version, expected_deleted, stale_refs, x_provenance)
        write.unique_guard = guard
        items = self._store.resource_write_items(write, sort_key)
        if len(items) + len(write.deferred_index) <= TRANSACTION_ITEM_LIMIT:
            write.index_entries, write.deferred_index = write.deferred_index, []
            items = self._store.resource_write_items(write, sort_key)

        def transact() -> None:
            for attempt in range(LOCK_ATTEMPTS):
                try:
                    self._store.transact(items, write.request_token)
                    return
                except TransientConflict:
                    _backoff(attempt)
                except Locked as locked:
                    self.settle(locked, attempt)
            raise Conflict("A concurrent transaction touched the same resource; retry", headers={"Retry-After": "1"})

        if not write.deferred_index:
            transact()
            return
        self._store.require_fits(items)  # refused before the index items beside it are written
        # Too many for one transaction: index items go concurrently with it (one round trip of latency);
        # the write returns only after both, so a search started after it returned finds it. If the
        # transaction fails, the items are orphans that no search ever returns (docs/SEARCH.md).
        in_parallel([transact, *index_writes(self._store, write.deferred_index)])


ENTRY_LETTERS = {"POST": CREATE, "PUT": UPDATE, "DELETE": DELETE}


def check_entry_target(
    principal: Principal, method: str, resource_type: str, resource_id: str, current: Version | None,
) -> None:
    """A transaction entry, before anything about its target is used: as for the same stand-alone write, a
    patient-confined caller may change only what is in its compartment now (else 404, like an unknown id)."""
    within = principal.confined_to(resource_type, ENTRY_LETTERS[method])
    if within is not None and method != "POST" and not _reachable(within, current):
        raise NotFound(f"{resource_type}/{resource_id} is not known")


def check_entry_content(principal: Principal, method: str, version: Version) -> None:
    """A transaction entry's new content must land in a confined caller's compartment (else 403); a PUT that
    creates is also a create (`c`)."""
    _lands_inside(principal.confined_to(version.resource_type, ENTRY_LETTERS[method]), version)
    if method == "PUT" and version.status == 201:
        if version.version == 1:
            _no_chosen_id(principal, version.resource_type)
        _lands_inside(principal.confined_to(version.resource_type, CREATE), version)


def _no_chosen_id(principal: Principal, resource_type: str) -> None:
    """Creating under a client-chosen id (update-as-create, a conditional update's id) needs `c` anywhere:
    whether someone else's resource has that id is not a patient-scoped token's to learn."""
    if principal.confined_to(resource_type, CREATE) is not None:
        raise Forbidden("A patient-scoped token cannot create a resource under an id of its choosing")


def _reachable(within: str | None, current: Version | None) -> bool:
    """Is this current version visible to a caller confined to `within`'s compartment? (Deleted: no.)"""
    if within is None:
        return True
    return current is not None and not current.deleted and current.resource is not None and \
        in_compartment(within, current.resource_type, current.resource)


def _lands_inside(within: str | None, version: Version) -> None:
    """A confined caller's write must leave the resource in its compartment (decided by the request alone)."""
    if within is not None and version.resource is not None and \
            not in_compartment(within, version.resource_type, version.resource):
        raise Forbidden(f"This {version.resource_type} would not be in the compartment of Patient/{within}, the "
                        "only patient this token may write for")


def _check_generic(resource_type: str) -> None:
    if resource_type == PROVENANCE:
        raise MethodNotAllowed("Provenance is an audit record: it cannot be updated or deleted")
    if resource_type not in RESOURCE_TYPES:
        raise NotFound(f"Resource type '{resource_type[:64]}' is not supported by this server")


def _is_version(vid: str) -> bool:
    # ASCII digits only (str.isdigit() accepts '²', which int() rejects); 18 digits fit DynamoDB's number.
    return VERSION_ID.fullmatch(vid) is not None and int(vid) > 0


SERVER_META = ("versionId", "lastUpdated")


def _with_server_meta(body: Any, resource_id: str, version: int, last_updated: str) -> Any:
    """The server owns identity and versioning (no mass assignment): the client's id, meta.versionId and
    meta.lastUpdated are replaced. The rest of the client's meta (profile, security, tag, source) is content
    of the version: stored, versioned and returned as sent."""
    if not isinstance(body, dict):
        return body
    client_meta = body.get("meta")
    meta: Any = {"versionId": str(version), "lastUpdated": last_updated}
    if isinstance(client_meta, dict):
        meta.update((k, v) for k, v in client_meta.items() if k not in SERVER_META)
    elif client_meta is not None:
        meta = client_meta  # not an object: validation rejects it with its path
    return {
        "resourceType": body.get("resourceType"),
        "id": resource_id,
        "meta": meta,
        **{k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")},
    }


# JSON Patch may change meta's labels (/meta/tag/-, /meta/security/0, ...) but not identity and versioning.
SERVER_OWNED_PATHS = ("/id", "/resourceType", "/meta/versionId", "/meta/lastUpdated")
SERVER_OWNED_EXACT = ("/meta",)


def _json_patch(operations: Any) -> jsonpatch.JsonPatch:
    import jsonpatch
    import jsonpointer

    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise InvalidRequest("A JSON Patch document is an array of operations")
    if len(operations) > MAX_PATCH_OPERATIONS:
        raise PayloadTooLarge(
            f"A JSON Patch may hold at most {MAX_PATCH_OPERATIONS} operations; this one has {len(operations)}")
    for op in operations:
        for key in ("path", "from"):
            path = op.get(key)
            if isinstance(path, str) and (path in SERVER_OWNED_EXACT or any(
                    path == p or path.startswith(f"{p}/") for p in SERVER_OWNED_PATHS)):
                raise InvalidRequest(f"JSON Patch must not change {path}: id, resourceType, meta.versionId and "
                                     "meta.lastUpdated are the server's")
    try:
        return jsonpatch.JsonPatch(operations)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException, TypeError) as exc:
        raise InvalidRequest(f"Invalid JSON Patch: {str(exc)[:200]}") from None


def apply_bounded(document: dict[str, Any], patch: jsonpatch.JsonPatch, max_bytes: int) -> Any:
    """Apply a JSON Patch one operation at a time to a copy of `document`, refusing (413) BEFORE an
    operation that could take the result past `max_bytes`: each `copy` of /x into /x/- doubles the
    document, so a 1 KB patch would otherwise exhaust memory. `size` is an upper bound grown by what
    each operation inserts; the document is measured again only when that bound reaches the limit."""
    import jsonpatch

    text = _json_text(document)
    patched: Any = json.loads(text)  # a private copy, patched in place (the stored version stays intact)
    size = len(text)
    try:
        for index, operation in enumerate(patch.patch):
            grows = _inserted_size(patched, operation)
            if size + grows > max_bytes:
                size = len(_json_text(patched))
                if size + grows > max_bytes:
                    raise PayloadTooLarge(
                        f"JSON Patch operation {index} ({str(operation.get('op'))[:10]}) would make the resource "
                        f"larger than {max_bytes} bytes; nothing was stored"
                    )
            patched = jsonpatch.JsonPatch([operation]).apply(patched, in_place=True)
            size += grows
    except RecursionError:
        raise Unprocessable(f"The patched resource would nest more than {MAX_JSON_DEPTH} levels deep") from None
    if depth_exceeds(patched, MAX_JSON_DEPTH):
        raise Unprocessable(f"The patched resource would nest more than {MAX_JSON_DEPTH} levels deep")
    return patched


def _json_text(value: Any) -> str:
    # ASCII-escaped, so its length is at least the UTF-8 size of the same JSON.
    return json.dumps(value, separators=(",", ":"))


def _inserted_size(document: Any, operation: dict[str, Any]) -> int:
    """At most how many bytes `operation` adds to the serialized document."""
    import jsonpointer

    kind = operation.get("op")
    if kind in ("add", "replace"):
        inserted = operation.get("value")
    elif kind == "copy":
        try:
            inserted = jsonpointer.resolve_pointer(document, str(operation.get("from")), None)
        except jsonpointer.JsonPointerException:
            return 0  # the operation itself reports the bad pointer
    else:  # remove, move and test add no content
        return len(str(operation.get("path"))) + 4
    return len(_json_text(inserted)) + len(str(operation.get("path"))) + 4


def same_content(stored: dict[str, Any], body: dict[str, Any]) -> bool:
    """Equal apart from server-owned id/meta.versionId/meta.lastUpdated: re-sending a resource (an import
    re-run) changes nothing, while a changed tag, security label, profile or source is a new version."""
    return _content(stored) == _content(body)


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    content = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = resource.get("meta")
    client_meta = {k: v for k, v in meta.items() if k not in SERVER_META} if isinstance(meta, dict) else meta
    if client_meta or not isinstance(client_meta, dict | None):  # an empty meta equals none; a bad one never
        content["meta"] = client_meta
    return content


def _check_if_match(if_match: int | None, current: Version | None, resource_type: str, resource_id: str) -> None:
    if if_match is None:
        return
    if current is None:
        raise PreconditionFailed(f"If-Match was given but {resource_type}/{resource_id} does not exist")
    if current.version != if_match:
        raise _stale(resource_type, resource_id, if_match, current.version)


def _stale(resource_type: str, resource_id: str, expected: int, current: int | None) -> PreconditionFailed:
    if current is None:
        return PreconditionFailed(f"If-Match was given but {resource_type}/{resource_id} does not exist")
    return PreconditionFailed(
        f"Version conflict: If-Match expected version {expected} but the current version of "
        f"{resource_type}/{resource_id} is {current}",
        headers={"ETag": f'W/"{current}"'},
    )


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.01 * 2**attempt))
