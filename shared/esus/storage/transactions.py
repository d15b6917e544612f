"""The large-transaction protocol (docs/TRANSACTIONS.md): a transaction record is the single commit point;
current items are locked and every new item is staged in a pending state first, then all are rolled
forward (or back). Writers that meet a lock and the sweeper complete transactions whose lease ended;
readers only resolve locks (esus.storage.store). Like store.py, this module knows item layouts."""

from __future__ import annotations

import contextvars
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from esus.model import IndexEntry, ResourceWrite, Version
from esus.settings import Settings
from esus.storage.errors import Locked, TransactionAborted, TransactionBusy, TransientConflict, WriteConflict
from esus.storage.store import (
    ABORTED,
    BATCH_WRITE_LIMIT,
    COMMITTED,
    PENDING,
    TRANSACTION_ITEM_LIMIT,
    Store,
    _av,
    _item,
    _plain,
    change_log_entries,
    resource_key,
    transaction_partition,
)
from esus.storage.write_plan import current_from_history, index_item, index_key

log = logging.getLogger(__name__)

WORKERS = 16  # concurrent DynamoDB calls per wave (the client's connection pool is sized to match)
CHUNK_BYTES = 3_500_000  # TransactWriteItems takes at most 4 MB
FINISHED_RECORD_SECONDS = 86_400  # a finished record is kept a day (readers met its items), then TTL removes it
ROLL_FORWARD_ATTEMPTS = 3


@dataclass(frozen=True)
class EntryRef:
    """One entry of a transaction, as its record lists it: enough to find every item it writes."""

    resource_type: str
    resource_id: str
    version: int
    last_updated: str
    provenance_id: str
    created: bool  # a placeholder current item was written (the resource did not exist)
    deleted: bool
    guard: str = ""  # the ifNoneExist guard partition it takes, if any
    guard_prev: str = ""  # the owner that guard named before

    def line(self) -> str:
        flags = ("c" if self.created else "") + ("d" if self.deleted else "")
        return "\t".join((f"{self.resource_type}/{self.resource_id}", str(self.version), self.last_updated,
                          self.provenance_id, flags, self.guard, self.guard_prev))

    @classmethod
    def parse(cls, line: str) -> EntryRef:
        reference, version, last_updated, provenance_id, flags, guard, guard_prev = line.split("\t")
        resource_type, resource_id = reference.split("/", 1)
        return cls(resource_type, resource_id, int(version), last_updated, provenance_id, "c" in flags,
                   "d" in flags, guard, guard_prev)

    def change_log(self, tenant: str) -> list[IndexEntry]:
        return change_log_entries(tenant, Version(
            resource_type=self.resource_type, resource_id=self.resource_id, version=self.version,
            last_updated=self.last_updated, deleted=self.deleted, resource=None))


@dataclass(frozen=True)
class Record:
    tenant: str
    txid: str
    state: str
    expires: int
    finished: bool
    entries: tuple[EntryRef, ...]


@dataclass
class _Staged:
    ref: EntryRef
    pk: str
    conditional: list[dict[str, Any]]  # TransactWriteItems operations: lock, pending history item, guard
    history: dict[str, Any]  # plain items from here on
    provenance: dict[str, Any]
    marked: list[dict[str, Any]]  # pending change-log and Provenance index items
    index: list[dict[str, Any]]  # search index items: unmarked (searches re-check the current version)
    size: int


@dataclass
class SweepReport:
    rolled_forward: int = 0
    rolled_back: int = 0
    live: int = 0  # unfinished, but within their lease: left alone
    transactions: list[str] = field(default_factory=list)


_pool: ThreadPoolExecutor | None = None


def _run_all(calls: Sequence[Callable[[], Any]]) -> list[BaseException | None]:
    """Run concurrently, wait for all (no work outlives the request); each call's exception or None."""
    global _pool
    if len(calls) <= 1:
        errors: list[BaseException | None] = []
        for call in calls:
            try:
                call()
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, which decides
                errors.append(exc)
        return errors
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="esus-txn")
    futures = [_pool.submit(contextvars.copy_context().run, call) for call in calls]
    wait(futures)
    return [f.exception() for f in futures]


def _raise_first(errors: Sequence[BaseException | None]) -> None:
    for error in errors:
        if error is not None:
            raise error


