"""The importer without a server: retries on a mock transport, outcome classification, the plan (dedup,
reference rewriting) over the whole Synthea corpus, and every corpus resource against the server's validator.
The HTTP side (writes, Provenance, resume, Ctrl-C) is in tests/e2e/test_import.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from esus.domain.fhir import validate_resource
from esus_dev.importer import Entry, FhirClient, RetryPolicy, build_plan, classify
from tests.conftest import SYNTHEA, references_in

CORPUS = sorted(SYNTHEA.glob("*.json"))
needs_corpus = pytest.mark.skipif(not CORPUS, reason="../shared/synthea is not next to the repo")


class FlakyServer:
    """429 (Retry-After), 503, then a dropped connection, then success."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(time.monotonic())
        step = len(self.calls)
        if step == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        if step == 2:
            return httpx.Response(503)
        if step == 3:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET":
            return httpx.Response(404)
        return httpx.Response(201, headers={"ETag": 'W/"1"'})


@pytest.fixture
def flaky_client() -> Iterator[tuple[FhirClient, FlakyServer]]:
    server = FlakyServer()
    with FhirClient("http://esus.test/fhir", "token", 1, RetryPolicy(retries=3, base_delay=0.05),
                    threading.Event(), transport=httpx.MockTransport(server)) as client:
        yield client, server


def test_retries_honour_retry_after_and_back_off(flaky_client: tuple[FhirClient, FlakyServer]) -> None:
    client, server = flaky_client
    assert client.current_version("Patient/p1") is None
    assert len(server.calls) == 4
    assert server.calls[1] - server.calls[0] >= 1.0  # Retry-After: 1
    entry = Entry(Path("x.ndjson"), 1, "Patient", "p1", {"resourceType": "Patient", "id": "p1"}, "d")
    assert client.put(entry, "{}") == (201, 1)


def test_classification_and_plan_deduplication(tmp_path: Path) -> None:
    assert classify(None, 201, 1) == "created"
    assert classify(None, 200, 1) == "created"  # a retried PUT whose first attempt had created it
    assert classify(3, 200, 3) == "unchanged"
    assert classify(3, 200, 4) == "updated"
    assert classify(3, 201, 4) == "created"  # revived after delete
    (tmp_path / "a.ndjson").write_text('{"resourceType":"Patient","id":"p","gender":"male"}\n')
    (tmp_path / "b.ndjson").write_text('{"resourceType":"Patient","id":"p","gender":"female"}\n')
    plan = build_plan([tmp_path])
    assert [e.body["gender"] for e in plan.entries] == ["female"]
    assert [e.body["gender"] for e in plan.superseded] == ["male"]


@needs_corpus
def test_plan_of_the_whole_corpus_sends_each_resource_once_with_resolvedreferences_in() -> None:
    """What the full-corpus import sends, read independently of the importer (tests/e2e imports a sample
    over HTTP; `make test-full` imports all of it)."""
    keys: set[tuple[str, str]] = set()
    entries = 0
    for path in CORPUS:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            keys.add((entry["resource"]["resourceType"], entry["resource"]["id"]))
            entries += 1
    plan = build_plan([SYNTHEA])
    assert plan.files == len(CORPUS) and plan.unreadable == []
    assert {(e.resource_type, e.resource_id) for e in plan.entries} == keys
    assert len(plan.entries) == len(keys)  # one write per Type/id
    assert len(plan.superseded) == entries - len(keys) > 0  # Organizations/Practitioners repeated across files
    planned = {f"{e.resource_type}/{e.resource_id}" for e in plan.entries}
    for entry in plan.entries:  # every Bundle-local reference became Type/id of a planned resource
        for reference in references_in(entry.body):
            assert not reference.startswith("urn:"), (entry.label, reference)
            if not reference.startswith("#"):  # contained resources aside
                assert reference in planned, (entry.label, reference)


@needs_corpus
def test_every_corpus_resource_passes_the_servers_validation() -> None:
    """The check each PUT of the import goes through, for every resource of the corpus (the sample
    imported over HTTP in tests/e2e proves the write path; this proves no other resource would be refused)."""
    plan = build_plan([SYNTHEA])
    for entry in plan.entries:
        assert validate_resource(entry.resource_type, entry.body) is entry.body, entry.label
