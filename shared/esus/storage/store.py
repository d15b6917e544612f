"""DynamoDB adapter: the only module that knows table layouts. Every key begins with the tenant.

resources  pk=tenant|type|id                 current version (v, del, lu, doc, phi, idx)
history    pk=tenant|type|id, v=version      one item per version, never rewritten
A version whose sealed body does not fit an item (and every Binary) keeps it in the object store
(esus.storage.objects): the items then hold obj (the object's key), sha (its SHA-256) and okv (the key
versions it is sealed under) instead of doc and phi.
provenance pk=tenant|Provenance|id           Provenance records (immutable; ikv: key version of their index tokens)
index      pk=tenant|type|param|key, sk=id|version  search index items (docs/SEARCH.md), written in or
           beside the transaction of the version they describe; change log and Provenance index items;
           transaction records pk=tenant|_txn, sk=txid (docs/TRANSACTIONS.md)

Large transactions (docs/TRANSACTIONS.md) lock current items (`tx`, `txv`) and mark the items they stage
(`tx`). Every reader here resolves them through the transaction record; every conditional write here
refuses to overwrite a locked item. The protocol itself is esus.storage.transactions.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from esus.model import IndexEntry, ResourceWrite, Version
from esus.security.crypto import FieldContext, IntegrityFailure
from esus.security.phi import ResourceCodec
from esus.settings import Settings
from esus.storage.errors import Locked, TooManyItems, TransientConflict, VersionConflict
from esus.storage.items import WRITTEN
from esus.storage.objects import ObjectStore, digest_of, object_key, pack, unpack
from esus.storage.write_plan import (
    GUARD_SORT,
    WritePlan,
    current_item,
    history_item,
    index_item,
    plan_write,
)

if TYPE_CHECKING:
    from esus.storage.transactions import TransactionStore

R = TypeVar("R")

# The key schema the code relies on, per Settings field (env ESUS_<FIELD>); tests hold template.yaml to it.
TABLE_KEYS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "resources_table": (("pk", "S", "HASH"),),
    "history_table": (("pk", "S", "HASH"), ("v", "N", "RANGE")),
    "provenance_table": (("pk", "S", "HASH"),),
    "index_table": (("pk", "S", "HASH"), ("sk", "S", "RANGE")),
}
MAX_ITEM_BYTES = 380_000  # DynamoDB's limit is 400 KB; leave room for attribute names and index refs
# Binary bodies always go to the object store: they are the large ones, and one place to look is simpler.
ALWAYS_IN_OBJECTS = frozenset({"Binary"})
BATCH_GET_LIMIT = 100
TRANSACTION_ITEM_LIMIT = 100  # DynamoDB TransactWriteItems
BATCH_WRITE_LIMIT = 25
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def resource_key(tenant: str, resource_type: str, resource_id: str) -> str:
    return f"{tenant}|{resource_type}|{resource_id}"


def index_partition(tenant: str, resource_type: str, param: str, value: str) -> str:
    return f"{tenant}|{resource_type}|{param}|{value}"


# A patient's compartment (docs/SEARCH.md, "Compartments"): `tenant|Patient|_compartment|<token of the patient>`,
# one item per member version, sort key `Type|id|version`. No search parameter is named so.
COMPARTMENT = "_compartment"


def compartment_partition(tenant: str, key: str) -> str:
    return index_partition(tenant, "Patient", COMPARTMENT, key)


def is_compartment_partition(partition: str) -> bool:
    parts = split_index_partition(partition)
    return parts is not None and parts[1:3] == ("Patient", COMPARTMENT)


def split_index_partition(partition: str) -> tuple[str, str, str, str] | None:
    """index_partition's inverse: (tenant, type, param, value); None for the index table's other
    partitions (change logs, transaction records)."""
    parts = partition.split("|", 3)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


ALL_TYPES = "*"


def change_log_partition(tenant: str, resource_type: str) -> str:
    """Per-tenant change log (system level: resource_type "*"). One item per version, newest last."""
    return f"{tenant}|_changes|{resource_type}"


def change_log_sort(version: Version) -> str:
    return f"{version.last_updated}|{version.resource_type}|{version.resource_id}|{version.version:012d}"


def change_log_entries(tenant: str, version: Version) -> list[IndexEntry]:
    """A version's change-log items: system level, then type level."""
    sort = change_log_sort(version)
    return [IndexEntry(change_log_partition(tenant, level), sort, version.resource_id, version.deleted)
            for level in (ALL_TYPES, version.resource_type)]


def transaction_partition(tenant: str) -> str:
    """Large transactions' records (docs/TRANSACTIONS.md): one partition per tenant, sort key = txid."""
    return f"{tenant}|_txn"


