"""The local stack's patches of moto internals (esus_dev.localstack.moto_patches) fail loudly on a moto upgrade: the
installed version must be one they were tested with, and the internals they rely on must still look as they
did. The rollback itself is proven here in-process and, under concurrency, by tests/e2e/test_concurrency.py."""

from __future__ import annotations

import copy
import inspect
import json
import tomllib
from importlib import metadata
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from packaging.requirements import Requirement

from esus_dev.localstack import moto_patches
from tests.conftest import REPO, examples


def test_installed_moto_is_the_tested_and_pinned_version() -> None:
    installed = metadata.version("moto")
    assert installed in moto_patches.TESTED_MOTO_VERSIONS, (
        f"moto {installed} is not a version esus_dev.localstack.moto_patches was tested with: re-check the patches "
        "(see that module's docstring) before adding it to TESTED_MOTO_VERSIONS")
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (pin,) = [Requirement(r) for r in dev if Requirement(r).name == "moto"]
    pinned = [s.version for s in pin.specifier if s.operator == "=="]
    assert len(pin.specifier) == 1 and pinned == [installed], f"pyproject.toml must pin moto=={installed}: {pin}"


def test_an_untested_moto_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto_patches.metadata, "version", lambda name: "5.99.0")
    with pytest.raises(moto_patches.UntestedMotoVersion, match=r"moto 5\.99\.0 .*tested with moto 5\."):
        moto_patches.install()


def test_the_internals_the_patches_rely_on_are_unchanged() -> None:
    from moto.core.model_instances import model_data
    from moto.dynamodb import models

    method = models.DynamoDBBackend.transact_write_items
    original = getattr(method, "__wrapped__", method)  # the patch keeps moto's method here
    assert list(inspect.signature(original).parameters) == ["self", "transact_items"]
    source = inspect.getsource(original)
    # The whole-table backup the patch turns into a no-op, and the rollback that then restores the same object.
    assert "original_table_state[table_name] = copy.deepcopy(" in source
    assert "self.tables[table_name] = original_table_state[table_name]" in source
    assert models.copy is copy  # type: ignore[attr-defined]  # the module global the patch swaps
    tracked = [m for ms in model_data.values() for m in ms.values()]
    assert tracked and all(isinstance(m.instances_tracked, list) for m in tracked)  # type: ignore[attr-defined]
    from moto.core.botocore_stubber import BotocoreStubber

    stub = getattr(BotocoreStubber.__call__, "__wrapped__", BotocoreStubber.__call__)
    assert list(inspect.signature(stub).parameters) == ["self", "event_name", "request", "kwargs"]


def test_in_process_mocks_answer_concurrent_calls_one_at_a_time() -> None:
    """ESUS's concurrent calls (search lookups, index items beside a transaction) against moto.mock_aws:
    serialised, every call lands (unserialised, moto's deepcopy raised 'dictionary changed size')."""
    import threading

    import boto3
    from moto import mock_aws

    from esus_dev.localstack.moto_patches import serialise_in_process_mock

    serialise_in_process_mock()
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="t", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(40):
                    ddb.transact_write_items(TransactItems=[_put("t", f"{n}-{i}"), _put("t", f"{n}-{i}-b")])
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert ddb.scan(TableName="t", Select="COUNT")["Count"] == 4 * 40 * 2


def _put(table: str, pk: str, **extra: Any) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": {"pk": {"S": pk}, **extra}}}


def test_a_cancelled_transaction_is_rolled_back_item_by_item() -> None:
    from moto.dynamodb import models

    moto_patches.install()
    moto_patches.install()  # idempotent
    assert models.DynamoDBBackend.transact_write_items.esus_item_level  # type: ignore[attr-defined]
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        for name in ("a", "b"):
            ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                             AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                             KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        ddb.put_item(TableName="a", Item={"pk": {"S": "kept"}, "v": {"N": "1"}})
        ddb.put_item(TableName="b", Item={"pk": {"S": "guard"}})
        backend = models.dynamodb_backends["123456789012"]["us-east-1"]
        table_a = backend.tables["a"]
        with pytest.raises(ddb.exceptions.TransactionCanceledException):
            ddb.transact_write_items(TransactItems=[
                _put("a", "kept", v={"N": "2"}),
                _put("a", "new"),
                {"Delete": {"TableName": "b", "Key": {"pk": {"S": "guard"}}}},
                {"ConditionCheck": {"TableName": "b", "Key": {"pk": {"S": "missing"}},
                                    "ConditionExpression": "attribute_exists(pk)"}},
            ])
        assert backend.tables["a"] is table_a, "the table was replaced by a whole-table copy"
        assert ddb.get_item(TableName="a", Key={"pk": {"S": "kept"}})["Item"]["v"] == {"N": "1"}
        assert "Item" not in ddb.get_item(TableName="a", Key={"pk": {"S": "new"}})
        assert "Item" in ddb.get_item(TableName="b", Key={"pk": {"S": "guard"}})
        ddb.transact_write_items(TransactItems=[_put("a", "new")])  # an accepted one still commits
        assert "Item" in ddb.get_item(TableName="a", Key={"pk": {"S": "new"}})
    assert models.copy is copy  # type: ignore[attr-defined]


def test_query_internals_the_partition_patch_relies_on_are_unchanged() -> None:
    from moto.dynamodb.models.table import Table

    original = getattr(Table.query, "__wrapped__", Table.query)
    assert list(inspect.signature(original).parameters)[1:9] == [
        "hash_key", "range_comparison", "range_objs", "limit", "exclusive_start_key", "scan_index_forward",
        "projection_expressions", "index_name"]
    source = inspect.getsource(original)
    assert "for item in self.all_items()" in source and "item.hash_key == hash_key" in source


