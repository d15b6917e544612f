"""Crashes between every pair of steps of a write whose search index items go beside its transaction
(docs/SEARCH.md, "Crashes between steps"): a large resource's single write (its TransactWriteItems and
its BatchWriteItem calls run side by side, so any subset of them may have finished) and a transaction
Bundle (its TransactWriteItems, then its BatchWriteItem calls side by side).

After each crash: no search returns a resource whose current version does not match it; `esus verify`
reports exactly the missing items of a committed version (and counts orphans and older versions' items
as stale, not as problems); `esus verify --repair-index` writes the missing items and deletes the stale
ones, after which every search returns exactly the brute-force answer over the current versions."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from esus.container import services
from esus.domain.search_semantics import matches, parse_search
from esus.model import Version
from esus.ops.verify import VerifyReport, verify_all
from esus.storage.store import BATCH_WRITE_LIMIT
from tests.handlers.conftest import InProcessStack

WRITES = ("transact_write_items", "batch_write_item")
LONG_WORDS = ["Abbotsford", "Blackwater", "Chesterton", "Dunmore", "Eversleigh", "Fairhaven", "Glenwood",
              "Fernhill", "Greystone", "Hollingsworth", "Ingleside", "Juniper", "Kingsbridge", "Larchmont",
              "Meadowbrook", "Northfield", "Oakhurst", "Pemberton", "Queensbury", "Riverside"]


class _Serialised:
    """One DynamoDB call at a time, as the local stack's moto server takes them (moto's in-process backend
    is not thread-safe; a write's transaction and its deferred items run side by side)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if not callable(real) or name.startswith("_"):
            return real

        def call(**kwargs: Any) -> Any:
            with self._lock:
                return real(**kwargs)

        return call


@pytest.fixture
def local(local: InProcessStack) -> InProcessStack:
    local.ddb._client = _Serialised(local.ddb._client)
    return local


class Crash(Exception):
    """The process died here: this call never reaches DynamoDB, and neither does any later one of its kind."""


def crash_after(local: InProcessStack, transactions: int, batches: int) -> Counter[str]:
    """Let the first `transactions` TransactWriteItems and the first `batches` BatchWriteItem calls
    through, then crash every later one (calls that run side by side finish in any order: every
    combination is a state a real crash can leave). Returns, as the write goes on, how many index items
    the BatchWriteItem calls let through carried ("items")."""
    lock = threading.Lock()
    seen: Counter[str] = Counter()
    allowed = {"transact_write_items": transactions, "batch_write_item": batches}

    def fault_for(operation: str) -> Callable[[dict[str, Any]], None]:
        def fault(kwargs: dict[str, Any]) -> None:
            with lock:
                seen[operation] += 1
                if seen[operation] > allowed[operation]:
                    raise Crash(operation)
                if operation == "batch_write_item":
                    seen["items"] += sum(len(requests) for requests in kwargs["RequestItems"].values())
        return fault

    for operation in WRITES:
        local.ddb.faults[operation] = fault_for(operation)
    return seen


def restart(local: InProcessStack) -> None:
    for operation in WRITES:
        local.ddb.faults.pop(operation, None)


def big_patient(pid: str, family: str, words: list[str]) -> dict[str, Any]:
    """More search index items than one transaction holds beside the version: they go beside it."""
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Alexandra"]}],
            "birthDate": "1961-05-12", "gender": "female",
            "address": [{"line": [" ".join(words), " ".join(w[::-1].capitalize() for w in words)], "city": words[0],
                         "postalCode": "12345"}],
            "telecom": [{"system": "phone", "value": "555-326-5839"}]}


def index_count(resource: dict[str, Any]) -> int:
    version = Version(resource_type=resource["resourceType"], resource_id=resource["id"], version=1,
                      last_updated="2024-01-01T00:00:00Z", deleted=False, resource=resource)
    return len(services().resources.index_entries("acme", version))


def _verify(repair: bool = False) -> VerifyReport:
    """After the crash nothing is in flight any more: young orphans count as such at once."""
    return verify_all(services(), "acme", repair_index=repair, orphan_min_age=timedelta(0))


def _current(local: InProcessStack, reference: str) -> dict[str, Any] | None:
    result = local.request("GET", f"/{reference}")
    return local.json(result) if result.status == 200 else None