COMMITTED, PENDING, ABORTED = "committed", "pending", "aborted"
LOCK_ATTRIBUTES = ("tx", "txv")  # on a current item: the transaction and the version it is writing


@dataclass(frozen=True)
class TxnState:
    """What a transaction record says (None: no record, which readers treat as not committed)."""

    state: str
    expires: float  # the lease's end, epoch seconds
    finished: bool = False


@dataclass
class ReadView:
    """One multi-item read (docs/TRANSACTIONS.md, readers): transaction states met so far, and those that
    turned out committed for the first time during this pass (the read is then done once more)."""

    states: dict[str, TxnState | None] = field(default_factory=dict)
    known_committed: set[str] = field(default_factory=set)
    fresh: set[str] = field(default_factory=set)

    def met_committed(self, txid: str) -> None:
        if txid not in self.known_committed:
            self.fresh.add(txid)

    def next_pass(self) -> None:
        self.known_committed |= self.fresh
        self.fresh = set()
        # Final states stay; a pending one may have changed meanwhile.
        self.states = {t: s for t, s in self.states.items() if s is not None and s.state != PENDING}


_VIEW: ContextVar[ReadView | None] = ContextVar("esus_read_view", default=None)
READ_PASSES = 3


def key_tenant(key: str) -> str:
    """The tenant of any key of any table (every key begins with it)."""
    return key.split("|", 1)[0]


def split_resource_key(key: str) -> tuple[str, str, str]:
    """resource_key's inverse: (tenant, type, id)."""
    tenant, resource_type, resource_id = key.split("|", 2)
    return tenant, resource_type, resource_id


def index_sort_id(sort: str) -> str:
    """The id an index sort key (order|id) names."""
    return sort.rsplit("|", 1)[-1]


def _av(value: Any) -> dict[str, Any]:
    return dict(_serializer.serialize(value))


def _item(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: _av(v) for k, v in attrs.items() if v is not None}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


