"""Transactions phase (docs/TRANSACTIONS.md): 100-, 500- and 1,000-entry transaction Bundles (Synthea entries),
with DynamoDB calls, sequential round trips, wall time and write units; and a plain read with and without a
pending transaction on the item."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from esus_dev.bench import REPO
from esus_dev.bench.gateway import Client, TableJanitor
from esus_dev.bench.recorder import AwsCall, sequential_round_trips
from esus_dev.bench.report import ReadRow, Report, TransactionRow

SIZES = (100, 500, 1000)
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
READS = 20
SYNTHEA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared")) / "synthea"


# ---------- the Bundles ----------
def synthea_entries(n: int) -> list[dict[str, Any]]:
    """n entries from the Synthea patient Bundles, whole Bundles first; an entry is taken only when every
    urn:uuid it references is an entry already taken (a transaction must resolve them all)."""
    from esus.domain.fhir import reference_strings  # here: the cold-start child imports this module (stdlib only)

    entries: list[dict[str, Any]] = []
    paths = sorted(p for p in SYNTHEA.glob("*.json") if not p.name.startswith(("hospital", "practitioner")))
    for path in paths:
        known: set[str] = set()
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            if len(entries) == n:
                return entries
            refs = {r for r in reference_strings(entry.get("resource")) if r.startswith("urn:uuid:")}
            if refs <= known:
                entries.append(entry)
                known.add(entry.get("fullUrl", ""))
    while len(entries) < n:  # no Synthea data here: self-contained Patients
        entries.append({"request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "name": [{"family": f"B{len(entries)}"}]}})
    return entries


# ---------- write units ----------
def _size(value: dict[str, Any]) -> int:
    """An attribute value's size by DynamoDB's rules (names and values in bytes; numbers ~ digits / 2)."""
    (kind, inner), = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return len(str(inner)) // 2 + 1
    if kind == "B":
        return len(inner)
    if kind == "L":
        return 3 + sum(1 + _size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _size(v) for k, v in inner.items())
    return 1


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + _size(value) for name, value in item.items())


def _key(params: dict[str, Any]) -> str:
    key = params.get("Key") or {k: v for k, v in (params.get("Item") or {}).items() if k in ("pk", "sk", "v")}
    return json.dumps([params.get("TableName"), key], sort_keys=True)


def write_units(calls: list[AwsCall]) -> int:
    """WCU of a request's writes: 1 per started KB of each item written, twice inside TransactWriteItems.
    Updates and deletes are charged the size of the item as this request last wrote it (its record),
    else 1 KB (a lower bound)."""
    sizes: dict[str, int] = {}
    total = 0

    def put(params: dict[str, Any], factor: int) -> int:
        size = item_size(params["Item"])
        sizes[_key(params)] = size
        return factor * math.ceil(size / 1024)

    def other(params: dict[str, Any], factor: int) -> int:
        return factor * max(1, math.ceil(sizes.get(_key(params), 0) / 1024))

    for call in calls:
        p = call.params
        if call.operation == "PutItem":
            total += put(p, 1)
        elif call.operation in ("UpdateItem", "DeleteItem"):
            total += other(p, 1)
        elif call.operation == "BatchWriteItem":
            for table, requests in p["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        total += put({"TableName": table, **request["PutRequest"]}, 1)
                    else:
                        total += other({"TableName": table, **request["DeleteRequest"]}, 1)
        elif call.operation == "TransactWriteItems":
            for item in p["TransactItems"]:
                (kind, body), = item.items()
                total += put(body, 2) if kind == "Put" else other(body, 2)
    return total


# ---------- the phase ----------
@contextmanager
def patched(target: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, replacement)
    try:
        yield
    finally:
        setattr(target, name, original)


def transactions_phase(client: Client, report: Report, raw_ddb: Any, sizes: tuple[int, ...] = SIZES) -> None:
    janitor = TableJanitor(raw_ddb, client.stack)
    for n in sizes:
        janitor.reset()  # moto's cost grows with what is stored: every size starts from empty tables
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": synthea_entries(n)}
        started = time.perf_counter()
        response = client.call(f"transaction of {n}", "POST", "/fhir", bundle)
        sample = client.samples.pop()
        calls = [c for c in sample.calls if c.service == "dynamodb"]
        writes = [c.started for c in calls if c.operation in WRITES]
        created = sum(1 for e in response.body["entry"] if e["response"]["status"].startswith("201"))
        report.transactions.append(TransactionRow(
            label=f"transaction of {n}", entries=n, created=created, calls=len(calls),
            round_trips=sequential_round_trips(calls), wall_ms=sample.handler_s * 1000,
            prepare_ms=(min(writes) - started) * 1000 if writes else math.nan,
            write_units=write_units(calls), bytes_in=len(json.dumps(bundle)),
            ops=", ".join(f"{op} x{k}" for op, k in Counter(c.operation for c in calls).most_common())))
    janitor.reset()
    report.transactions.append(single_writes(client, sizes[0]))
    janitor.reset()
    report.reads = read_rows(client)
    janitor.reset()


def single_writes(client: Client, n: int) -> TransactionRow:
    """The same n entries as n single creates (POST /Type, the one-TransactWriteItems path): the baseline."""
    samples = []
    bytes_in = 0
    for entry in synthea_entries(n):
        resource = entry["resource"]
        bytes_in += len(json.dumps(resource))
        client.call("single create", "POST", f"/fhir/{resource['resourceType']}", resource, 201)
        samples.append(client.samples.pop())
    calls = [c for s in samples for c in s.calls if c.service == "dynamodb"]
    return TransactionRow(
        label=f"{n} single creates (baseline)", entries=n, created=n, calls=len(calls),
        round_trips=sum(sequential_round_trips([c for c in s.calls if c.service == "dynamodb"]) for s in samples),
        wall_ms=sum(s.handler_s for s in samples) * 1000, prepare_ms=math.nan, write_units=write_units(calls),
        bytes_in=bytes_in, ops=", ".join(f"{op} x{k}" for op, k in Counter(c.operation for c in calls).most_common()))


def read_rows(client: Client) -> list[ReadRow]:
    from esus.storage.transactions import TransactionStore

    def pair(tag: str) -> tuple[str, str, dict[str, Any]]:
        """A Patient, and a transaction that changes it among 12 new Patients (a large transaction)."""
        patient = client.call("setup", "POST", "/fhir/Patient", {"resourceType": "Patient", "name": [
            {"family": tag}]}, 201).body
        other = client.call("setup", "POST", "/fhir/Patient", {"resourceType": "Patient"}, 201).body
        entries = [{"request": {"method": "POST", "url": "Patient"},
                    "resource": {"resourceType": "Patient", "name": [{"family": f"{tag}{i}"}]}} for i in range(12)]
        entries.append({"request": {"method": "PUT", "url": f"Patient/{patient['id']}"},
                        "resource": {**patient, "gender": "other"}})
        return patient["id"], other["id"], {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def measure(label: str, pid: str) -> ReadRow:
        samples = []
        for _ in range(READS):
            client.call(label, "GET", f"/fhir/Patient/{pid}")
            samples.append(client.samples.pop())
        calls = [len([c for c in s.calls if c.service == "dynamodb"]) for s in samples]
        return ReadRow(label, max(calls), statistics.median(s.handler_s for s in samples) * 1000,
                       statistics.median(s.aws_s for s in samples) * 1000)

    rows = []
    pid, other, bundle = pair("free")
    rows.append(measure("read, no transaction", pid))

    def no_commit(*_: Any, **__: Any) -> None:
        from esus.storage.errors import TransactionAborted

        raise TransactionAborted("bench: the committer stops before its commit")

    pid, other, bundle = pair("pending")
    with patched(TransactionStore, "_commit_record", no_commit), \
            patched(TransactionStore, "_abandon", lambda *_: True):
        client.call("setup", "POST", "/fhir", bundle, 409)  # leaves its locks and pending items
    rows.append(measure("read, item locked by a pending transaction", pid))
    rows.append(measure("read, another item while a transaction is pending", other))

    def no_roll_forward(*_: Any, **__: Any) -> None:
        raise RuntimeError("bench: the committer stops after its commit")

    pid, other, bundle = pair("committed")
    with patched(TransactionStore, "_roll_forward", no_roll_forward):
        client.call("setup", "POST", "/fhir", bundle)  # committed, nothing rolled forward
    rows.append(measure("read, item of a committed transaction not rolled forward", pid))
    client.samples.clear()
    return rows