def check_searches(local: InProcessStack, queries: list[tuple[str, dict[str, str]]], references: list[str],
                   exact: bool) -> None:
    """Each query's results are among the resources whose current version matches it (no false positive,
    ever); with `exact`, they are all of them."""
    currents = {ref: _current(local, ref) for ref in references}
    for resource_type, params in queries:
        criteria = parse_search(resource_type, {k: [v] for k, v in params.items()}, lenient=False).criteria
        expected = {ref.split("/")[1] for ref, resource in currents.items()
                    if resource is not None and ref.startswith(f"{resource_type}/") and matches(resource, criteria)}
        query = "&".join(f"{k}={v}" for k, v in params.items())
        result = local.request("GET", f"/{resource_type}?{query}&_count=100")
        assert result.status == 200, result.body
        found = {e["resource"]["id"] for e in local.json(result).get("entry", [])}
        assert found <= expected, (resource_type, params, found - expected)
        if exact:
            assert found == expected, (resource_type, params, expected - found)


def check_verify_and_repair(local: InProcessStack, key: str, missing: int, stale: int,
                            queries: list[tuple[str, dict[str, str]]], references: list[str]) -> None:
    """What docs/SEARCH.md promises after the crash, then after the repair."""
    report = _verify()
    missing_problems = [p for p in report.problems if p.startswith(f"{key}: index item ") and "is missing" in p]
    assert report.problems == missing_problems and len(missing_problems) == missing, report.problems
    assert report.tenant("acme").stale_index_items == stale
    check_searches(local, queries, references, exact=missing == 0)
    check_repair(local, missing + stale, queries, references)


def check_repair(local: InProcessStack, repairs: int, queries: list[tuple[str, dict[str, str]]],
                 references: list[str]) -> None:
    """`esus verify --repair-index` repairs exactly `repairs` items; then verify is clean and searches exact."""
    repaired = _verify(repair=True)
    assert repaired.tenant("acme").repaired_index_items == repairs
    after = _verify()
    assert after.ok and after.tenant("acme").stale_index_items == 0, after.problems
    check_searches(local, queries, references, exact=True)


# ---------- a large resource's single write: its transaction and its deferred items side by side ----------
OLD = big_patient("big", "Oldfamily", LONG_WORDS[:10])
NEW = big_patient("big", "Newfamily", LONG_WORDS[10:])
PATIENT_QUERIES = [
    ("Patient", {"family": "oldfam"}), ("Patient", {"family": "newfam"}), ("Patient", {"name": "alexandra"}),
    ("Patient", {"address": "abbots"}), ("Patient", {"address": "meadow"}), ("Patient", {"address-city": "kingsb"}),
    ("Patient", {"address-city": "abbotsford"}), ("Patient", {"birthdate": "1961-05"}),
    ("Patient", {"gender": "female"}),
    ("Patient", {"phone": "5553265839", "family": "newfamily"}), ("Patient", {"family:exact": "Oldfamily"}),
]
NEW_BATCHES = 6  # enough to cover every BatchWriteItem the new version's items need (checked below)


@pytest.mark.parametrize("transactions", [0, 1])
@pytest.mark.parametrize("batches", range(NEW_BATCHES + 1))
def test_crash_during_a_large_update(local: InProcessStack, transactions: int, batches: int) -> None:
    created = local.request("PUT", "/Patient/big", OLD)
    assert created.status == 201, created.body
    old_items, new_items = index_count(OLD), index_count(NEW)
    needed = -(-new_items // BATCH_WRITE_LIMIT)
    assert new_items > 100 and needed <= NEW_BATCHES  # beside the transaction, in `needed` BatchWriteItem calls
    passed = crash_after(local, transactions, batches)
    result = local.request("PUT", "/Patient/big", NEW, headers={"If-Match": 'W/"1"'})
    restart(local)
    committed, written = transactions == 1, passed["items"]
    assert passed["batch_write_item"] == needed  # every chunk is sent, side by side with the transaction
    assert result.status == (200 if committed and batches >= needed else 500), result.body[:300]
    assert (_current(local, "Patient/big") or {})["name"][0]["family"] == ("Newfamily" if committed else "Oldfamily")
    check_searches(local, PATIENT_QUERIES, ["Patient/big"], exact=False)
    if committed:  # the version's missing items are reported; the old version's are stale
        check_verify_and_repair(local, "acme|Patient|big", new_items - written, old_items, PATIENT_QUERIES,
                                ["Patient/big"])
    else:  # orphans only: nothing to report, the written ones are stale
        check_verify_and_repair(local, "acme|Patient|big", 0, written, PATIENT_QUERIES, ["Patient/big"])


# ---------- a transaction Bundle: its transaction and its deferred items side by side ----------
LOINC = "http://loinc.org"


def observation(oid: str, code: str, value: float, day: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": f"2024-06-{day:02d}",
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"}}


def put(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


BUNDLE_PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Chalmers", "given": ["Peter"]}],
                  "birthDate": "1974-12-25", "address": [{"city": "Springfield"}]}
CHANGED = observation("o0", "8310-5", 37.0, 2)  # o0 exists before the Bundle, as 8867-4: the Bundle changes it
BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": [
    put(BUNDLE_PATIENT), put(CHANGED), *(put(observation(f"o{n}", "8867-4", 100 + n, n)) for n in range(1, 4))]}
