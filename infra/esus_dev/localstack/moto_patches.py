"""The places the local stack and the tests reach into moto's internals, behind a version check.

The patches depend on moto's private code, which may change in any release: `install()` refuses to run on a
moto version they were not tested with (TESTED_MOTO_VERSIONS; pyproject.toml pins the same version), and
tests/unit/test_moto_patches.py fails on an upgrade until the internals are re-checked.

To upgrade moto: bump the pin in pyproject.toml, check that moto's DynamoDBBackend.transact_write_items still
backs up whole tables with the module-global `copy.deepcopy`, that moto.core.model_instances still keeps
`instances_tracked` lists, that BaseJSONSerializer._serialize_type_structure(serialized, value, shape, key) still
serialises DynamoDB's AttributeValue structures, that Table.query still finds its partition through
`self.all_items()` and that moto.core.botocore_stubber.BotocoreStubber.__call__(event_name, request, **kwargs)
still answers mocked calls, run tests/unit/test_moto_patches.py and tests/e2e/test_concurrency.py (it proves the
rollback), then add the version here.
"""

from __future__ import annotations

import threading
import types
from importlib import metadata
from typing import Any

TESTED_MOTO_VERSIONS = frozenset({"5.2.5"})


class UntestedMotoVersion(RuntimeError):
    pass


def check_moto_version() -> str:
    version = metadata.version("moto")
    if version not in TESTED_MOTO_VERSIONS:
        raise UntestedMotoVersion(
            f"moto {version} is installed, but the local stack's patches of moto internals "
            f"(esus_dev.localstack.moto_patches) were tested with moto {', '.join(sorted(TESTED_MOTO_VERSIONS))} only. "
            "Install the version pinned in pyproject.toml (`make setup`), or re-check the patches against "
            "the new version as that module's docstring describes.")
    return version


# One lock for every call into moto in this process: the embedded server's requests and in-process mocked calls
# (the local stack's own functions use both at once, on the same backends).
MOTO_LOCK = threading.RLock()