class TransactionStore:
    def __init__(self, store: Store, settings: Settings, dynamodb: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._s = settings
        self._ddb = dynamodb
        self.clock = clock

    @property
    def lease(self) -> int:
        return self._s.transaction_lease_seconds

    # ---------- the writer ----------
    def commit(self, tenant: str, writes: Sequence[tuple[ResourceWrite, str]]) -> str:
        """All of `writes` (each with its Provenance's recorded key) or none; returns the transaction id.
        Raises a WriteConflict (VersionConflict, TransactionBusy, TransactionAborted) when it had to abort."""
        txid = str(uuid.uuid4())
        started = self.clock()
        expires = math.ceil(started + self.lease)
        staged = [self._staged(txid, write, recorded_key) for write, recorded_key in writes]
        self._put_record(tenant, txid, expires, [s.ref.line() for s in staged])
        failure = self._first_failure(self._stage_calls(staged))
        if failure is None and self.clock() > started + self.lease / 2:
            failure = TransactionAborted("The transaction took too long to stage")
        if failure is None:
            try:
                self._commit_record(tenant, txid)
            except Exception as exc:  # noqa: BLE001 - settled just below
                failure = exc
        if failure is not None and self._abandon(tenant, txid, staged):
            if isinstance(failure, Locked):
                raise TransactionBusy() from None
            raise failure
        # Committed: the transaction has happened, whatever follows. Roll-forward errors are left to recovery
        # (readers already see every entry through the record).
        histories = {s.pk: s.history for s in staged}
        provenances = {s.ref.provenance_id: s.provenance for s in staged}
        for attempt in range(ROLL_FORWARD_ATTEMPTS):
            try:
                self._roll_forward(tenant, txid, expires, [s.ref for s in staged], histories, provenances)
                break
            except Exception:  # noqa: BLE001 - committed: recovery completes it
                log.warning("roll-forward of a committed transaction failed (attempt %d); recovery completes it",
                            attempt + 1)
                time.sleep(0.05 * 2**attempt)
        return txid

    def _staged(self, txid: str, write: ResourceWrite, recorded_key: str) -> _Staged:
        s, v = self._s, write.version
        plan = self._store.write_plan(write, recorded_key)
        pk = plan.pk
        # The pending history item lists `idx` too: the roll-forward makes the current item from it.
        history = {**plan.history, "idx": plan.index_refs or None, "tx": txid}
        ops: list[dict[str, Any]] = []
        if write.expected_version is None:
            ops.append({"Put": {"TableName": s.resources_table, "Item": _item({"pk": pk, "tx": txid, "txv": v.version}),
                                "ConditionExpression": "attribute_not_exists(pk)",
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}})
        else:
            condition = "v = :e AND attribute_not_exists(tx)"
            values = {":e": _av(write.expected_version), ":x": _av(txid), ":nv": _av(v.version)}
            names: dict[str, str] = {}
            if write.expected_deleted is not None:
                condition += " AND #d = :d"
                values[":d"] = _av(write.expected_deleted)
                names["#d"] = "del"
            ops.append({"Update": {"TableName": s.resources_table, "Key": {"pk": _av(pk)},
                                   "UpdateExpression": "SET tx = :x, txv = :nv", "ConditionExpression": condition,
                                   "ExpressionAttributeValues": values, **({"ExpressionAttributeNames": names}
                                                                           if names else {}),
                                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}})
        ops.append({"Put": {"TableName": s.history_table, "Item": _item(history),
                            "ConditionExpression": "attribute_not_exists(pk)",
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}})
        guard, guard_prev = "", ""
        if plan.guard is not None:  # `prev`: whom a roll-back gives the guard back to
            guard, guard_prev = str(plan.guard["pk"]), plan.guard_stale or ""
            ops.append(self._store.guard_put({**plan.guard, "tx": txid, "prev": plan.guard_stale}, plan.guard_stale))
        provenance = {**plan.provenance, "tx": txid, "pidx": [e.ref for e in plan.provenance_index] or None}
        marked = [{**index_item(e), "tx": txid} for e in (*plan.change_log, *plan.provenance_index)]
        ref = EntryRef(v.resource_type, v.resource_id, v.version, v.last_updated, str(write.provenance["id"]),
                       write.expected_version is None, v.deleted, guard, guard_prev)
        size = len(history.get("doc") or "") + sum(len(b) for b in (history.get("phi") or {}).values()) + 1024
        search = [index_item(e) for e in (*plan.search_index, *plan.deferred_index)]
        return _Staged(ref, pk, ops, history, provenance, marked, search, size)

    def _put_record(self, tenant: str, txid: str, expires: int, lines: list[str]) -> None:
        self._ddb.put_item(
            TableName=self._s.index_table, ConditionExpression="attribute_not_exists(pk)",
            Item=_item({"pk": transaction_partition(tenant), "sk": txid, "st": PENDING, "exp": expires,
                        "ents": lines, "n": len(lines)}))

    def _stage_calls(self, staged: Sequence[_Staged]) -> list[BaseException | None]:
        """One wave: the conditional items in TransactWriteItems chunks (an entry never split), everything
        else (pending Provenance and change-log items, index items) in BatchWriteItem calls."""
        chunks: list[list[dict[str, Any]]] = [[]]
        chunk_bytes = 0
        for entry in staged:
            if len(chunks[-1]) + len(entry.conditional) > TRANSACTION_ITEM_LIMIT or \
                    chunk_bytes + entry.size > CHUNK_BYTES:
                chunks.append([])
                chunk_bytes = 0
            chunks[-1] += entry.conditional
            chunk_bytes += entry.size
        s = self._s
        puts = [(s.provenance_table, e.provenance) for e in staged]
        puts += [(s.index_table, item) for e in staged for item in (*e.marked, *e.index)]
        calls: list[Callable[[], Any]] = [partial(self._transact_chunk, chunk) for chunk in chunks if chunk]
        calls += self._batch_calls([(table, {"PutRequest": {"Item": _item(item)}}) for table, item in puts])
        return _run_all(calls)

    def _transact_chunk(self, operations: list[dict[str, Any]]) -> None:
        token = str(uuid.uuid4())
        for attempt in range(4):
            try:
                self._store.transact(operations, token)
                return
            except TransientConflict:
                time.sleep(random.uniform(0, 0.02 * 2**attempt))
        raise TransactionAborted("A concurrent transaction touched the same items")

    @staticmethod
    def _first_failure(errors: Sequence[BaseException | None]) -> BaseException | None:
        """The failure to report: a conflict of a concurrent writer before anything else."""
        failures = [e for e in errors if e is not None]
        for kind in (Locked, WriteConflict):
            for failure in failures:
                if isinstance(failure, kind):
                    return failure
        return failures[0] if failures else None

    def _commit_record(self, tenant: str, txid: str) -> None:
        """THE commit point: pending -> committed, only while the first half of the lease lasts (so no
        committer is alive when others may decide after the lease)."""
        try:
            self._ddb.update_item(
                TableName=self._s.index_table, Key=self._record_key(tenant, txid),
                UpdateExpression="SET #s = :c, ct = :now", ConditionExpression="#s = :p AND #e > :latest",
                ExpressionAttributeNames={"#s": "st", "#e": "exp"},
                ExpressionAttributeValues={":c": _av(COMMITTED), ":p": _av(PENDING),
                                           ":now": _av(math.floor(self.clock())),
                                           ":latest": _av(math.floor(self.clock() + self.lease / 2))})
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise TransactionAborted("The transaction was aborted before it could commit") from None
            record = self.record(tenant, txid)  # the outcome of a failed call is unknown: look
            if record is None or record.state != COMMITTED:
                raise

    def _abandon(self, tenant: str, txid: str, staged: Sequence[_Staged]) -> bool:
        """Abort this committer's own transaction and roll it back. False when it turns out committed (a
        commit call whose answer was lost). What fails here recovery finishes: an aborted record can be
        rolled back by anyone at once, a pending one after its lease."""
        try:
            if not self._set_aborted(tenant, txid, expired_only=False):
                record = self.record(tenant, txid)
                return record is None or record.state != COMMITTED
        except Exception:  # noqa: BLE001 - the request fails anyway; the record is not committed
            log.warning("aborting a transaction failed; recovery completes it after its lease")
            return True
        try:
            self._roll_back(tenant, txid, [s.ref for s in staged], {s.ref.provenance_id: s.provenance for s in staged})
        except Exception:  # noqa: BLE001 - the record says aborted: anyone may finish the roll-back
            log.warning("roll-back of an aborted transaction failed; recovery completes it")
        return True

    def _set_aborted(self, tenant: str, txid: str, expired_only: bool) -> bool:
        condition = "#s = :p AND #e < :now" if expired_only else "#s = :p"
        values = {":a": _av(ABORTED), ":p": _av(PENDING)}
        if expired_only:
            values[":now"] = _av(math.floor(self.clock()))
        try:
            self._ddb.update_item(
                TableName=self._s.index_table, Key=self._record_key(tenant, txid), UpdateExpression="SET #s = :a",
                ConditionExpression=condition, ExpressionAttributeNames={"#s": "st", "#e": "exp"}
                if expired_only else {"#s": "st"}, ExpressionAttributeValues=values)
            return True
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            record = self.record(tenant, txid)
            return record is not None and record.state == ABORTED

    # ---------- roll forward and back (idempotent; the committer, writers and the sweeper) ----------
    def _roll_forward(self, tenant: str, txid: str, expires: int, refs: Sequence[EntryRef],
                      histories: dict[str, dict[str, Any]], provenances: dict[str, dict[str, Any]]) -> None:
        s = self._s
        tag = {"ltx": txid, "ltxe": expires}
        calls: list[Callable[[], Any]] = []
        for ref in refs:  # wave A: current items (from the pending history items) and guards
            pk = resource_key(tenant, ref.resource_type, ref.resource_id)
            history = histories.get(pk)
            if history is not None and history.get("tx") == txid:
                final = current_from_history(history)
                calls.append(partial(self._put_if_locked, s.resources_table, {**final, **tag}, txid))
            if ref.guard:
                calls.append(partial(self._release_guard, ref.guard, txid, None, keep=True))
        _raise_first(_run_all(calls))
        # wave B: the markers go (the same bytes without `tx`); then the record is finished
        puts = [(s.history_table, {**_without(h, "tx", "idx"), **tag}) for h in histories.values()
                if h.get("tx") == txid]
        marked_provenances = [p for p in provenances.values() if p.get("tx") == txid]
        # `pidx` stays on the record: a crash in this wave must not lose where its index items are
        puts += [(s.provenance_table, {**_without(p, "tx"), **tag}) for p in marked_provenances]
        puts += [(s.index_table, {**index_item(IndexEntry.from_ref(str(ref))), **tag})
                 for p in marked_provenances for ref in p.get("pidx") or ()]
        puts += [(s.index_table, {**index_item(entry), **tag}) for ref in refs for entry in ref.change_log(tenant)]
        _raise_first(_run_all(self._batch_calls(
            [(table, {"PutRequest": {"Item": _item(item)}}) for table, item in puts])))
        self._finish(tenant, txid)

    def _roll_back(self, tenant: str, txid: str, refs: Sequence[EntryRef],
                   provenances: dict[str, dict[str, Any]] | None) -> None:
        s = self._s
        if provenances is None:
            keys = [{"pk": resource_key(tenant, "Provenance", r.provenance_id)} for r in refs]
            provenances = {str(p["pk"]).rsplit("|", 1)[1]: p for p in self._store.get_many(s.provenance_table, keys)}
        # wave 1, while the locks still hold the versions' keys: pending items go
        calls: list[Callable[[], Any]] = []
        for ref in refs:
            pk = resource_key(tenant, ref.resource_type, ref.resource_id)
            calls.append(partial(self._delete_if_marked, s.history_table, {"pk": pk, "v": ref.version}, txid))
            calls += [partial(self._delete_if_marked, s.index_table, index_key(entry), txid)
                      for entry in ref.change_log(tenant)]
        deletes: list[tuple[str, dict[str, Any]]] = []
        for ref in refs:
            record = provenances.get(ref.provenance_id)
            if record is not None and record.get("tx") == txid:
                deletes += [(s.index_table, index_key(IndexEntry.from_ref(str(r)))) for r in record.get("pidx") or ()]
                deletes.append((s.provenance_table, {"pk": record["pk"]}))
        calls += self._batch_calls([(table, {"DeleteRequest": {"Key": _item(key)}}) for table, key in deletes])
        _raise_first(_run_all(calls))
        # wave 2: locks, placeholders and guards are released
        calls = []
        for ref in refs:
            pk = resource_key(tenant, ref.resource_type, ref.resource_id)
            if ref.created:
                calls.append(partial(self._delete_if_marked, s.resources_table, {"pk": pk}, txid))
            else:
                calls.append(partial(self._unlock, pk, txid))
            if ref.guard:
                calls.append(partial(self._release_guard, ref.guard, txid, ref.guard_prev or None, keep=False))
        _raise_first(_run_all(calls))
        self._finish(tenant, txid)

    def _finish(self, tenant: str, txid: str) -> None:
        try:
            self._ddb.update_item(
                TableName=self._s.index_table, Key=self._record_key(tenant, txid),
                UpdateExpression="SET #f = :t, #t = :ttl REMOVE ents", ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#f": "fin", "#t": "ttl"},
                ExpressionAttributeValues={":t": _av(True),
                                           ":ttl": _av(math.ceil(self.clock()) + FINISHED_RECORD_SECONDS)})
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    def _put_if_locked(self, table: str, item: dict[str, Any], txid: str) -> None:
        self._conditional(self._ddb.put_item, TableName=table, Item=_item(item), ConditionExpression="tx = :x",
                          ExpressionAttributeValues={":x": _av(txid)})

    def _delete_if_marked(self, table: str, key: dict[str, Any], txid: str) -> None:
        self._conditional(self._ddb.delete_item, TableName=table, Key=_item(key), ConditionExpression="tx = :x",
                          ExpressionAttributeValues={":x": _av(txid)})

    def _unlock(self, pk: str, txid: str) -> None:
        self._conditional(self._ddb.update_item, TableName=self._s.resources_table, Key={"pk": _av(pk)},
                          UpdateExpression="REMOVE tx, txv", ConditionExpression="tx = :x",
                          ExpressionAttributeValues={":x": _av(txid)})

    def _release_guard(self, partition: str, txid: str, previous: str | None, keep: bool) -> None:
        """Committed (`keep`): the guard stays with its new owner. Rolled back: the previous owner again,
        or no guard at all."""
        key = {"pk": _av(partition), "sk": _av("-")}
        values = {":x": _av(txid)}
        if keep or previous is not None:
            expression = "REMOVE tx, prev"
            if not keep:
                expression = "SET rid = :prev REMOVE tx, prev"
                values[":prev"] = _av(previous)
            self._conditional(self._ddb.update_item, TableName=self._s.index_table, Key=key,
                              UpdateExpression=expression, ConditionExpression="tx = :x",
                              ExpressionAttributeValues=values)
        else:
            self._conditional(self._ddb.delete_item, TableName=self._s.index_table, Key=key,
                              ConditionExpression="tx = :x", ExpressionAttributeValues=values)

    @staticmethod
    def _conditional(call: Callable[..., Any], **kwargs: Any) -> None:
        """A step on `tx = :x`: when the condition fails, the step was done already (or never needed)."""
        try:
            call(**kwargs)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    def _batch_calls(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Callable[[], Any]]:
        return [partial(self._batch_write, requests[i : i + BATCH_WRITE_LIMIT])
                for i in range(0, len(requests), BATCH_WRITE_LIMIT)]

    def _batch_write(self, requests: list[tuple[str, dict[str, Any]]]) -> None:
        pending: dict[str, list[dict[str, Any]]] = {}
        for table, request in requests:
            pending.setdefault(table, []).append(request)
        for attempt in range(8):
            pending = self._ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                return
            time.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "batch write"}},
                          "BatchWriteItem")

    def _get(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        item = self._ddb.get_item(TableName=table, Key=_item(key), ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    # ---------- records ----------
    def _record_key(self, tenant: str, txid: str) -> dict[str, Any]:
        return {"pk": _av(transaction_partition(tenant)), "sk": _av(txid)}

    def record(self, tenant: str, txid: str) -> Record | None:
        response = self._ddb.get_item(TableName=self._s.index_table, Key=self._record_key(tenant, txid),
                                      ConsistentRead=True)
        item = response.get("Item")
        return _record(_plain(item)) if item else None

    def unfinished(self, tenant: str | None = None) -> Iterator[Record]:
        """Every record not finished yet (one Query per tenant, or a Scan of the index table)."""
        kwargs: dict[str, Any] = {"TableName": self._s.index_table, "ConsistentRead": True}
        if tenant is not None:
            kwargs.update(KeyConditionExpression="pk = :pk", FilterExpression="attribute_not_exists(#f)",
                          ExpressionAttributeNames={"#f": "fin"},
                          ExpressionAttributeValues={":pk": _av(transaction_partition(tenant))})
            call = self._ddb.query
        else:
            kwargs.update(FilterExpression="attribute_exists(#s) AND attribute_not_exists(#f)",
                          ExpressionAttributeNames={"#s": "st", "#f": "fin"})
            call = self._ddb.scan
        while True:
            page = call(**kwargs)
            for item in page.get("Items", []):
                plain = _plain(item)
                if str(plain["pk"]).endswith("|_txn"):
                    yield _record(plain)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # ---------- writers that meet a lock, and the sweeper ----------
    def resolve(self, locked: Locked) -> None:
        """A write met `locked`: settle what can be settled so the write can be retried. Raises
        TransactionBusy while the transaction is pending within its lease."""
        record = self.record(locked.tenant, locked.txid)
        if record is None or record.finished:
            self._release_stray(locked)  # a lock left by a transaction that is over: it never committed it
            return
        if record.state == PENDING:
            if self.clock() < record.expires:
                raise TransactionBusy()
            self._set_aborted(record.tenant, record.txid, expired_only=True)
            record = self.record(locked.tenant, locked.txid) or record
        if record.state == COMMITTED and self.clock() < record.expires:
            self._roll_forward_one(locked)  # the committer is finishing: move this one item on
            return
        self.recover(record.tenant, record.txid, force=True)

    def _roll_forward_one(self, locked: Locked) -> None:
        s = self._s
        if locked.table == s.index_table:  # a guard
            self._release_guard(str(locked.key["pk"]), locked.txid, None, keep=True)
            return
        current = self._get(s.resources_table, {"pk": locked.key["pk"]})
        if current is None or current.get("tx") != locked.txid:
            return
        history = self._get(s.history_table, {"pk": locked.key["pk"], "v": current["txv"]})
        if history is not None and history.get("tx") == locked.txid:
            final = current_from_history(history)
            record = self.record(locked.tenant, locked.txid)
            expires = record.expires if record else math.ceil(self.clock())
            self._put_if_locked(s.resources_table, {**final, "ltx": locked.txid, "ltxe": expires}, locked.txid)

    def _release_stray(self, locked: Locked) -> None:
        s = self._s
        if locked.table == s.index_table:
            guard = self._get(s.index_table, locked.key)
            if guard is not None and guard.get("tx") == locked.txid:
                self._release_guard(str(locked.key["pk"]), locked.txid, guard.get("prev"), keep=False)
            return
        found = self._get(s.resources_table, {"pk": locked.key["pk"]})
        if found is not None and found.get("tx") == locked.txid:
            if "v" in found:
                self._unlock(str(locked.key["pk"]), locked.txid)
            else:
                self._delete_if_marked(s.resources_table, {"pk": locked.key["pk"]}, locked.txid)

    def recover(self, tenant: str, txid: str, force: bool = False) -> str:
        """Complete one transaction: roll forward if committed, else abort and roll back. Without `force`
        only once its lease ended (a live committer is left alone). Returns what it found."""
        record = self.record(tenant, txid)
        if record is None or record.finished:
            return "finished"
        if not force and self.clock() < record.expires:
            return "live"
        if record.state == PENDING:
            if not self._set_aborted(tenant, txid, expired_only=not force):
                record = self.record(tenant, txid) or record
            else:
                record = Record(tenant, txid, ABORTED, record.expires, False, record.entries)
        if record.state == COMMITTED:
            keys = [{"pk": resource_key(tenant, r.resource_type, r.resource_id), "v": r.version}
                    for r in record.entries]
            histories = {str(h["pk"]): h for h in self._store.get_many(self._s.history_table, keys)}
            pkeys = [{"pk": resource_key(tenant, "Provenance", r.provenance_id)} for r in record.entries]
            provenances = {str(p["pk"]): p for p in self._store.get_many(self._s.provenance_table, pkeys)}
            self._roll_forward(tenant, txid, record.expires, record.entries, histories, provenances)
            return COMMITTED
        if record.state == ABORTED:
            self._roll_back(tenant, txid, record.entries, None)
            return ABORTED
        return record.state

    def sweep(self, tenant: str | None = None) -> SweepReport:
        """`esus recover-transactions`: complete every unfinished transaction whose lease ended."""
        report = SweepReport()
        for record in list(self.unfinished(tenant)):
            outcome = self.recover(record.tenant, record.txid)
            if outcome == "live":
                report.live += 1
                continue
            report.transactions.append(f"{record.tenant} {record.txid} {outcome}")
            report.rolled_forward += outcome == COMMITTED
            report.rolled_back += outcome == ABORTED
        return report


def _record(item: dict[str, Any]) -> Record:
    tenant = str(item["pk"]).rsplit("|", 1)[0]
    entries = tuple(EntryRef.parse(str(line)) for line in item.get("ents") or ())
    return Record(tenant, str(item["sk"]), str(item["st"]), int(item["exp"]), bool(item.get("fin")), entries)


def _without(item: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in names}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