class Store:
    def __init__(self, settings: Settings, dynamodb: Any, codec: ResourceCodec, objects: ObjectStore) -> None:
        self._s = settings
        self._ddb = dynamodb
        self._codec = codec
        self._objects = objects
        self._transactions: TransactionStore | None = None

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    # ---------- reads ----------
    def current(self, tenant: str, resource_type: str, resource_id: str) -> Version | None:
        response = self._ddb.get_item(
            TableName=self._s.resources_table,
            Key={"pk": _av(resource_key(tenant, resource_type, resource_id))},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return self._resolved_current(tenant, resource_type, resource_id, _plain(item)) if item else None

    def version(self, tenant: str, resource_type: str, resource_id: str, vid: int) -> Version | None:
        response = self._ddb.get_item(
            TableName=self._s.history_table,
            Key={"pk": _av(resource_key(tenant, resource_type, resource_id)), "v": _av(vid)},
            ConsistentRead=True,
        )
        item = response.get("Item")
        if not item or not self._visible(tenant, plain := _plain(item)):
            return None
        return self._version(tenant, resource_type, resource_id, plain)

    def history(
        self, tenant: str, resource_type: str, resource_id: str, count: int, since: str | None,
        before_version: int | None,
    ) -> tuple[list[Version], bool]:
        """Newest first. Returns (page, more). `since` filters on lastUpdated (versions are in time order)."""
        condition = "pk = :pk"
        values: dict[str, Any] = {":pk": _av(resource_key(tenant, resource_type, resource_id))}
        if before_version is not None:
            condition += " AND v < :before"
            values[":before"] = _av(before_version)
        kwargs: dict[str, Any] = {
            "TableName": self._s.history_table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": count + 1,
            "ConsistentRead": True,
        }
        if since:
            kwargs["FilterExpression"] = "lu >= :since"
            values[":since"] = _av(since)
        items = [_plain(i) for i in self._ddb.query(**kwargs).get("Items", [])]
        more = len(items) > count
        versions = [self._version(tenant, resource_type, resource_id, i) for i in items if self._visible(tenant, i)]
        return versions[:count], more

    def change_log_keys(
        self, partition: str, count: int, since: str | None, before: str | None
    ) -> tuple[list[str], bool]:
        """Newest first, keys only: one Query per page. Returns (sort keys, more)."""
        condition, values = "pk = :pk", {":pk": _av(partition)}
        if since and before:
            condition += " AND sk BETWEEN :since AND :before"
            values.update({":since": _av(since), ":before": _av(before)})
        elif since:
            condition += " AND sk >= :since"
            values[":since"] = _av(since)
        elif before:
            condition += " AND sk < :before"
            values[":before"] = _av(before)
        response = self._ddb.query(
            TableName=self._s.index_table, KeyConditionExpression=condition, ExpressionAttributeValues=values,
            ProjectionExpression="sk, tx, ltx, ltxe", ScanIndexForward=False, Limit=count + 1, ConsistentRead=True,
        )
        tenant = key_tenant(partition)
        items = [_plain(i) for i in response.get("Items", [])]
        items = [i for i in items if before is None or str(i["sk"]) < before]
        more = len(items) > count
        keys = [str(i["sk"]) for i in items if self._visible(tenant, i)]
        return keys[:count], more

    def versions_by_change_keys(self, tenant: str, sort_keys: Sequence[str]) -> list[Version]:
        """The history items that change-log sort keys point at, in the same order (one BatchGetItem)."""
        refs = [key.split("|")[1:] for key in sort_keys]
        keys = [{"pk": _av(resource_key(tenant, t, i)), "v": _av(int(v))} for t, i, v in refs]
        found: dict[tuple[str, int], Version] = {}
        for item in self._batch_get(self._s.history_table, keys):
            plain = _plain(item)
            if not self._visible(tenant, plain):
                continue
            _, resource_type, resource_id = str(plain["pk"]).split("|", 2)
            version = self._version(tenant, resource_type, resource_id, plain)
            found[(version.reference, version.version)] = version
        return [found[(f"{t}/{i}", int(v))] for t, i, v in refs if (f"{t}/{i}", int(v)) in found]

    def currents(self, tenant: str, resource_type: str, ids: Sequence[str]) -> list[Version]:
        return self.currents_of(tenant, [(resource_type, i) for i in ids])

    def currents_of(self, tenant: str, resources: Sequence[tuple[str, str]]) -> list[Version]:
        """The current versions of these (type, id), of any types, read together (BatchGetItem, 100 keys a call);
        absent ones are left out."""
        keys = [{"pk": _av(resource_key(tenant, resource_type, i))} for resource_type, i in resources]
        items = [_plain(item) for item in self._batch_get(self._s.resources_table, keys)]
        found: list[Version] = []
        pending: list[dict[str, Any]] = []  # locked by a committed transaction: the version is its history item
        for plain in items:
            _, resource_type, resource_id = split_resource_key(str(plain["pk"]))
            if "tx" in plain and self._committed(tenant, str(plain["tx"])):
                pending.append({"pk": plain["pk"], "v": int(plain["txv"])})
            elif "tx" not in plain or "v" in plain:  # else a placeholder of a transaction not committed
                if "tx" not in plain:
                    self._note_rolled_forward(plain)
                found.append(self._version(tenant, resource_type, resource_id, plain))
        for item in self.get_many(self._s.history_table, pending) if pending else ():
            _, resource_type, resource_id = split_resource_key(str(item["pk"]))
            found.append(self._version(tenant, resource_type, resource_id, item))
        return found

    def provenances(self, tenant: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        keys = [{"pk": _av(resource_key(tenant, "Provenance", i))} for i in ids]
        items = [_plain(item) for item in self._batch_get(self._s.provenance_table, keys)]
        return [self._provenance(tenant, item) for item in items if self._visible(tenant, item)]

    def index_sort_keys(self, partition: str, resolve: bool = False, prefix: str = "") -> list[str]:
        """All sort keys of one index partition (keys only: small items, one Query per 1 MB), or those that
        begin with `prefix`. `resolve`: leave out items a large transaction marked and has not committed
        (Provenance index items; search index items are never marked: searches re-check every candidate's
        current version)."""
        sort_keys: list[str] = []
        tenant = key_tenant(partition)
        kwargs: dict[str, Any] = {
            "TableName": self._s.index_table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)" if prefix else "pk = :pk",
            "ExpressionAttributeValues": {":pk": _av(partition), **({":prefix": _av(prefix)} if prefix else {})},
            "ProjectionExpression": "sk, tx, ltx, ltxe" if resolve else "sk",
            "ConsistentRead": True,
        }
        while True:
            response = self._ddb.query(**kwargs)
            items = [_plain(i) for i in response.get("Items", [])]
            sort_keys.extend(str(i["sk"]) for i in items if not resolve or self._visible(tenant, i))
            if "LastEvaluatedKey" not in response:
                return sort_keys
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _batch_get(
        self, table: str, keys: list[dict[str, Any]], attributes: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        projection: dict[str, Any] = {}
        if attributes:  # only these attributes (names aliased: some are DynamoDB reserved words)
            names = {f"#a{n}": name for n, name in enumerate(attributes)}
            projection = {"ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            pending: dict[str, Any] = {
                table: {"Keys": keys[start : start + BATCH_GET_LIMIT], "ConsistentRead": True, **projection}}
            for attempt in range(6):
                response = self._ddb.batch_get_item(RequestItems=pending)
                items.extend(response.get("Responses", {}).get(table, []))
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
            else:
                raise ClientError(
                    {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "batch get"}},
                    "BatchGetItem",
                )
        return items

    # ---------- large transactions: the readers' side (docs/TRANSACTIONS.md) ----------
    @property
    def transactions(self) -> TransactionStore:
        """The protocol: staging, commit, roll forward and back, recovery (esus.storage.transactions)."""
        if self._transactions is None:
            from esus.storage.transactions import TransactionStore

            self._transactions = TransactionStore(self, self._s, self._ddb)
        return self._transactions

    def consistent(self, read: Callable[[], R]) -> R:
        """Run a multi-item read so that it never shows part of a large transaction: when it met one that
        turned out committed for the first time, it may have read other items of it before the commit,
        so it reads once more (then every item of that transaction shows the committed state)."""
        if _VIEW.get() is not None:
            return read()  # nested: the outermost read decides
        view = ReadView()
        token = _VIEW.set(view)
        try:
            result = read()
            for _ in range(READ_PASSES - 1):
                if not view.fresh:
                    break
                view.next_pass()
                result = read()
            return result
        finally:
            _VIEW.reset(token)

    def txn_state(self, tenant: str, txid: str) -> TxnState | None:
        """The record's state (one GetItem, cached for the read view), None when there is no record."""
        view = _VIEW.get()
        if view is not None and txid in view.states:
            state = view.states[txid]
        else:
            response = self._ddb.get_item(
                TableName=self._s.index_table, Key={"pk": _av(transaction_partition(tenant)), "sk": _av(txid)},
                ConsistentRead=True, ProjectionExpression="#s, #e, #f",
                ExpressionAttributeNames={"#s": "st", "#e": "exp", "#f": "fin"})
            item = response.get("Item")
            state = TxnState(item["st"]["S"], float(item["exp"]["N"]), "fin" in item) if item else None
            if view is not None:
                view.states[txid] = state
        if view is not None and state is not None and state.state == COMMITTED:
            view.met_committed(txid)
        return state

    def _committed(self, tenant: str, txid: str) -> bool:
        state = self.txn_state(tenant, txid)
        return state is not None and state.state == COMMITTED

    def _note_rolled_forward(self, item: dict[str, Any]) -> None:
        """An item a roll-forward wrote, within its lease: a multi-item read may have read other items of
        that transaction before it committed."""
        view = _VIEW.get()
        if view is not None and "ltx" in item and float(item.get("ltxe", 0)) > time.time():
            view.met_committed(str(item["ltx"]))

    def _visible(self, tenant: str, item: dict[str, Any]) -> bool:
        """A history, Provenance or change-log item: visible unless a transaction that has not committed
        marked it."""
        if "tx" not in item:
            self._note_rolled_forward(item)
            return True
        return self._committed(tenant, str(item["tx"]))

    def _resolved_current(self, tenant: str, resource_type: str, resource_id: str,
                          item: dict[str, Any]) -> Version | None:
        """A current item as readers must see it: through its lock, if it has one."""
        if "tx" not in item:
            self._note_rolled_forward(item)
            return self._version(tenant, resource_type, resource_id, item)
        if self._committed(tenant, str(item["tx"])):  # the pending version is the current one
            pending = self._ddb.get_item(
                TableName=self._s.history_table, Key={"pk": _av(item["pk"]), "v": _av(int(item["txv"]))},
                ConsistentRead=True).get("Item")
            return self._version(tenant, resource_type, resource_id, _plain(pending)) if pending else None
        return self._version(tenant, resource_type, resource_id, item) if "v" in item else None

    # ---------- decoding ----------
    def decode_version(self, tenant: str, resource_type: str, resource_id: str, item: dict[str, Any]) -> Version:
        return self._version(tenant, resource_type, resource_id, item)

    def decode_provenance(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        return self._provenance(tenant, item)

    def _version(self, tenant: str, resource_type: str, resource_id: str, item: dict[str, Any]) -> Version:
        version = int(item["v"])
        deleted = bool(item.get("del", False))
        resource = None
        if not deleted:
            ctx = FieldContext(tenant, resource_type, resource_id, version)
            resource = self._codec.decode(ctx, *self._sealed_body(tenant, resource_type, resource_id, version, item))
            meta = resource.get("meta") or {}
            if resource.get("id") != resource_id or meta.get("versionId") != str(version):
                raise IntegrityFailure("Stored data does not belong to its key")
        return Version(
            resource_type=resource_type,
            resource_id=resource_id,
            version=version,
            last_updated=str(item["lu"]),
            deleted=deleted,
            resource=resource,
            method=str(item.get("m", "PUT")),
            status=int(item.get("st", 200)),
            index_refs=tuple(item.get("idx") or ()),
        )

    def _sealed_body(
        self, tenant: str, resource_type: str, resource_id: str, version: int, item: dict[str, Any],
    ) -> tuple[str, dict[str, bytes]]:
        """A version item's (clear skeleton, sealed elements): in the item, or in the object it points to
        (a second round trip), which must be this version's and match the digest the item holds."""
        key = item.get("obj")
        if key is None:
            return str(item["doc"]), _binary_map(item.get("phi"))
        digest = str(item.get("sha", ""))
        if key != object_key(tenant, resource_type, resource_id, version, digest):
            raise IntegrityFailure("Stored data does not belong to its key")
        body = self._objects.get(str(key))
        if body is None:
            raise IntegrityFailure("The stored body of this version is missing")
        if digest_of(body) != digest:
            raise IntegrityFailure("The stored body of this version failed its digest check")
        return unpack(body)

    def _provenance(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        provenance_id = str(item["pk"]).rsplit("|", 1)[1]
        ctx = FieldContext(tenant, "Provenance", provenance_id, 1)
        resource = self._codec.decode(ctx, item["doc"], _binary_map(item.get("phi")))
        if resource.get("id") != provenance_id:
            raise IntegrityFailure("Stored data does not belong to its key")
        return resource

    # ---------- writes ----------
    def encode_version(self, tenant: str, version: Version) -> dict[str, Any]:
        """The item attributes of a version. A sealed body too large for an item (or a Binary's) is written to
        the object store HERE, before the caller's transaction commits the pointer: a transaction that then
        fails leaves an orphan object (reported by esus verify), never an item without its body."""
        attrs: dict[str, Any] = {"v": version.version, "del": version.deleted, "lu": version.last_updated}
        if version.resource is None:
            return attrs
        ctx = FieldContext(tenant, version.resource_type, version.resource_id, version.version)
        doc, sealed = self._codec.encode(ctx, version.resource)
        size = len(doc.encode()) + sum(len(b) for b in sealed.values())
        if size <= MAX_ITEM_BYTES and version.resource_type not in ALWAYS_IN_OBJECTS:
            return {**attrs, "doc": doc, "phi": sealed}
        body = pack(doc, sealed)
        digest = digest_of(body)
        key = object_key(tenant, version.resource_type, version.resource_id, version.version, digest)
        self._objects.put_new(key, body)
        return {**attrs, "obj": key, "sha": digest, "okv": sorted(self._codec.key_versions(sealed))}

    def provenance_item(
        self, tenant: str, provenance: dict[str, Any], recorded_key: str, index_kv: str | None,
    ) -> dict[str, Any]:
        """A Provenance record's item (plain). `index_kv`: the key version of the record's index tokens
        (`ikv`; absent on items written before Provenance references were tokenised)."""
        ctx = FieldContext(tenant, "Provenance", provenance["id"], 1)
        doc, phi = self._codec.encode(ctx, provenance)
        return {"pk": resource_key(tenant, "Provenance", provenance["id"]), "doc": doc, "phi": phi,
                "lu": provenance["meta"]["lastUpdated"], "rec": recorded_key, "ikv": index_kv}

    def provenance_put(
        self, tenant: str, provenance: dict[str, Any], recorded_key: str, index_kv: str | None,
    ) -> dict[str, Any]:
        return self._put_new(self._s.provenance_table, self.provenance_item(tenant, provenance, recorded_key, index_kv))

    def _put_new(self, table: str, item: dict[str, Any]) -> dict[str, Any]:
        """A Put of an item that must not exist yet (history and Provenance items are never rewritten)."""
        return {"Put": {"TableName": table, "Item": _item(item), "ConditionExpression": "attribute_not_exists(pk)"}}

    def index_put(self, entry: IndexEntry) -> dict[str, Any]:
        return {"Put": {"TableName": self._s.index_table, "Item": _item(index_item(entry))}}

    def put_index_items(self, entries: Sequence[IndexEntry]) -> None:
        """Idempotent puts outside any transaction (search index items, docs/SEARCH.md). Each carries when it was
        written: until its version commits it looks like an orphan, and `esus verify --repair-index` leaves young
        ones alone."""
        written = _av(int(time.time()))
        self._batch_write([{**self.index_put(e)["Put"]["Item"], WRITTEN: written} for e in entries], [])

    def delete_index_items(self, refs: Sequence[str]) -> None:
        keys = [self.index_delete(ref)["Delete"]["Key"] for ref in refs]
        self._batch_write([], keys)

    def _batch_write(self, puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> None:
        requests = [{"PutRequest": {"Item": i}} for i in puts] + [{"DeleteRequest": {"Key": k}} for k in deletes]
        for start in range(0, len(requests), BATCH_WRITE_LIMIT):
            pending: dict[str, Any] = {self._s.index_table: requests[start : start + BATCH_WRITE_LIMIT]}
            for attempt in range(8):
                pending = self._ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
            else:
                raise ClientError(
                    {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "batch write"}},
                    "BatchWriteItem",
                )

    def change_log_entries(self, partition: str) -> list[tuple[str, bool]]:
        """Every entry of a change-log partition, oldest first, keys and delete flags only (entries of a
        large transaction that has not committed are left out)."""
        found: list[tuple[str, bool]] = []
        tenant = key_tenant(partition)
        kwargs: dict[str, Any] = {
            "TableName": self._s.index_table, "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _av(partition)}, "ProjectionExpression": "sk, #d, tx, ltx, ltxe",
            "ExpressionAttributeNames": {"#d": "del"}, "ConsistentRead": True,
        }
        while True:
            response = self._ddb.query(**kwargs)
            items = [_plain(i) for i in response.get("Items", [])]
            found.extend((str(i["sk"]), bool(i.get("del", False))) for i in items if self._visible(tenant, i))
            if "LastEvaluatedKey" not in response:
                return found
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def guard_put(self, item: dict[str, Any], stale_id: str | None) -> dict[str, Any]:
        """A conditional-create guard (write_plan.guard_item, a large transaction adds its markers): new, or
        taken over from `stale_id`, a resource that no longer matches."""
        put: dict[str, Any] = {"TableName": self._s.index_table, "Item": _item(item),
                               "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if stale_id is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:  # the guarded resource no longer matches: take the guard over, unless someone else did
            put["ConditionExpression"] = "rid = :stale AND attribute_not_exists(tx)"
            put["ExpressionAttributeValues"] = {":stale": _av(stale_id)}
        return {"Put": put}

    def guard_owner(self, partition: str) -> str | None:
        """The resource a conditional-create guard names. A guard a large transaction holds names its new
        owner once the transaction committed, its previous one if it did not; while it is pending nobody
        can tell: Locked (the writer resolves it)."""
        response = self._ddb.get_item(TableName=self._s.index_table, Key={"pk": _av(partition), "sk": _av(GUARD_SORT)},
                                      ConsistentRead=True)
        item = response.get("Item")
        if not item:
            return None
        plain = _plain(item)
        if "tx" in plain:
            tenant, txid = key_tenant(partition), str(plain["tx"])
            state = self.txn_state(tenant, txid)
            if state is None or state.state == ABORTED:
                return str(plain["prev"]) if plain.get("prev") else None
            if state.state == PENDING:
                raise Locked(tenant, txid, self._s.index_table, {"pk": partition, "sk": GUARD_SORT})
        return str(plain["rid"])

    def index_delete(self, ref: str) -> dict[str, Any]:
        entry = IndexEntry.from_ref(ref)
        return {"Delete": {"TableName": self._s.index_table,
                           "Key": {"pk": _av(entry.partition), "sk": _av(entry.sort)}}}

    def write_plan(self, write: ResourceWrite, recorded_key: str) -> WritePlan:
        """Every item of one resource write (esus.storage.write_plan), its version encoded once per write:
        callers may plan twice (index items in or beside the transaction)."""
        v = write.version
        if write.encoded is None:
            write.encoded = self.encode_version(write.tenant, v)
        provenance = self.provenance_item(write.tenant, write.provenance, recorded_key, write.provenance_index_kv)
        return plan_write(write, resource_key(write.tenant, v.resource_type, v.resource_id), write.encoded, provenance)

    def resource_write_items(self, write: ResourceWrite, recorded_key: str) -> list[dict[str, Any]]:
        """The TransactWriteItems entries of one resource write (also used inside small transaction Bundles)."""
        plan = self.write_plan(write, recorded_key)
        put_current: dict[str, Any] = {
            "TableName": self._s.resources_table,
            "Item": _item(plan.current),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if write.expected_version is None:
            put_current["ConditionExpression"] = "attribute_not_exists(pk)"
        else:  # never over a locked item (docs/TRANSACTIONS.md)
            condition = "v = :expected AND attribute_not_exists(tx)"
            values = {":expected": _av(write.expected_version)}
            if write.expected_deleted is not None:
                condition += " AND del = :deleted"
                values[":deleted"] = _av(write.expected_deleted)
            put_current["ConditionExpression"] = condition
            put_current["ExpressionAttributeValues"] = values
        old_refs = set(write.stale_index_refs)
        # The current item first: transact() reads a lost race's current version from its cancellation reason.
        return [
            {"Put": put_current},
            self._put_new(self._s.history_table, plan.history),
            self._put_new(self._s.provenance_table, plan.provenance),
            *(self.index_put(e) for e in plan.provenance_index),
            *(self.index_put(e) for e in plan.change_log),
            *([self.guard_put(plan.guard, plan.guard_stale)] if plan.guard else []),
            *(self.index_put(e) for e in plan.search_index if e.ref not in old_refs),
            *(self.index_delete(ref) for ref in sorted(old_refs - set(plan.index_refs))),
        ]

    # ---------- maintenance: re-encryption after a root-key rotation ----------
    def scan(self, table: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self._ddb.scan(**kwargs)
            yield from (_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # ---------- the integrity checker's bounded reads (esus verify) ----------
    def scan_pages(self, table: str, tenant: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """One Scan page (at most 1 MB) at a time, optionally only `tenant`'s items."""
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        if tenant is not None:
            kwargs["FilterExpression"] = "begins_with(pk, :tenant)"
            kwargs["ExpressionAttributeValues"] = {":tenant": _av(f"{tenant}|")}
        while True:
            page = self._ddb.scan(**kwargs)
            yield [_plain(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def history_pages(self, tenant: str, resource_type: str, resource_id: str) -> Iterator[list[dict[str, Any]]]:
        """A resource's history items, oldest first, one Query page at a time (undecoded)."""
        kwargs: dict[str, Any] = {
            "TableName": self._s.history_table, "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _av(resource_key(tenant, resource_type, resource_id))},
            "ScanIndexForward": True, "ConsistentRead": True,
        }
        while True:
            page = self._ddb.query(**kwargs)
            yield [_plain(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_many(
        self, table: str, keys: Sequence[dict[str, Any]], attributes: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The items of `table` at these plain keys (absent ones are left out), optionally only `attributes`."""
        unique = list({tuple(sorted(k.items())): k for k in keys}.values())  # BatchGetItem rejects duplicates
        return [_plain(i) for i in self._batch_get(table, [_item(k) for k in unique], attributes)]

    def _is_stale(self, item: dict[str, Any], current_kv: str) -> bool:
        versions = self._codec.key_versions(_binary_map(item.get("phi"))) | {str(kv) for kv in item.get("okv") or ()}
        tokens_stale = any(f"|k{current_kv}." not in ref.split("\n", 1)[0] for ref in item.get("idx") or ())
        return bool(versions - {current_kv}) or tokens_stale

    def complete_index(self, item: dict[str, Any], index_entries: Callable[[str, Version], list[IndexEntry]]) -> bool:
        """Give a current item the `idx` its content needs (a version written before a kind of index item existed):
        the new index items first, then `idx` alone, conditioned on the version (the sealed content and any object
        stay as they are), then the items it no longer lists. False: written meanwhile, or held by a large
        transaction."""
        if "tx" in item:
            return False
        pk = str(item["pk"])
        tenant, resource_type, resource_id = split_resource_key(pk)
        version = self._version(tenant, resource_type, resource_id, item)
        entries = index_entries(tenant, version)
        refs, old_refs = [e.ref for e in entries], set(version.index_refs)
        self.put_index_items([e for e in entries if e.ref not in old_refs])
        try:
            self._ddb.update_item(
                TableName=self._s.resources_table, Key={"pk": _av(pk)},
                UpdateExpression="SET idx = :idx" if refs else "REMOVE idx",
                ConditionExpression="v = :v AND attribute_not_exists(tx)",
                ExpressionAttributeValues={":v": _av(version.version), **({":idx": _av(refs)} if refs else {})})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False  # its new items stay: orphans, stale to verify, as after any failed write
            raise
        self.delete_index_items(sorted(old_refs - set(refs)))
        return True

    def reencrypt_version_item(
        self, table: str, item: dict[str, Any], current_kv: str,
        index_entries: Callable[[str, Version], list[IndexEntry]] | None = None,
    ) -> bool:
        """Re-seal one resources/history item under the current key version (and, for current items,
        move its index items to current-version tokens), conditioned on the version it had."""
        if "tx" in item or not self._is_stale(item, current_kv):
            return False  # a large transaction's item: its roll-forward or roll-back rewrites it
        pk = str(item["pk"])
        tenant, resource_type, resource_id = split_resource_key(pk)
        version = self._version(tenant, resource_type, resource_id, item)
        attrs = self.encode_version(tenant, version)
        new_entries = index_entries(tenant, version) if index_entries else []
        new_refs = [e.ref for e in new_entries]
        old_refs = set(version.index_refs)
        resealed = current_item(pk, attrs, new_refs) if index_entries else history_item(pk, attrs, version)
        put = {"TableName": table, "Item": _item(resealed),
               "ConditionExpression": "v = :v AND attribute_not_exists(tx)",
               "ExpressionAttributeValues": {":v": _av(version.version)}}
        # Search index items go beside the transaction (a Patient has more than one transaction holds):
        # new keys first, then the version, then the old keys; a crash leaves extra items, never missing ones.
        self.put_index_items([e for e in new_entries if e.ref not in old_refs])
        try:
            self.transact([{"Put": put}], str(uuid.uuid4()))
        except VersionConflict:
            return False  # written meanwhile: the new version already uses the current key
        self.delete_index_items(sorted(old_refs - set(new_refs)))
        return True

    def reencrypt_provenance_item(
        self, item: dict[str, Any], current_kv: str,
        index_entries: Callable[[str, dict[str, Any], str, str | None], list[IndexEntry]],
    ) -> bool:
        """Re-seal one Provenance record under the current key version and move its index items to
        current-version tokens (`index_entries(tenant, record, recorded, key_version)`; key version None:
        the clear items of records written before tokens). New items first, then the record, then the
        old items: a crash leaves extra items that name the same record, never missing ones."""
        index_kv = str(item["ikv"]) if "ikv" in item else None
        if "tx" in item or (not self._is_stale(item, current_kv) and index_kv == current_kv):
            return False  # a record staged by a large transaction is left to it
        tenant = str(item["pk"]).split("|", 1)[0]
        record = self._provenance(tenant, item)
        recorded = str(item["rec"])
        new_refs = {e.ref: e for e in index_entries(tenant, record, recorded, current_kv)}
        old_refs = {e.ref for e in index_entries(tenant, record, recorded, index_kv)}
        self.put_index_items([e for ref, e in new_refs.items() if ref not in old_refs])
        put = self.provenance_put(tenant, record, recorded, current_kv)["Put"]
        put["ConditionExpression"] = "attribute_exists(pk) AND attribute_not_exists(tx)"
        self.transact([{"Put": put}], str(uuid.uuid4()))
        self.delete_index_items(sorted(old_refs - set(new_refs)))
        return True

    @staticmethod
    def require_fits(items: list[dict[str, Any]]) -> None:
        """Refused before anything is written (callers that write beside the transaction check first)."""
        if len(items) > TRANSACTION_ITEM_LIMIT:
            raise TooManyItems(len(items), TRANSACTION_ITEM_LIMIT)

    def transact(self, items: list[dict[str, Any]], token: str) -> None:
        """One all-or-nothing TransactWriteItems. The token makes a retried call idempotent.
        Every write goes through here, so this is where a write too big for one transaction is refused."""
        self.require_fits(items)
        try:
            self._ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            codes = [r.get("Code", "None") for r in reasons]
            _raise_if_locked(items, reasons)
            if codes and codes[0] == "ConditionalCheckFailed":
                old = _plain(dict(reasons[0].get("Item") or {}))
                raise VersionConflict(
                    int(old["v"]) if "v" in old else None,
                    bool(old["del"]) if "del" in old else None,
                ) from None
            if "ConditionalCheckFailed" in codes[1:]:  # history or uniqueness item exists: a racing writer won
                raise VersionConflict(None, None) from None
            if "TransactionConflict" in codes:
                raise TransientConflict("TransactionConflict") from None
            raise


def _raise_if_locked(items: list[dict[str, Any]], reasons: Sequence[Any]) -> None:
    """A condition failed on an item a large transaction holds: Locked, so the writer can resolve it."""
    for op, reason in zip(items, reasons, strict=False):
        old = _plain(dict(reason.get("Item") or {})) if reason.get("Code") == "ConditionalCheckFailed" else {}
        if "tx" in old:
            body = next(iter(op.values()))
            key: dict[str, Any] = {k: old[k] for k in ("pk", "sk") if k in old}
            raise Locked(key_tenant(str(old["pk"])), str(old["tx"]), str(body["TableName"]), key)


def _binary_map(value: Any) -> dict[str, bytes]:
    if not value:
        return {}
    return {k: bytes(v.value if hasattr(v, "value") else v) for k, v in value.items()}

