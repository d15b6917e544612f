"""Lambda's 6 MB payload as the code counts it, the sealed-object format, and responses that would not fit."""

from __future__ import annotations

import json
import os

import pytest

from esus.errors import TooCostly
from esus.http.api import page_response, write_bundle_response
from esus.limits import (
    DEFAULT_MAX_BODY_BYTES,
    LAMBDA_REQUEST_BYTES,
    LAMBDA_RESPONSE_BYTES,
    MAX_REPRESENTATION_BYTES,
    MAX_RESOURCE_BYTES,
    event_body_size,
    representation_size,
    response_body_size,
)
from esus.security.crypto import IntegrityFailure
from esus.storage.objects import object_key, pack, parse_key, unpack


def test_the_limits_leave_room_for_the_rest_of_the_event_and_the_response() -> None:
    assert LAMBDA_REQUEST_BYTES - DEFAULT_MAX_BODY_BYTES >= 64 * 1024  # headers twice, a bearer token, the context
    # A body at the limit, stored with the server's meta, fits a response even as a Bundle entry.
    assert DEFAULT_MAX_BODY_BYTES + 4096 < MAX_RESOURCE_BYTES < MAX_REPRESENTATION_BYTES < LAMBDA_RESPONSE_BYTES
    assert DEFAULT_MAX_BODY_BYTES // 4 * 3 == 4_620_288  # the largest raw Binary (base64 in the event)


def test_a_body_counts_as_it_sits_in_the_event() -> None:
    assert event_body_size("QUJD", base64_encoded=True) == 4
    assert event_body_size('{"a":"b"}', base64_encoded=False) == len('"{\\"a\\":\\"b\\"}"')
    assert event_body_size("é", base64_encoded=False) == len('"\\u00e9"')  # the most non-ASCII can take
    text = json.dumps({"data": "x" * 100_000, "quote": '"' * 10})
    assert response_body_size(text) >= len(json.dumps(text))  # a short text: an upper bound
    big = "é" * 1_100_000
    assert response_body_size(big) == len(json.dumps(big)) == 6 * len(big) + 2
    assert representation_size({"a": big}) > MAX_REPRESENTATION_BYTES


def test_objects_pack_and_unpack_and_refuse_damage() -> None:
    sealed = {"text": os.urandom(100), "meta.source": b"", "content": os.urandom(5000) + b"\n\n"}
    body = pack('{"resourceType":"DocumentReference","text":null}', sealed)
    assert unpack(body) == ('{"resourceType":"DocumentReference","text":null}', sealed)
    for damaged in (body[:-1], body + b"x", b"garbage" + body, body.replace(b'"sealed"', b'"sealeD"')):
        with pytest.raises(IntegrityFailure):
            unpack(damaged)
    key = object_key("acme", "Binary", "b-1", 3, "a" * 64)
    assert key == f"acme/Binary/b-1/3/{'a' * 64}" and parse_key(key) == ("acme", "Binary", "b-1", 3, "a" * 64)
    assert parse_key("acme/Binary/b-1/x/" + "a" * 64) is None and parse_key("stray.txt") is None


def test_a_page_too_large_for_a_response_names_a_count_that_fits() -> None:
    entry = {"resource": {"resourceType": "Binary", "data": "A" * 2_500_000}}
    with pytest.raises(TooCostly) as refused:
        page_response({"resourceType": "Bundle", "type": "searchset", "entry": [entry] * 5})
    assert refused.value.status == 400 and "_count=2" in refused.value.diagnostics
    assert page_response({"resourceType": "Bundle", "type": "searchset", "entry": [entry] * 2}).status_code == 200


def test_a_write_response_too_large_for_a_response_drops_the_resources() -> None:
    minimal = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"response": {"status": "201"}}] * 3}
    full = {**minimal, "entry": [{"resource": {"data": "A" * 2_500_000}, "response": {"status": "201"}}] * 3}
    assert json.loads(write_bundle_response(full, minimal).body) == minimal
    fitting = {**minimal, "entry": [{"resource": {"data": "A"}, "response": {"status": "201"}}] * 3}
    assert json.loads(write_bundle_response(fitting, minimal).body) == fitting


def test_the_largest_storable_resource_still_fits_a_page_of_one() -> None:
    from esus.errors import PayloadTooLarge
    from esus.limits import require_representable

    def binary(size: int) -> dict[str, object]:
        shell = {"resourceType": "Binary", "id": "b", "contentType": "application/pdf", "data": ""}
        exact = len(json.dumps(json.dumps(shell, separators=(",", ":"))))
        return {**shell, "data": "A" * (size - exact)}

    largest = binary(MAX_RESOURCE_BYTES)
    assert representation_size(largest) == MAX_RESOURCE_BYTES
    require_representable(largest)
    with pytest.raises(PayloadTooLarge):
        require_representable(binary(MAX_RESOURCE_BYTES + 1))
    page = {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "self", "url": "x" * 4000}],
            "entry": [{"fullUrl": "https://example.org/fhir/Binary/b", "resource": largest,
                       "search": {"mode": "match"}}]}
    assert page_response(page).status_code == 200
