"""Integrity checker (`esus verify`): proves, for every tenant, the invariants every write keeps.

- every current item has history items for versions 1..v, contiguous, the last equal to it;
- every version has exactly one Provenance whose target is that version (the one its write stored);
- every index item a current version owns (`idx`) exists, and `idx` lists every search index item the
  version's content needs (docs/SEARCH.md). Search index items of older versions, and orphans of writes
  that failed, are expected (searches re-check every candidate and cleanup is lazy): they are counted
  per tenant as stale, not reported; `--repair-index` writes missing items and deletes stale ones;
- every history item is in the tenant's change log (type and system level);
- every sealed element decrypts (tag, key version and AAD all check), current items included; a version kept in
  the object store (too large for an item, or a Binary) has its object, and the object matches its digest;
- every object in the object store is the body of a version whose item points to it. Others are orphans of
  writes that failed after the object was written (it is written first) and before the version's transaction:
  invisible, harmless, counted per tenant, and removed by `esus cleanup-objects`. Objects younger than a
  threshold are left alone: their write may still be committing.
- no stuck transaction (docs/TRANSACTIONS.md): every unfinished transaction record, lock, placeholder and
  pending item (history, Provenance, change-log, Provenance index, guard) belongs to a transaction whose
  lease has not ended. Those of a live transaction are counted (`in_transaction`) and their resources
  skipped; every other one is reported once per transaction, naming `esus recover-transactions`.

Streaming, in bounded memory (at most one Scan or listing page, or one resource's history page, at a time), in
four passes that need nothing from one another:

1. Resources, page by page. Per resource: Query its history partition (oldest first, a page at a
   time), look its Provenance records up through the Provenance `target` index partition of the
   resource (the keyed token of `T/id`, one Query per live key version, then the records in batches),
   and check the change-log and index
   items it names with batched key lookups. Memory per resource: one history page plus one count
   per version.
2. Provenance, page by page: every record decrypts, and the index items derived from it (tokens under
   the key version its `ikv` names) exist. That is what makes pass 1's lookup through the `target` index
   complete: a Provenance missing from its target partition is reported here. A record without `ikv` has
   items keyed by references in clear (written before tokens): reported, `esus reencrypt` moves them.
3. Index, page by page: each search index item's owner (the current item its sort key names, read
   keys-and-`idx` only) still lists it; those it does not are stale, except the young items of a version newer
   than the owner's (written beside a transaction less than an hour ago: the write may still be committing).
4. Objects, one listing page (1000 keys) at a time, under the tenant's prefix when one is given: each key names
   its version (tenant/type/id/version/digest), whose history and current items are read (keys and `obj` only)
   in batches.

The alternative, loading whole tables and joining them in memory, is what this replaces: it does not
scale with the data, and its one shared loop variable once made it check only one tenant.

Every problem is attributed to the tenant its key begins with; the report groups counts and problems
by tenant. A write that lands while a resource is checked can look like damage (a history version newer
than the current item read a moment before, an index item replaced): findings are re-checked against
the item as it is now before being reported, so `esus verify` can run against a live store.

Clients may also POST a Provenance that targets a version (an attestation added later). Only the write's
own record counts towards "exactly one": it is stored in the version's transaction with the version's
lastUpdated as its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from esus.container import Services
from esus.domain.compartment import compartment_patients
from esus.domain.fhir import PROVENANCE
from esus.domain.search_index import SearchKeys, index_owner, parse_sort_key, search_entry_from_ref
from esus.domain.search_params import params_for
from esus.model import IndexEntry, Version
from esus.security.crypto import IntegrityFailure
from esus.storage import items
from esus.storage.objects import StoredObject, object_tenant, parse_key, tenant_prefix
from esus.storage.store import (
    ALL_TYPES,
    change_log_partition,
    change_log_sort,
    index_sort_id,
    is_compartment_partition,
    key_tenant,
    resource_key,
    split_index_partition,
    split_resource_key,
    transaction_partition,
)

RECHECKS = 3  # a resource written this often while it is checked is reported as found
PROVENANCE_BATCH = 100
# An unreferenced object younger than this may belong to a write still on its way to its transaction (a request
# lives seconds: Lambda's timeout is 10 s). Older ones are orphans.
ORPHAN_MIN_AGE = timedelta(hours=1)


@dataclass
class TenantReport:
    resources: int = 0
    versions: int = 0
    provenances: int = 0
    index_items: int = 0
    stale_index_items: int = 0  # search items of older versions or failed writes: harmless, cleaned lazily
    repaired_index_items: int = 0  # with repair: missing items written plus stale items deleted
    objects: int = 0
    orphaned_objects: int = 0  # older than the threshold, pointed to by no item: left by writes that failed
    removed_objects: int = 0  # orphans removed (esus cleanup-objects)
    in_transaction: int = 0  # items of a large transaction in progress: skipped, checked once it settled
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    tenants: dict[str, TenantReport] = field(default_factory=dict)

    def tenant(self, name: str) -> TenantReport:
        return self.tenants.setdefault(name, TenantReport())

    def _total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.tenants.values())

    @property
    def resources(self) -> int:
        return self._total("resources")

    @property
    def versions(self) -> int:
        return self._total("versions")

    @property
    def provenances(self) -> int:
        return self._total("provenances")

    @property
    def index_items(self) -> int:
        return self._total("index_items")

    @property
    def objects(self) -> int:
        return self._total("objects")

    @property
    def orphaned_objects(self) -> int:
        return self._total("orphaned_objects")

    @property
    def problems(self) -> list[str]:
        return [p for name in sorted(self.tenants) for p in self.tenants[name].problems]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tenants.values())


def verify_all(services: Services, tenant: str | None = None, repair_index: bool = False,
               orphan_min_age: timedelta = ORPHAN_MIN_AGE) -> VerifyReport:
    """All tenants, or only `tenant`'s items (every key begins with the tenant). With `repair_index`,
    missing search index items are written (from `idx`) and stale ones deleted instead of reported.
    Unreferenced objects older than `orphan_min_age` are counted as orphaned; index items of a version newer than
    their resource's current one, written beside a transaction less than `orphan_min_age` ago, are left alone
    (their write may still be committing)."""
    checker = _Checker(services, tenant, repair_index)
    checker.check_resources()
    checker.check_provenance()
    checker.check_index(orphan_min_age)
    checker.check_objects(remove=False, min_age=orphan_min_age)
    checker.report_stuck()
    return checker.report


def cleanup_objects(services: Services, tenant: str | None = None, min_age: timedelta = ORPHAN_MIN_AGE,
                    remove: bool = True) -> VerifyReport:
    """Pass 4 alone: find (and with `remove`, delete) the orphaned objects of all tenants, or of `tenant`."""
    checker = _Checker(services, tenant, repair_index=False)
    checker.check_objects(remove=remove, min_age=min_age)
    return checker.report


@dataclass
class _WriteProvenance:
    """Per (version, lastUpdated), how many Provenance records target it (found via the target index):
    a version's own write record carries the version's lastUpdated."""

    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    undecodable: bool = False  # reported by the Provenance pass; the versions it targets are not judged


class _Checker:
    def __init__(self, services: Services, tenant: str | None, repair_index: bool) -> None:
        self.settings, self.store = services.settings, services.store
        self.resources, self.keyring = services.resources, services.keyring
        self.keys = SearchKeys(services.keyring, services.settings)
        self.only = tenant
        self.repair_index = repair_index
        self.report = VerifyReport()
        self.transactions = services.store.transactions
        self._live: dict[tuple[str, str], bool] = {}
        self._stuck: Counter[tuple[str, str]] = Counter()

    # ---------- large transactions (docs/TRANSACTIONS.md) ----------
    def _in_transaction(self, tenant: str, txid: str | None) -> bool:
        """Is the item locked by, or pending in, transaction `txid` (or is it an unfinished record)? Those of a
        live transaction are counted, the others noted as stuck. None: no transaction, False."""
        if txid is None:
            return False
        key = (tenant, txid)
        if key not in self._live:
            record = self.transactions.record(tenant, str(txid))
            self._live[key] = record is not None and not record.finished and \
                self.transactions.clock() < record.expires
        if self._live[key]:
            self.report.tenant(tenant).in_transaction += 1
        else:
            self._stuck[key] += 1
        return True

    def report_stuck(self) -> None:
        for (tenant, txid), count in sorted(self._stuck.items()):
            record = self.transactions.record(tenant, txid)
            if record is None:
                state = "no record"
            else:
                state = record.state + (", finished" if record.finished else ", lease ended")
            self.report.tenant(tenant).problems.append(
                f"stuck transaction {txid} ({state}): {count} item(s) locked or pending; run "
                "`esus recover-transactions`")

    # ---------- pass 1: resources, their history, Provenance, change log and index items ----------
    def check_resources(self) -> None:
        for page in self.store.scan_pages(self.settings.resources_table, self.only):
            for item in page:
                key = items.key(item)
                report = self.report.tenant(key_tenant(key))
                if self._in_transaction(key_tenant(key), items.lock(item)):
                    continue  # checked once its transaction settled
                if items.version_number(item) is None:
                    report.problems.append(f"{key}: a current item with neither a version nor a lock")
                    continue
                report.resources += 1
                problems, versions = self._resource(item)
                for _ in range(RECHECKS):
                    if not problems:
                        break
                    fresh = self._current_item(key)
                    if fresh is None or items.same_version(fresh, item):
                        break  # unchanged meanwhile: what was found is there
                    item = fresh
                    problems, versions = self._resource(item)
                report.versions += versions
                report.problems += problems

    def _current_item(self, key: str) -> dict[str, Any] | None:
        found = self.store.get_many(self.settings.resources_table, [items.current_key(key)])
        return found[0] if found else None

    def _resource(self, item: dict[str, Any]) -> tuple[list[str], int]:
        key = items.key(item)
        tenant, resource_type, resource_id = split_resource_key(key)
        current_number = items.version_number(item)
        assert current_number is not None, "only versioned current items are checked (locks are skipped)"
        problems: list[str] = []
        current = self._decode(tenant, resource_type, resource_id, item, f"{key} (current item)", problems)
        written = self._write_provenance(tenant, resource_type, resource_id)
        numbers: list[int] = []
        pending = False  # a version of a transaction not settled yet: the resource is checked once it settled
        for page in self.store.history_pages(tenant, resource_type, resource_id):
            change_log: list[tuple[int, str, tuple[str, str]]] = []
            for version_item in page:
                if self._in_transaction(tenant, items.lock(version_item)):
                    pending = True
                    continue
                number = items.history_number(version_item)
                numbers.append(number)
                version = self._decode(tenant, resource_type, resource_id, version_item, f"{key} v{number}", problems)
                if version is None:
                    continue
                count = written.counts[(number, version.last_updated)]
                if count != 1 and not (count == 0 and written.undecodable):
                    problems.append(f"{key} v{number}: {count} Provenance records (expected 1)")
                sort = change_log_sort(version)
                change_log += [(number, level, (change_log_partition(tenant, level), sort))
                               for level in (ALL_TYPES, resource_type)]
                if number == current_number and current is not None and _content(version) != _content(current):
                    problems.append(f"{key}: current item differs from history v{current_number}")
            present = self._index_present(key for _, _, key in change_log)
            problems += [f"{key} v{number}: missing from the {level} change log"
                         for number, level, index_key in change_log if index_key not in present]
        if pending:
            return [], len(numbers)
        if numbers != list(range(1, current_number + 1)):
            problems.insert(0, f"{key}: history versions {numbers} are not 1..{current_number}")
        refs = items.index_refs(item)
        entries = [search_entry_from_ref(ref) for ref in refs]
        present = self._index_present((e.partition, e.sort) for e in entries)
        missing = [e for e in entries if (e.partition, e.sort) not in present]
        if missing and self.repair_index:
            self.store.put_index_items(missing)
            self.report.tenant(tenant).repaired_index_items += len(missing)
        else:
            problems += [f"{key}: index item {e.partition} is missing (esus verify --repair-index writes it)"
                         for e in missing]
        if current is not None and current.resource is not None:
            # Only an otherwise sound resource is reindexed: a repair must not re-seal a current item found damaged.
            problems += self._unlisted_index(key, tenant, current, item, repair=self.repair_index and not problems)
        return problems, len(numbers)

    def _unlisted_index(self, key: str, tenant: str, current: Version, item: dict[str, Any],
                        repair: bool) -> list[str]:
        """`idx` must list every index item the content needs. Items of a kind added since the version was written (a
        patient's compartment) are unlisted too: `--repair-index` writes them and gives the current item the
        complete `idx` (conditioned on its version). Tokens carry their key version, so under an older key only
        the compartment items can be counted (the rest is compared once `esus reencrypt` moved it; a repair moves
        it now, as `esus reencrypt` would)."""
        listed = set(items.index_refs(item))
        current_kv = self.keyring.current_version()
        old_key = any(_sealed_key(ref) and not _sealed_key(ref).startswith(f"k{current_kv}.") for ref in listed)
        if old_key:
            needed_members = len(compartment_patients(current.resource_type, current.resource or {}))
            listed_members = sum(is_compartment_partition(IndexEntry.from_ref(ref).partition) for ref in listed)
            unlisted = max(0, needed_members - listed_members)
        else:
            unlisted = len({e.ref for e in self.resources.index_entries(tenant, current)} - listed)
        if not unlisted:
            return []
        if repair:
            table, entries = self.settings.resources_table, self.resources.index_entries
            done = (self.store.reencrypt_version_item(table, item, current_kv, entries) if old_key
                    else self.store.complete_index(item, entries))
            if done:
                self.report.tenant(tenant).repaired_index_items += unlisted
                return []
        return [f"{key}: idx does not list {unlisted} index item(s) its content needs (esus verify "
                "--repair-index adds them)"]

    def _decode(self, tenant: str, resource_type: str, resource_id: str, item: dict[str, Any], label: str,
                problems: list[str]) -> Version | None:
        try:
            return self.store.decode_version(tenant, resource_type, resource_id, item)
        except IntegrityFailure as exc:
            problems.append(f"{label}: {exc}")
            return None

    def _write_provenance(self, tenant: str, resource_type: str, resource_id: str) -> _WriteProvenance:
        """The Provenance records of every version of one resource, through its `target` index partition."""
        found = _WriteProvenance()
        # The target's keyed token under every live key version (a record being re-encrypted may briefly
        # be in two partitions: ids are counted once).
        partitions = self.keys.provenance_partitions(tenant, "target", f"{resource_type}/{resource_id}")
        ids = sorted({index_sort_id(sort) for p in partitions for sort in self.store.index_sort_keys(p)})
        prefix = f"{resource_type}/{resource_id}/_history/"
        for start in range(0, len(ids), PROVENANCE_BATCH):
            keys = [items.current_key(resource_key(tenant, PROVENANCE, i)) for i in ids[start:start + PROVENANCE_BATCH]]
            for item in self.store.get_many(self.settings.provenance_table, keys):
                try:
                    record = self.store.decode_provenance(tenant, item)
                except IntegrityFailure:
                    found.undecodable = True
                    continue
                last_updated = str((record.get("meta") or {}).get("lastUpdated"))
                for target in record.get("target") or ():
                    reference = str(target.get("reference", "")) if isinstance(target, dict) else ""
                    number = reference.removeprefix(prefix)
                    if reference.startswith(prefix) and number.isdigit():
                        found.counts[(int(number), last_updated)] += 1
        return found

    # ---------- pass 2: Provenance records decrypt and are indexed ----------
    def check_provenance(self) -> None:
        for page in self.store.scan_pages(self.settings.provenance_table, self.only):
            wanted: list[tuple[str, IndexEntry]] = []
            for item in page:
                key = items.key(item)
                tenant = key_tenant(key)
                report = self.report.tenant(tenant)
                if self._in_transaction(tenant, items.lock(item)):
                    continue
                report.provenances += 1
                if items.index_key_version(item) is None:
                    report.problems.append(f"{key}: its index items name references in clear (written before "
                                           "keyed tokens; esus reencrypt moves them)")
                try:
                    record = self.store.decode_provenance(tenant, item)
                    entries = self.resources.provenance_index(tenant, record, items.recorded(item),
                                                              items.index_key_version(item))
                except IntegrityFailure as exc:
                    report.problems.append(f"{key}: {exc}")
                    continue
                wanted += [(key, entry) for entry in entries]
            present = self._index_present((e.partition, e.sort) for _, e in wanted)
            for key, entry in wanted:
                if (entry.partition, entry.sort) not in present:
                    self.report.tenant(key_tenant(key)).problems.append(
                        f"{key}: index item {entry.partition} is missing")

    # ---------- pass 3: search index items a current version no longer lists are stale ----------
    def check_index(self, orphan_min_age: timedelta = ORPHAN_MIN_AGE) -> None:
        for page in self.store.scan_pages(self.settings.index_table, self.only):
            searchable: list[IndexEntry] = []
            young: dict[str, int] = {}  # ref -> when written, for items written beside a transaction
            for item in page:
                partition, sort = items.key(item), items.sort(item)
                tenant = key_tenant(partition)
                self.report.tenant(tenant).index_items += 1
                if partition == transaction_partition(tenant):
                    if not items.finished(item):  # an unfinished record (its sort key is its id): live, or stuck
                        self._in_transaction(tenant, sort)
                    continue
                if self._in_transaction(tenant, items.lock(item)):
                    continue
                if is_search_partition(partition):
                    entry = IndexEntry(partition, sort, index_owner(partition, sort)[1])
                    searchable.append(entry)
                    if (written := items.written(item)) is not None:
                        young[entry.ref] = written
            stale = self._unowned(searchable, young, orphan_min_age)
            if stale and self.repair_index:
                self.store.delete_index_items([e.ref for e in stale])
            for entry in stale:
                tenant_report = self.report.tenant(key_tenant(entry.partition))
                tenant_report.stale_index_items += 1
                tenant_report.repaired_index_items += int(self.repair_index)

    def _unowned(self, entries: list[IndexEntry], written: dict[str, int], min_age: timedelta) -> list[IndexEntry]:
        """The entries no current item lists. Left out: those of a locked owner (its pending version may own
        items its current `idx` does not list yet), and those of a version newer than the owner's current one
        written beside a transaction less than `min_age` ago (its write may still be committing)."""
        def owner(entry: IndexEntry) -> str:
            return resource_key(key_tenant(entry.partition), *index_owner(entry.partition, entry.sort))

        owners = self.store.get_many(self.settings.resources_table, [items.current_key(owner(e)) for e in entries],
                                     attributes=items.OWNER_ATTRIBUTES)
        owned = {(items.key(o), ref) for o in owners for ref in items.index_refs(o)}
        locked = {items.key(o) for o in owners if items.lock(o) is not None}
        versions = {items.key(o): items.version_number(o) or 0 for o in owners}
        young_since = datetime.now(UTC).timestamp() - min_age.total_seconds()

        def in_flight(entry: IndexEntry) -> bool:
            return written.get(entry.ref, 0) > young_since and \
                parse_sort_key(entry.sort)[1] > versions.get(owner(entry), 0)

        return [e for e in entries
                if (owner(e), e.ref) not in owned and owner(e) not in locked and not in_flight(e)]

    # ---------- pass 4: every object is a version's body ----------
    def check_objects(self, remove: bool, min_age: timedelta) -> None:
        objects = self.store.objects
        for page in objects.pages(tenant_prefix(self.only) if self.only is not None else ""):
            now = datetime.now(UTC)
            orphans = [o for o in self._unreferenced(page) if now - o.last_modified >= min_age]
            for stored in page:
                self.report.tenant(object_tenant(stored.key)).objects += 1
            for stored in orphans:
                self.report.tenant(object_tenant(stored.key)).orphaned_objects += 1
            if remove and orphans:
                objects.delete([o.key for o in orphans])
                for stored in orphans:
                    self.report.tenant(object_tenant(stored.key)).removed_objects += 1

    def _unreferenced(self, page: list[StoredObject]) -> list[StoredObject]:
        """The objects of `page` no item points to: neither their version's history item nor the current item
        (re-encryption re-seals the two separately, so after it they can point to different objects)."""
        versions = {o.key: parse_key(o.key) for o in page}
        history_keys, current_keys = [], []
        for parts in versions.values():
            if parts is not None:
                tenant, resource_type, resource_id, number, _ = parts
                history_keys.append(items.history_key(resource_key(tenant, resource_type, resource_id), number))
                current_keys.append(items.current_key(resource_key(tenant, resource_type, resource_id)))
        found = [*self.store.get_many(self.settings.history_table, history_keys, attributes=items.OBJECT_ATTRIBUTES),
                 *self.store.get_many(self.settings.resources_table, current_keys, attributes=items.OBJECT_ATTRIBUTES)]
        referenced = {items.object_key(item) for item in found} - {None}
        return [o for o in page if o.key not in referenced]

    def _index_present(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = [items.index_key(partition, sort) for partition, sort in keys]
        if not wanted:
            return set()
        found = self.store.get_many(self.settings.index_table, wanted, attributes=items.KEY_ATTRIBUTES)
        return {(items.key(i), items.sort(i)) for i in found}


def is_search_partition(partition: str) -> bool:
    """tenant|Type|param|key of a search parameter of a resource type, or a patient's compartment (Provenance keeps
    its own index, checked with the Provenance records; change-log and guard partitions are not search items)."""
    parts = split_index_partition(partition)
    return parts is not None and parts[1] != PROVENANCE and (
        parts[2] in params_for(parts[1]) or is_compartment_partition(partition))


def _sealed_key(ref: str) -> str:
    """The HMAC token (`k<version>.<hex>`) of a search index or compartment ref on sealed values, else ""."""
    partition = IndexEntry.from_ref(ref).partition
    parts = split_index_partition(partition)
    if parts is None:
        return ""
    param = params_for(parts[1]).get(parts[2])
    return parts[3] if is_compartment_partition(partition) or (param is not None and not param.clear) else ""


def _content(version: Version) -> tuple[Any, ...]:
    return version.version, version.deleted, version.last_updated, version.resource