def serialise_in_process_mock() -> None:
    """moto.mock_aws answers in the calling thread and is not thread-safe, while ESUS makes concurrent calls
    (search lookups, index items written beside a transaction). The local stack's server serialises every
    call with one lock; in-process mocks (handler and infra tests, the local stack's own functions) take the same
    lock around moto's botocore stub, the single entry point of a mocked call. Idempotent."""
    from moto.core.botocore_stubber import BotocoreStubber

    check_moto_version()
    call = BotocoreStubber.__call__
    if getattr(call, "esus_serialised", False):
        return

    def serialised(self: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
        with MOTO_LOCK:
            return call(self, event_name, request, **kwargs)

    serialised.esus_serialised = True  # type: ignore[attr-defined]
    serialised.__wrapped__ = call  # type: ignore[attr-defined]
    BotocoreStubber.__call__ = serialised  # type: ignore[method-assign]


def install() -> None:
    """Every patch; idempotent. Raises UntestedMotoVersion on a moto they were not tested with."""
    check_moto_version()
    install_item_level_transaction_rollback()
    install_partition_query()
    install_fast_attribute_values()


def _attribute_value_on_the_wire(value: Any) -> dict[str, Any] | None:
    """One DynamoDB AttributeValue as moto's generic serializer writes it (blobs base64, numbers and strings as
    strings, maps and lists recursively), or None for anything not a plain one-type value (then moto's own
    serializer answers)."""
    if type(value) is not dict or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if inner is None:
        return None
    if kind in ("S", "N"):
        return {kind: inner} if isinstance(inner, str) else None
    if kind in ("NULL", "BOOL"):
        return {kind: inner} if isinstance(inner, bool) else None
    if kind == "B":
        return {kind: _base64(inner)} if isinstance(inner, bytes | str) else None
    if kind in ("SS", "NS"):
        return {kind: list(inner)} if isinstance(inner, list) and all(isinstance(v, str) for v in inner) else None
    if kind == "BS":
        return {kind: [_base64(v) for v in inner]} if isinstance(inner, list) and all(
            isinstance(v, bytes | str) for v in inner) else None
    if kind == "M" and type(inner) is dict and "" not in inner:  # moto writes an empty name's value in place
        members = {k: _attribute_value_on_the_wire(v) for k, v in inner.items()}
        return None if any(v is None for v in members.values()) else {kind: members}
    if kind == "L" and isinstance(inner, list):
        elements = [_attribute_value_on_the_wire(v) for v in inner]
        return None if any(v is None for v in elements) else {kind: elements}
    return None


def _base64(value: str | bytes) -> str:
    import base64

    raw = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(raw).strip().decode("utf-8")


def install_fast_attribute_values() -> None:
    """moto 5.2 writes every DynamoDB response through a generic, shape-driven serializer that looks up each of an
    AttributeValue's ten members under several aliases: a GetItem of a sealed Patient took ~15 ms, a Query or a
    Scan of a few hundred items seconds, and reads, searches and every table scan of the tests spent most of
    their time there. An AttributeValue is already in its wire form but for base64 blobs: write it directly, the
    same JSON (tests/unit/test_moto_patches.py compares both on generated values)."""
    from moto.core.serialize import BaseJSONSerializer

    check_moto_version()
    original = BaseJSONSerializer._serialize_type_structure
    if getattr(original, "esus_fast_attribute_values", False):
        return

    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and self.service_model.service_name == "dynamodb":
            wire = _attribute_value_on_the_wire(value)
            if wire is not None:
                serialized[shape.serialization.get("name", key)] = wire
                return
        original(self, serialized, value, shape, key)

    serialize_structure.esus_fast_attribute_values = True  # type: ignore[attr-defined]
    serialize_structure.__wrapped__ = original  # type: ignore[attr-defined]  # for the upgrade test
    BaseJSONSerializer._serialize_type_structure = serialize_structure  # type: ignore[method-assign]


def install_item_level_transaction_rollback() -> None:
    """moto backs up every table a TransactWriteItems names with copy.deepcopy, once per item, so a
    stack holding a few thousand resources spends seconds and gigabytes per write. Instead, snapshot
    only the items the transaction touches and restore them if it is cancelled; the result is the same
    all-or-nothing behaviour (tests/e2e/test_concurrency.py proves the rollback)."""
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    check_moto_version()
    original = models.DynamoDBBackend.transact_write_items
    if getattr(original, "esus_item_level", False):
        return
    real_copy = models.copy  # type: ignore[attr-defined]  # moto's module-global `import copy`
    keep_tables = types.SimpleNamespace(
        deepcopy=lambda value, *args: value if isinstance(value, Table) else real_copy.deepcopy(value, *args))

    def touched(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
        saved = []
        for entry in transact_items:
            op = next(iter(entry.values()))
            table = backend.tables.get(op.get("TableName"))
            key = op.get("Key") or op.get("Item") or {}
            if table is None or table.hash_key_attr not in key:
                continue
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
            if range_value is None:
                current = table.items.get(hash_value)
            else:
                current = table.items.get(hash_value, {}).get(range_value)
            saved.append((table, hash_value, range_value, real_copy.deepcopy(current)))
        return saved

    def restore(saved: list[tuple[Any, Any, Any, Any]]) -> None:
        for table, hash_value, range_value, item in reversed(saved):
            container = table.items if range_value is None else table.items[hash_value]
            slot = hash_value if range_value is None else range_value
            if item is None:
                container.pop(slot, None)
            else:
                container[slot] = item

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = touched(self, transact_items)
        models.copy = keep_tables  # type: ignore[attr-defined,assignment]
        try:
            original(self, transact_items)
        except Exception:
            restore(saved)
            raise
        finally:
            models.copy = real_copy  # type: ignore[attr-defined]

    transact_write_items.esus_item_level = True  # type: ignore[attr-defined]
    transact_write_items.__wrapped__ = original  # type: ignore[attr-defined]  # for the upgrade test
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


_query_scope = threading.local()


def install_partition_query() -> None:
    """moto's Table.query finds a partition by sorting EVERY item of the table (`all_items()`) and keeping
    those with the hash key: after `esus import` of the Synthea corpus (~150,000 index items) one Query
    took ~4 s, and a search (a Query or more) hit the 5 s boto3 read timeout. A Query on the table's own
    key now sees only its partition's items, sorted the same way: the same results, at the cost of one
    partition (DynamoDB's own cost model). Index (GSI/LSI) queries are left as they are."""
    from moto.dynamodb.models.table import Table

    check_moto_version()
    original_query, original_all_items = Table.query, Table.all_items
    if getattr(original_query, "esus_partition", False):
        return

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name is not None or hash_key is None:
            return original_query(self, hash_key, *args, **kwargs)
        _query_scope.partition = (self, hash_key)
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _query_scope.partition = None

    def all_items(self: Any) -> Any:
        scope = getattr(_query_scope, "partition", None)  # per thread: a concurrent Scan sees every item
        if scope is None or scope[0] is not self:
            return original_all_items(self)
        partition = self.items.get(scope[1])  # .get: items is a defaultdict, a lookup must not add a key
        found = [] if partition is None else list(partition.values()) if self.range_key_attr else [partition]
        return sorted(found, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)

    query.esus_partition = True  # type: ignore[attr-defined]
    query.__wrapped__ = original_query  # type: ignore[attr-defined]  # for the upgrade test
    all_items.__wrapped__ = original_all_items  # type: ignore[attr-defined]
    Table.query = query  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]


def forget_tracked_instances() -> None:
    """moto remembers every model object it ever created (for resets between tests): a server that
    lives for hours would keep every overwritten item. Nothing here needs that list."""
    from moto.core.model_instances import model_data

    for models in model_data.values():
        for model in models.values():
            model.instances_tracked.clear()  # type: ignore[attr-defined]