BUNDLE_REFS = ["Patient/p1", *(f"Observation/o{n}" for n in range(4))]
BUNDLE_QUERIES = [
    ("Observation", {"patient": "p1"}), ("Observation", {"code": f"{LOINC}|8867-4"}),
    ("Observation", {"code": "8310-5"}), ("Observation", {"patient": "p1", "date": "ge2024-06-03"}),
    ("Observation", {"value-quantity": "gt102"}), ("Patient", {"name": "chalm"}),
    ("Patient", {"birthdate": "1974"}), ("Patient", {"address-city": "springfield"}),
]


BUNDLE_BATCHES = 6  # enough to cover every BatchWriteItem the Bundle's items need (checked below)


@pytest.mark.parametrize("transactions", [0, 1])
@pytest.mark.parametrize("batches", range(BUNDLE_BATCHES + 1))
def test_crash_during_a_transaction_bundle(local: InProcessStack, transactions: int, batches: int) -> None:
    """A transaction Bundle of one TransactWriteItems sends its search index items side by side with it: a crash
    can leave the transaction done or not, and any number of the BatchWriteItem calls done."""
    before = local.request("PUT", "/Observation/o0", observation("o0", "8867-4", 99, 1))
    assert before.status == 201
    total = sum(index_count(e["resource"]) for e in BUNDLE["entry"])
    needed = -(-total // BATCH_WRITE_LIMIT)
    assert needed <= BUNDLE_BATCHES, needed
    old_o0 = index_count(observation("o0", "8867-4", 99, 1))
    passed = crash_after(local, transactions, batches)
    result = local.request("POST", "", BUNDLE)
    restart(local)
    committed, written = transactions == 1, passed["items"]
    assert passed["batch_write_item"] == needed  # every chunk is sent, side by side with the transaction
    assert result.status == (200 if committed and batches >= needed else 500), result.body[:300]
    assert (_current(local, "Patient/p1") is not None) == committed
    check_searches(local, BUNDLE_QUERIES, BUNDLE_REFS, exact=False)
    report = _verify()
    if not committed:  # orphans only: nothing to report, the written ones are stale
        assert report.ok, report.problems
        assert report.tenant("acme").stale_index_items == written
        check_repair(local, written, BUNDLE_QUERIES, BUNDLE_REFS)
        return
    # Each entry's missing items are reported against its own resource; o0's first version's items are stale.
    missing = total - written
    assert len(report.problems) == missing and all("is missing" in p for p in report.problems), report.problems
    assert report.tenant("acme").stale_index_items == old_o0
    check_searches(local, BUNDLE_QUERIES, BUNDLE_REFS, exact=missing == 0)
    check_repair(local, missing + old_o0, BUNDLE_QUERIES, BUNDLE_REFS)


def test_repair_leaves_the_index_items_of_a_write_still_committing(local: InProcessStack) -> None:
    """A write's items beside its transaction exist before its version does. `esus verify --repair-index` against a
    live store leaves such young items of a newer version alone (they would be missing once it commits); once
    they are older than the orphan age, they are orphans and are deleted."""
    created = local.request("PUT", "/Patient/big", OLD)
    assert created.status == 201
    passed = crash_after(local, 0, NEW_BATCHES)  # the batches land, the transaction has not happened (yet)
    local.request("PUT", "/Patient/big", NEW, headers={"If-Match": 'W/"1"'})
    restart(local)
    assert passed["items"] > 0
    live = verify_all(services(), "acme", repair_index=True)
    assert live.ok and live.tenant("acme").repaired_index_items == 0
    assert _verify().tenant("acme").stale_index_items == passed["items"]  # still there: nothing was deleted
    assert _verify(repair=True).tenant("acme").repaired_index_items == passed["items"]
    assert _verify().tenant("acme").stale_index_items == 0
