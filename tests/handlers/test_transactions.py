"""Large transaction Bundles (docs/TRANSACTIONS.md) on the in-process stack: all or nothing beyond 100
DynamoDB items, crashes injected at every step of the protocol, writers and readers meeting locks,
conditional URLs and references, and `esus verify` reporting stuck transactions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from esus.container import services
from esus.ops.verify import verify_all
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

WRITE_CALLS = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")


def _entry(method: str, url: str, resource: dict[str, Any] | None = None, full_url: str | None = None,
           **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _patients_with_observations(n: int, tag: str = "big") -> dict[str, Any]:
    """n Patients, each with an Observation that references it by urn:uuid: ~18 DynamoDB items per pair
    on the transaction path, so n >= 6 is a large transaction."""
    entries = []
    for i in range(n):
        urn = f"urn:uuid:{uuid.uuid4()}"
        entries.append(_entry("POST", "Patient", {
            "resourceType": "Patient", "identifier": [{"system": "urn:test", "value": f"{tag}-{i}"}],
            "name": [{"family": f"Fam{i}"}], "telecom": [{"system": "phone", "value": f"555-000-{i:04d}"}]}, urn))
        entries.append(_entry("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": f"{tag} {i}"},
            "subject": {"reference": urn}}))
    return _transaction(entries)


def _records(local: InProcessStack, tenant: str = "acme") -> list[dict[str, Any]]:
    items = local.ddb._client.query(TableName=get_settings().index_table, KeyConditionExpression="pk = :pk",
                                    ExpressionAttributeValues={":pk": {"S": f"{tenant}|_txn"}})["Items"]
    return items


def _visible(local: InProcessStack, tenant: str = "acme") -> dict[str, int]:
    """What readers see of the tenant: by type listing, search, type and system history, Provenance."""
    def total(path: str) -> int:
        result = local.request("GET", path, tenant=tenant)
        assert result.status == 200, (path, result.body[:300])
        return len(local.json(result).get("entry") or [])

    return {
        "patients": total("/Patient?_count=100"),
        "observations": total("/Observation?_count=100"),
        "by_identifier": total("/Patient?identifier=urn:test|big-3"),
        "patient_history": total("/Patient/_history?_count=100"),
        "system_history": total("/_history?_count=100"),
    }


def test_a_large_transaction_commits_every_entry_and_leaves_no_protocol_state(local: InProcessStack) -> None:
    result = local.request("POST", "", _patients_with_observations(8))
    assert result.status == 200, result.body[:500]
    entries = local.json(result)["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 16
    assert any(c == "update_item" for c in local.ddb.calls)  # the record's commit: the protocol ran
    patient = entries[0]["response"]["location"].rsplit("/_history", 1)[0]
    observation = entries[1]["response"]["location"].rsplit("/_history", 1)[0]
    assert local.json(local.request("GET", f"/{observation}"))["subject"] == {"reference": patient}
    assert local.request("GET", f"/{patient}/_history/1").status == 200
    assert _visible(local) == {"patients": 8, "observations": 8, "by_identifier": 1, "patient_history": 8,
                               "system_history": 16}
    provenance = local.json(local.request("GET", f"/Provenance?target={patient}"))
    assert len(provenance["entry"]) == 1
    records = _records(local)
    assert len(records) == 1 and "fin" in records[0] and "ents" not in records[0]
    for table in ("resources_table", "history_table", "provenance_table", "index_table"):
        items = local.ddb._client.scan(TableName=getattr(get_settings(), table))["Items"]
        assert not [i for i in items if "tx" in i or "txv" in i], table  # no lock or marker left
    report = verify_all(services())
    assert report.ok, report.problems


# ---------- crashes at every step of the protocol ----------
ALL_CALLS = ("get_item", "query", "scan", "batch_get_item", *WRITE_CALLS)


class Crash:
    """Lets the first `survive` write calls through; then the process is gone: every call fails."""

    def __init__(self, local: InProcessStack, survive: int) -> None:
        import threading

        self.local, self.survive, self.writes, self.dead = local, survive, 0, False
        self._lock = threading.Lock()
        for operation in ALL_CALLS:
            local.ddb.faults[operation] = self._check(operation)

    def _check(self, operation: str) -> Any:
        def check(_: dict[str, Any]) -> None:
            with self._lock:
                if not self.dead and operation in WRITE_CALLS:
                    self.dead = self.writes >= self.survive
                    self.writes += 1
                if self.dead:
                    raise ClientError({"Error": {"Code": "InternalServerError", "Message": "crashed"}}, operation)
        return check

    def stop(self) -> None:
        for operation in ALL_CALLS:
            self.local.ddb.faults.pop(operation, None)


def _setup(local: InProcessStack, tenant: str) -> tuple[str, str, dict[str, Any]]:
    """An existing Patient (the transaction updates it) and Observation (it deletes it), and the transaction:
    6 new Patients with an Observation each, a conditional create, the update and the delete."""
    patient = local.json(local.request("POST", "/Patient", {"resourceType": "Patient", "name": [{"family": "before"}]},
                                       tenant=tenant))
    observation = local.json(local.request("POST", "/Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "old"}}, tenant=tenant))
    bundle = _patients_with_observations(6, "crash")
    bundle["entry"] += [
        _entry("PUT", f"Patient/{patient['id']}", {**patient, "name": [{"family": "after"}]}, ifMatch='W/"1"'),
        _entry("DELETE", f"Observation/{observation['id']}"),
        _entry("POST", "Organization", {"resourceType": "Organization", "name": "Org",
                                        "identifier": [{"system": "urn:org", "value": tenant}]},
               ifNoneExist=f"identifier=urn:org|{tenant}"),
    ]
    return patient["id"], observation["id"], bundle


def _outcome(local: InProcessStack, tenant: str, pid: str, oid: str) -> str:
    """'old' or 'new': every reader must agree on one of them (all or nothing)."""
    def get(path: str) -> Any:
        result = local.request("GET", path, tenant=tenant)
        return result.status, (local.json(result) if result.body else None)

    def count(path: str) -> int:
        status, body = get(path)
        assert status == 200, (path, body)
        return len(body.get("entry") or [])

    views = {
        "read": get(f"/Patient/{pid}")[1]["name"][0]["family"] == "after",
        "vread": get(f"/Patient/{pid}/_history/2")[0] == 200,
        "instance history": count(f"/Patient/{pid}/_history") == 2,
        "deleted": get(f"/Observation/{oid}")[0] == 410,
        "search listing": count("/Patient?_count=100") == 7,
        "search by identifier": count("/Patient?identifier=urn:test|crash-2") == 1,
        "observations": count("/Observation?_count=100") == 6,
        "conditional create": count(f"/Organization?identifier=urn:org|{tenant}") == 1,
        "type history": count("/Patient/_history?_count=100") == 8,
        "system history": count("/_history?_count=100") == 17,
        "provenance": count(f"/Provenance?target=Patient/{pid}") == 2,
    }
    assert len(set(views.values())) == 1, f"readers disagree: {views}"
    return "new" if views["read"] else "old"


def _leftovers(local: InProcessStack, tenant: str) -> int:
    found = 0
    for table in ("resources_table", "history_table", "provenance_table", "index_table"):
        items = local.ddb._client.scan(TableName=getattr(get_settings(), table))["Items"]
        found += sum(1 for i in items if i["pk"]["S"].startswith(f"{tenant}|") and ("tx" in i or "txv" in i))
    return found


def _later(seconds: float) -> None:
    import time as clock

    services().store.transactions.clock = lambda: clock.time() + seconds


def _protocol_steps(calls: list[str]) -> dict[str, int]:
    """Where each step of the protocol begins, as the number of write calls before it (docs/TRANSACTIONS.md:
    intent, stage, commit, roll forward A (current items), roll forward B (markers), finish)."""
    writes = [c for c in calls if c in WRITE_CALLS]
    commit = writes.index("update_item")
    finish = len(writes) - 1
    wave_b = max(i for i, c in enumerate(writes) if c == "put_item") + 1
    return {"intent": 0, "stage": 1, "mid-stage": (1 + commit) // 2, "commit": commit,
            "roll-forward": commit + 1, "mid-roll-forward": (commit + 1 + wave_b) // 2, "markers": wave_b,
            "finish": finish, "none": len(writes)}


STEPS = ("intent", "stage", "mid-stage", "commit", "roll-forward", "mid-roll-forward", "markers", "finish", "none")


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_every_step_leaves_all_or_nothing_and_recovery_settles_it(local: InProcessStack, step: str) -> None:
    pid, oid, bundle = _setup(local, "clean")
    first = len(local.ddb.calls)
    assert local.request("POST", "", bundle, tenant="clean").status == 200
    survive = _protocol_steps(local.ddb.calls[first:])[step]
    tenant = "crashed"
    pid, oid, bundle = _setup(local, tenant)
    crash = Crash(local, survive)
    result = local.request("POST", "", bundle, tenant=tenant)
    crash.stop()
    outcome = _outcome(local, tenant, pid, oid)
    assert outcome == ("old" if step in ("intent", "stage", "mid-stage", "commit") else "new"), step
    if result.status == 200:
        assert outcome == "new"  # a transaction answered as done is done
    else:
        assert result.status == 503 and result.headers.get("Retry-After"), result.status
    leftovers = _leftovers(local, tenant) > 0 or any("fin" not in r for r in _records(local, tenant))
    assert leftovers == (step not in ("intent", "none"))  # a crash before the intent writes nothing
    report = verify_all(services(), tenant=tenant)
    assert report.ok, report.problems  # within the lease: a transaction in progress, not a problem
    assert (report.tenants[tenant].in_transaction > 0) == leftovers
    _later(3600)
    try:
        report = verify_all(services(), tenant=tenant)
        assert report.ok == (not leftovers), report.problems
        assert all("stuck transaction" in p and "esus recover-transactions" in p for p in report.problems)
        services().store.transactions.sweep(tenant)
        assert _leftovers(local, tenant) == 0
        assert all("fin" in r for r in _records(local, tenant))
        assert _outcome(local, tenant, pid, oid) == outcome  # recovery completes or rolls back, never flips
        final = verify_all(services(), tenant=tenant)
        assert final.ok, final.problems
    finally:
        _later(0)


def _crashed_at(local: InProcessStack, tenant: str, step: str) -> tuple[str, str]:
    """A transaction in `tenant` whose committer died at `step`: its locks and pending items remain."""
    _, _, clean = _setup(local, f"{tenant}-clean")
    first = len(local.ddb.calls)
    assert local.request("POST", "", clean, tenant=f"{tenant}-clean").status == 200
    survive = _protocol_steps(local.ddb.calls[first:])[step]
    pid, oid, bundle = _setup(local, tenant)
    crash = Crash(local, survive)
    local.request("POST", "", bundle, tenant=tenant)
    crash.stop()
    return pid, oid


def _put_name(local: InProcessStack, tenant: str, pid: str, family: str, if_match: str | None = None) -> Any:
    current = local.json(local.request("GET", f"/Patient/{pid}", tenant=tenant))
    headers = {"If-Match": if_match} if if_match else None
    return local.request("PUT", f"/Patient/{pid}", {**current, "name": [{"family": family}]}, tenant=tenant,
                         headers=headers)


def test_a_writer_never_overwrites_a_pending_transaction_and_settles_it_after_the_lease(local: InProcessStack) -> None:
    pid, oid = _crashed_at(local, "w", "commit")  # pending: locks held, never committed
    assert _outcome(local, "w", pid, oid) == "old"
    result = _put_name(local, "w", pid, "writer")
    assert result.status == 409 and result.headers["Retry-After"]  # waited, then gave up: nothing stored
    assert local.json(local.request("GET", f"/Patient/{pid}", tenant="w"))["meta"]["versionId"] == "1"
    _later(3600)  # the committer is gone for good: the next writer aborts the transaction and proceeds
    try:
        result = _put_name(local, "w", pid, "writer", 'W/"1"')
        assert result.status == 200, result.body[:300]
        assert local.json(result)["meta"]["versionId"] == "2"  # serialised before the (aborted) transaction
        assert local.json(local.request("GET", "/Patient?_count=100", tenant="w"))["total"] == 1
        assert local.request("GET", f"/Observation/{oid}", tenant="w").status == 200
        assert _leftovers(local, "w") == 0 and all("fin" in r for r in _records(local, "w"))
        report = verify_all(services(), tenant="w")
        assert report.ok, report.problems
    finally:
        _later(0)


def test_a_writer_meeting_a_committed_transaction_serialises_after_it(local: InProcessStack) -> None:
    pid, oid = _crashed_at(local, "c", "roll-forward")  # committed; no item rolled forward yet
    assert _outcome(local, "c", pid, oid) == "new"
    stale = _put_name(local, "c", pid, "late", 'W/"1"')
    assert stale.status == 412 and stale.headers["ETag"] == 'W/"2"'  # the transaction's version is current
    result = _put_name(local, "c", pid, "writer", 'W/"2"')
    assert result.status == 200, result.body[:300]
    assert local.json(result)["meta"]["versionId"] == "3"
    history = local.json(local.request("GET", f"/Patient/{pid}/_history", tenant="c"))
    assert [e["resource"]["name"][0]["family"] for e in history["entry"]] == ["writer", "after", "before"]
    _later(3600)
    try:
        services().store.transactions.sweep("c")
        assert _leftovers(local, "c") == 0
        report = verify_all(services(), tenant="c")
        assert report.ok, report.problems
        assert local.json(local.request("GET", f"/Patient/{pid}", tenant="c"))["name"][0]["family"] == "writer"
    finally:
        _later(0)


def test_a_large_transaction_meeting_another_ones_lock_aborts_itself(local: InProcessStack) -> None:
    pid, oid = _crashed_at(local, "b", "commit")
    patient = local.json(local.request("GET", f"/Patient/{pid}", tenant="b"))
    bundle = _patients_with_observations(6, "second")
    bundle["entry"].append(_entry("PUT", f"Patient/{pid}", {**patient, "gender": "other"}))
    result = local.request("POST", "", bundle, tenant="b")
    assert result.status == 409 and result.headers["Retry-After"]
    assert local.json(local.request("GET", "/Patient?identifier=urn:test|second-1", tenant="b"))["total"] == 0
    records = _records(local, "b")
    assert len(records) == 2 and sum(1 for r in records if "fin" in r and r["st"]["S"] == "aborted") == 1


def test_plain_reads_cost_one_round_trip_and_more_only_when_they_meet_a_lock(local: InProcessStack) -> None:
    def read_calls(tenant: str, pid: str) -> list[str]:
        first = len(local.ddb.calls)
        assert local.request("GET", f"/Patient/{pid}", tenant=tenant).status == 200
        return [c for c in local.ddb.calls[first:] if c != "get_secret_value"]

    free = local.json(local.request("POST", "/Patient", {"resourceType": "Patient"}, tenant="r"))["id"]
    assert read_calls("r", free) == ["get_item"]
    pid, _ = _crashed_at(local, "r", "commit")
    assert read_calls("r", pid) == ["get_item", "get_item"]  # the item, then its transaction's record
    pid, _ = _crashed_at(local, "r2", "roll-forward")
    assert read_calls("r2", pid) == ["get_item", "get_item", "get_item"]  # + the pending version


def test_recovery_that_crashes_is_completed_by_the_next_one(local: InProcessStack) -> None:
    pid, oid = _crashed_at(local, "rc", "roll-forward")
    _later(3600)
    try:
        crash = Crash(local, 3)
        with pytest.raises(ClientError):
            services().store.transactions.sweep("rc")
        crash.stop()
        assert _outcome(local, "rc", pid, oid) == "new"
        services().store.transactions.sweep("rc")
        assert _leftovers(local, "rc") == 0
        assert verify_all(services(), tenant="rc").ok
    finally:
        _later(0)


# ---------- all or nothing, limits ----------
def test_150_entries_with_an_invalid_one_at_140_store_nothing_anywhere(local: InProcessStack) -> None:
    bundle = _patients_with_observations(75, "invalid")
    bundle["entry"][140]["resource"]["birthDate"] = "not-a-date"
    result = local.request("POST", "", bundle, tenant="inv")
    assert result.status == 400
    assert "Bundle.entry[140]" in result.body.decode() or "birthDate" in result.body.decode()
    for path in ("/Patient?_count=10", "/Patient/_history", "/_history", "/Observation?_count=10"):
        assert not local.json(local.request("GET", path, tenant="inv")).get("entry"), path
    for table in ("resources_table", "history_table", "provenance_table", "index_table"):
        items = local.ddb._client.scan(TableName=getattr(get_settings(), table))["Items"]
        assert not [i for i in items if i["pk"]["S"].startswith("inv|")], table


def test_a_transaction_over_the_entry_limit_is_a_413_naming_the_limit(local: InProcessStack) -> None:
    from esus.limits import MAX_TRANSACTION_ENTRIES

    basic = _entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "x"}})
    entries = [basic] * (MAX_TRANSACTION_ENTRIES + 1)
    result = local.request("POST", "", _transaction(entries), tenant="lim")
    assert result.status == 413
    diagnostics = local.json(result)["issue"][0]["diagnostics"]
    assert f"at most {MAX_TRANSACTION_ENTRIES} entries" in diagnostics and "Nothing was stored" in diagnostics
    assert not _records(local, "lim")


# ---------- conditional URLs and references ----------
def test_conditional_update_and_delete_urls_in_a_transaction(local: InProcessStack) -> None:
    org = local.json(local.request("POST", "/Organization", {
        "resourceType": "Organization", "name": "A", "identifier": [{"system": "urn:o", "value": "1"}]}))
    gone = local.json(local.request("POST", "/Organization", {
        "resourceType": "Organization", "name": "B", "identifier": [{"system": "urn:o", "value": "2"}]}))
    bundle = _transaction([
        _entry("PUT", "Organization?identifier=urn:o|1", {"resourceType": "Organization", "name": "A2",
                                                           "identifier": [{"system": "urn:o", "value": "1"}]}),
        _entry("PUT", "Organization?identifier=urn:o|3", {"resourceType": "Organization", "name": "C",
                                                           "identifier": [{"system": "urn:o", "value": "3"}]}),
        _entry("DELETE", "Organization?identifier=urn:o|2"),
        _entry("DELETE", "Organization?identifier=urn:o|9"),
    ])
    result = local.request("POST", "", bundle)
    assert result.status == 200, result.body[:400]
    statuses = [e["response"]["status"] for e in local.json(result)["entry"]]
    assert statuses == ["200 OK", "201 Created", "204 No Content", "204 No Content"]
    assert local.json(local.request("GET", f"/Organization/{org['id']}"))["name"] == "A2"
    assert local.request("GET", f"/Organization/{gone['id']}").status == 410
    assert local.json(local.request("GET", "/Organization?identifier=urn:o|3"))["total"] == 1
    local.request("POST", "/Organization", {"resourceType": "Organization", "name": "A-twin",
                                           "identifier": [{"system": "urn:o", "value": "1"}]})
    ambiguous = local.request("POST", "", _transaction([
        _entry("PUT", "Organization?identifier=urn:o|1", {"resourceType": "Organization", "name": "X"})]))
    assert ambiguous.status == 412 and "Bundle.entry[0]" in local.json(ambiguous)["issue"][0]["diagnostics"]


def test_conditional_references_resolve_to_stored_and_in_bundle_resources(local: InProcessStack) -> None:
    stored = local.json(local.request("POST", "/Practitioner", {
        "resourceType": "Practitioner", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "99"}]}))
    org_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = _patients_with_observations(6, "refs")  # large: the protocol path
    bundle["entry"] += [
        _entry("POST", "Organization", {"resourceType": "Organization", "name": "Clinic",
                                        "identifier": [{"system": "https://synthea", "value": "org-7"}]}, org_urn,
               ifNoneExist="identifier=https://synthea|org-7"),
        _entry("POST", "Encounter", {
            "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": bundle["entry"][0]["fullUrl"]},
            "serviceProvider": {"reference": "Organization?identifier=https://synthea|org-7"},
            "participant": [{"individual": {
                "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|99"}}]}),
    ]
    result = local.request("POST", "", bundle)
    assert result.status == 200, result.body[:400]
    locations = [e["response"]["location"].rsplit("/_history", 1)[0] for e in local.json(result)["entry"]]
    encounter = local.json(local.request("GET", f"/{locations[-1]}"))
    assert encounter["serviceProvider"] == {"reference": locations[-2]}
    assert encounter["participant"][0]["individual"] == {"reference": f"Practitioner/{stored['id']}"}
    assert encounter["subject"] == {"reference": locations[0]}
    missing = local.request("POST", "", _transaction([_entry("POST", "Encounter", {
        "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
        "serviceProvider": {"reference": "Organization?identifier=https://synthea|nope"}})]))
    assert missing.status == 412 and "matches no resource" in local.json(missing)["issue"][0]["diagnostics"]