class _Elsewhere:
    """An item of another partition that fails when a Query looks at it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a Query read another partition's item ({name})")


def test_a_query_reads_only_its_partition_with_the_same_results() -> None:
    """Regression: after the Synthea corpus (~150,000 index items) every Query sorted the whole table
    (~4 s each), and searches on the local stack timed out."""
    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    moto_patches.install()
    moto_patches.install()  # idempotent
    assert Table.query.esus_partition  # type: ignore[attr-defined]
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="idx", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        for p in range(3):
            for s in range(5):
                ddb.put_item(TableName="idx", Item={"pk": {"S": f"p{p}"}, "sk": {"S": f"s{4 - s}"}})
        table = models.dynamodb_backends["123456789012"]["us-east-1"].tables["idx"]
        other = next(k for k in table.items if k.value == "p2")
        saved, table.items[other] = table.items[other], {"x": _Elsewhere()}

        def query(**extra: Any) -> list[str]:
            return [i["sk"]["S"] for i in ddb.query(
                TableName="idx", KeyConditionExpression="pk = :p" + extra.pop("range", ""),
                ExpressionAttributeValues={":p": {"S": "p1"}, **extra.pop("values", {})}, **extra)["Items"]]

        try:
            assert query() == ["s0", "s1", "s2", "s3", "s4"]
            assert query(ScanIndexForward=False, Limit=2) == ["s4", "s3"]
            assert query(range=" AND sk > :s", values={":s": {"S": "s2"}}) == ["s3", "s4"]
            assert ddb.query(TableName="idx", KeyConditionExpression="pk = :p",
                             ExpressionAttributeValues={":p": {"S": "nothing"}})["Items"] == []
            assert "nothing" not in {k.value for k in table.items}  # the lookup added no empty partition
        finally:
            table.items[other] = saved
        assert len(ddb.scan(TableName="idx")["Items"]) == 15  # a Scan still sees every item


_SCALARS = st.one_of(
    st.builds(lambda s: {"S": s}, st.text(max_size=8)),
    st.builds(lambda n: {"N": str(n)}, st.integers() | st.decimals(allow_nan=False, allow_infinity=False)),
    st.builds(lambda b: {"B": b}, st.binary(max_size=12)),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda v: {"SS": v}, st.lists(st.text(max_size=5), min_size=1, max_size=3, unique=True)),
    st.builds(lambda v: {"NS": [str(n) for n in v]}, st.lists(st.integers(), min_size=1, max_size=3, unique=True)),
    st.builds(lambda v: {"BS": v}, st.lists(st.binary(max_size=5), min_size=1, max_size=3, unique=True)),
)
_ATTRIBUTE_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.builds(lambda m: {"M": m}, st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3))), max_leaves=12)


def _serialized(operation: str, result: dict[str, Any], fast: bool) -> Any:
    """`result` as moto's DynamoDB JSON serializer writes it, with or without the fast path."""
    from moto.core.responses import ActionContext, ActionResult
    from moto.core.serialize import BaseJSONSerializer, get_serializer_class
    from moto.core.utils import get_service_model

    patched = BaseJSONSerializer._serialize_type_structure
    original = getattr(patched, "__wrapped__", patched)
    model = get_service_model("dynamodb")
    context = ActionContext(model, model.operation_model(operation), get_serializer_class("dynamodb", "json"), None)
    BaseJSONSerializer._serialize_type_structure = patched if fast else original  # type: ignore[method-assign]
    try:
        return ActionResult(result).execute_result(context)
    finally:
        BaseJSONSerializer._serialize_type_structure = patched  # type: ignore[method-assign]


@settings(max_examples=examples(100), deadline=None)
@given(items=st.lists(st.dictionaries(st.text(min_size=1, max_size=4), _ATTRIBUTE_VALUES, max_size=4), max_size=3))
def test_fast_attribute_values_serialise_exactly_as_moto_does(items: list[dict[str, Any]]) -> None:
    moto_patches.install_fast_attribute_values()
    moto_patches.install_fast_attribute_values()  # idempotent
    for operation, result in (("Query", {"Items": items, "Count": len(items)}),
                              ("GetItem", {"Item": items[0]} if items else {}),
                              ("BatchGetItem", {"Responses": {"t": items}})):
        fast = _serialized(operation, result, fast=True)
        assert fast == _serialized(operation, result, fast=False)
        assert json.loads(fast[2]) == json.loads(_serialized(operation, result, fast=False)[2])


def test_the_serializer_internals_the_fast_path_relies_on_are_unchanged() -> None:
    from moto.core.serialize import BaseJSONSerializer, get_serializer_class
    from moto.core.utils import get_service_model

    moto_patches.install_fast_attribute_values()
    patched = BaseJSONSerializer._serialize_type_structure
    assert patched.esus_fast_attribute_values  # type: ignore[attr-defined]
    original = patched.__wrapped__  # type: ignore[attr-defined]
    assert list(inspect.signature(original).parameters) == ["self", "serialized", "value", "shape", "key"]
    assert issubclass(get_serializer_class("dynamodb", "json"), BaseJSONSerializer)
    shape = get_service_model("dynamodb").shape_for("AttributeValue")
    assert set(shape.members) == {"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"}
    # The only transformation the fast path makes: blobs are base64 (moto's own serializer, unpatched).
    unpatched = _serialized("GetItem", {"Item": {"b": {"B": b"\x00\xff"}}}, fast=False)
    assert unpatched[2] == '{"Item": {"b": {"B": "AP8="}}}'
