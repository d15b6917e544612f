"""Input limits in isolation: query numbers, JSON depth, JSON Patch growth, index-item de-duplication."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from esus.domain.params import instant_param, page_size
from esus.domain.resources import _json_patch, apply_bounded
from esus.errors import InvalidRequest, PayloadTooLarge, Unprocessable
from esus.limits import MAX_JSON_DEPTH, depth_exceeds, parse_json
from esus.model import IndexEntry
from esus.settings import Settings
from esus.storage.write_plan import unique_entries


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 10), ("", 10), ("0", 0), ("7", 7), ("007", 7), ("100", 100), ("101", 100), ("2147483647", 100),
    ("0" * 5000 + "5", 5),
])
def test_count_values(raw: str | None, expected: int) -> None:
    assert page_size(Settings(), raw) == expected


@pytest.mark.parametrize("raw", ["²", "٣", "1²", "-1", "+1", " 1", "1.0", "many", "１", "2147483648", "9" * 5000])
def test_count_rejects_anything_but_a_fhir_integer(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        page_size(Settings(), raw)


@pytest.mark.parametrize("raw", ["garbage", "²", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                 "2024-13-01T00:00:00Z", "x" * 5000])
def test_instants_that_cannot_be_read_are_400(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        instant_param("_since", raw)


def test_instant_is_normalised_to_utc_milliseconds() -> None:
    assert instant_param("_since", "2024-01-15T10:30:00+02:00") == "2024-01-15T08:30:00.000Z"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_depth_limit() -> None:
    assert parse_json(_nested(MAX_JSON_DEPTH), "body") == json.loads(_nested(MAX_JSON_DEPTH))
    for depth in (MAX_JSON_DEPTH + 1, 5_000, 100_000):  # 100,000 deep raised RecursionError (a 500)
        with pytest.raises(InvalidRequest) as caught:
            parse_json(_nested(depth), "The request body")
        assert caught.value.issues[0].code == "too-long"
        assert f"more than {MAX_JSON_DEPTH} levels" in caught.value.diagnostics
    with pytest.raises(InvalidRequest):
        parse_json('{"a": ', "body")


def test_depth_check_is_iterative() -> None:
    deep: Any = []
    for _ in range(50_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert depth_exceeds(deep, 100)
    assert not depth_exceeds({"a": [{"b": 1}, 2]}, 3) and depth_exceeds({"a": [{"b": {}}]}, 3)
    assert not depth_exceeds("scalar", 0)


def test_doubling_patch_stops_before_the_operation_that_passes_the_limit() -> None:
    document = {"resourceType": "Patient", "x": ["a" * 1000]}
    doubling = _json_patch([{"op": "copy", "from": "/x", "path": "/x/-"}] * 22)
    limit = 1_048_576
    # Operation n (0-based) makes /x hold 2^(n+1) copies of ~1 KB: the first one past 1 MB is n = 10.
    with pytest.raises(PayloadTooLarge) as caught:
        apply_bounded(document, doubling, limit)
    assert "operation 10 (copy)" in caught.value.diagnostics
    # The same patch cut before that operation applies and stays under the limit.
    allowed = apply_bounded(document, _json_patch([{"op": "copy", "from": "/x", "path": "/x/-"}] * 10), limit)
    text = json.dumps(allowed)
    assert len(text) <= limit and text.count("a" * 1000) == 2**10
    assert document == {"resourceType": "Patient", "x": ["a" * 1000]}  # the stored version is not touched


def test_operation_count_limit() -> None:
    _json_patch([{"op": "test", "path": "/active", "value": True}] * 100)
    with pytest.raises(PayloadTooLarge):
        _json_patch([{"op": "test", "path": "/active", "value": True}] * 101)


@pytest.mark.parametrize("operations", [
    [],
    [{"op": "add", "path": "/active", "value": True}],
    [{"op": "replace", "path": "/name/0/family", "value": "Ng"}, {"op": "remove", "path": "/gender"}],
    [{"op": "move", "from": "/name/0", "path": "/name/-"}, {"op": "test", "path": "/name/0/family", "value": "B"}],
    [{"op": "copy", "from": "/name/1", "path": "/name/0"}, {"op": "add", "path": "", "value": {"resourceType": "X"}}],
])
def test_bounded_patch_gives_the_same_result_as_json_patch(operations: list[dict[str, Any]]) -> None:
    document = {"resourceType": "Patient", "name": [{"family": "A"}, {"family": "B"}], "gender": "other"}
    expected = jsonpatch.apply_patch(copy.deepcopy(document), operations)
    assert apply_bounded(document, _json_patch(operations), 1_048_576) == expected


def test_patch_that_nests_too_deep_is_422() -> None:
    chain: Any = {}
    for _ in range(90):
        chain = {"a": chain}
    for copies in (1, 5):  # 180 levels (the final check), then far past the recursion limit
        operations = [{"op": "add", "path": "/x", "value": chain}] + [
            {"op": "copy", "from": "/x", "path": "/x" + "/a" * (90 * 2**n)} for n in range(copies)]
        with pytest.raises(Unprocessable):
            apply_bounded({"resourceType": "Patient"}, _json_patch(operations), 1_048_576)


def test_unique_entries_keeps_one_item_per_key_in_order() -> None:
    a, b = IndexEntry("t|Patient|phone|k1.00ff", "p1", "p1"), IndexEntry("t|Patient|phone|k1.0a0a", "p1", "p1")
    same_partition_other_sort = IndexEntry("t|Patient|phone|k1.00ff", "p2", "p2")
    assert unique_entries([a, b, a, same_partition_other_sort, b]) == [a, b, same_partition_other_sort]


@pytest.mark.parametrize(("vid", "valid"), [
    ("1", True), ("999999999999999999", True), ("0", False), ("²", False), ("1²", False), ("9" * 19, False),
    ("9" * 5000, False), ("-1", False), ("", False),
])
def test_version_ids_are_ascii_digits_that_fit(vid: str, valid: bool) -> None:
    from esus.domain.resources import _is_version

    assert _is_version(vid) is valid  # '²' passed str.isdigit() and then failed int(): a 500 on vread
