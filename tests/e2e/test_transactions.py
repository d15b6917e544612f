"""Large transaction Bundles over HTTP against the local stack (docs/TRANSACTIONS.md): Synthea patient
Bundles as transactions, all or nothing, a transaction racing single-resource updates, `esus import
--atomic`, and the sweeper through the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from esus.domain.fhir import reference_strings
from tests.conftest import REPO, SYNTHEA, RunningStack, new_tenant


def esus(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir)}
    for name in ("ESUS_TOKEN", "ESUS_LOCAL_PORT", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "esus_dev.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def _smallest_synthea(n: int) -> list[Path]:
    """The n patient Bundles with the fewest entries (the e2e time stays reasonable)."""
    patients = [p for p in SYNTHEA.glob("*.json") if not p.name.startswith(("hospital", "practitioner"))]
    return sorted(patients, key=lambda p: len(json.loads(p.read_text(encoding="utf-8"))["entry"]))[:n]


def test_synthea_patient_bundles_commit_as_transactions_with_every_reference_resolved(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        for path in _smallest_synthea(2):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            response = client.post(stack.base_url, json=bundle, timeout=120)
            assert response.status_code == 200, (path.name, response.text[:500])
            entries = response.json()["entry"]
            assert len(entries) == len(bundle["entry"])
            assert {e["response"]["status"] for e in entries} == {"201 Created"}, path.name
            stored = [e["response"]["location"].rsplit("/_history", 1)[0] for e in entries]
            resources = {ref: client.get(f"/{ref}").json() for ref in stored}
            targets = {r for resource in resources.values() for r in reference_strings(resource)
                       if not r.startswith("#")}
            assert targets, "Synthea resources reference each other"
            assert not [t for t in targets if t.startswith("urn:")], "an urn:uuid reference was left unresolved"
            assert targets <= set(stored), targets - set(stored)  # every one points at an entry just stored
            patient = next(ref for ref in stored if ref.startswith("Patient/"))
            observations = client.get("/Observation", params={"subject": patient, "_count": 100}).json()
            expected = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
            assert observations["total"] == expected
            assert client.get("/Provenance", params={"target": patient}).json()["total"] == 1
    done = esus(stack, "verify", "--tenant", tenant)
    assert done.returncode == 0, done.stdout


def test_150_entries_with_an_invalid_one_at_140_leave_nothing_visible(stack: RunningStack) -> None:
    tenant = new_tenant()
    entries = []
    for i in range(75):
        urn = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": urn, "request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "name": [{"family": f"P{i}"}]}})
        entries.append({"request": {"method": "POST", "url": "Observation"},
                        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                     "subject": {"reference": urn}}})
    entries[140]["resource"]["status"] = "not-a-status"
    with stack.client(tenant) as client:
        response = client.post(stack.base_url, json={"resourceType": "Bundle", "type": "transaction",
                                                     "entry": entries})
        assert response.status_code == 400, response.text[:300]
        assert response.json()["resourceType"] == "OperationOutcome"
        for path in ("/Patient", "/Observation", "/Patient/_history", "/Observation/_history", "/_history"):
            assert not client.get(path).json().get("entry"), path
    assert all(not items for items in stack.tenant_items(tenant).values())


def test_a_large_transaction_racing_single_updates_wins_whole_or_not_at_all(stack: RunningStack) -> None:
    """A 40-entry transaction (20 Patients updated, 20 Observations created) three times, while four
    clients update the same Patients one at a time. Each transaction is all or nothing; every update
    lands before or after it (contiguous histories, each version once), and `esus verify` is green."""
    tenant = new_tenant()
    with stack.client(tenant) as client:
        patients = [client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "start"}]},
                                headers={"Prefer": "return=representation"}).json() for _ in range(20)]
    ids = [p["id"] for p in patients]
    stop = threading.Event()
    updates: list[tuple[str, int, str]] = []  # (id, version written, marker)
    lock = threading.Lock()

    def updater(n: int) -> None:
        with stack.client(tenant) as client:
            while not stop.is_set():
                pid = random.choice(ids)
                current = client.get(f"/Patient/{pid}")
                marker = f"u{n}-{uuid.uuid4().hex[:6]}"
                body = {**current.json(), "name": [{"family": marker}]}
                headers = {"If-Match": current.headers["ETag"]} if n % 2 else {}
                response = client.put(f"/Patient/{pid}", json=body, headers=headers)
                assert response.status_code in (200, 409, 412), response.text[:300]
                if response.status_code == 200:
                    with lock:
                        updates.append((pid, int(response.json()["meta"]["versionId"]), marker))

    outcomes: dict[str, int] = {}
    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(updater, n) for n in range(4)]
        time.sleep(0.5)
        with stack.client(tenant) as client:
            for round_ in range(3):
                marker = f"txn-{round_}"
                entries = [{"request": {"method": "PUT", "url": f"Patient/{pid}"},
                            "resource": {"resourceType": "Patient", "id": pid, "name": [{"family": marker}]}}
                           for pid in ids]
                entries += [{"request": {"method": "POST", "url": "Observation"},
                             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": marker},
                                          "subject": {"reference": f"Patient/{pid}"}}} for pid in ids]
                response = client.post(stack.base_url, json={"resourceType": "Bundle", "type": "transaction",
                                                             "entry": entries}, timeout=120)
                assert response.status_code in (200, 409), response.text[:300]
                outcomes[marker] = response.status_code
        stop.set()
        for worker in workers:
            worker.result()
    assert updates, "the updaters never succeeded"
    with stack.client(tenant) as client:
        for pid in ids:
            history = client.get(f"/Patient/{pid}/_history", params={"_count": 100}).json()["entry"]
            versions = [int(e["resource"]["meta"]["versionId"]) for e in history]
            assert versions == list(range(len(versions), 0, -1)), versions  # contiguous, each once
            families = {int(e["resource"]["meta"]["versionId"]): e["resource"]["name"][0]["family"] for e in history}
            for marker, status in outcomes.items():
                assert (marker in families.values()) == (status == 200), (pid, marker, status)
            mine = [(v, m) for p, v, m in updates if p == pid]
            assert all(families[v] == m for v, m in mine)  # every acknowledged update is its version
            assert len(versions) == 1 + len(mine) + sum(1 for s in outcomes.values() if s == 200)
        for marker, status in outcomes.items():
            found = client.get("/Observation", params={"code:text": marker, "_count": 100}).json()
            listed = [e for e in client.get("/Observation", params={"_count": 100}).json().get("entry", [])
                      if e["resource"]["code"]["text"] == marker]
            assert len(listed) == (20 if status == 200 else 0), (marker, status, found.get("total"))
    done = esus(stack, "verify", "--tenant", tenant)
    assert done.returncode == 0, done.stdout


def test_import_atomic_sends_each_transaction_bundle_as_one_transaction(stack: RunningStack, tmp_path: Path) -> None:
    tenant = new_tenant()
    files = _smallest_synthea(2)
    broken = json.loads(files[0].read_text(encoding="utf-8"))
    broken["entry"][5]["resource"]["status"] = "no-such-status"  # the server refuses it: the whole file fails
    (tmp_path / "broken.json").write_text(json.dumps(broken), encoding="utf-8")
    command = ["import", "--atomic", str(files[1]), str(tmp_path / "broken.json"), "--base-url", stack.base_url,
               "--token", stack.token(tenant, "system/*.cruds", None), "--state-file", str(tmp_path / "state.json"),
               "--json"]
    done = esus(stack, *command)
    summary = json.loads(done.stdout)
    good = len(json.loads(files[1].read_text(encoding="utf-8"))["entry"])
    assert done.returncode == 1 and summary["created"] == good and summary["failed"] == len(broken["entry"])
    assert {f["status"] for f in summary["failures"]} == {400}
    records = [i for i in stack.tenant_items(tenant)["IndexTable"] if i["pk"]["S"] == f"{tenant}|_txn"]
    assert len(records) == 1  # one transaction for the good Bundle (the broken one stored nothing)
    stored = stack.tenant_items(tenant)["ResourcesTable"]
    assert len(stored) == good
    again = json.loads(esus(stack, *command[:-1], "--no-resume", "--json").stdout)
    assert again["unchanged"] == good and again["created"] == 0  # re-running addresses the same resources


def test_verify_reports_a_stuck_transaction_and_recover_transactions_rolls_it_back(stack: RunningStack) -> None:
    """A committer that died before committing: a pending record past its lease and a lock on a Patient."""
    tenant = new_tenant()
    with stack.client(tenant) as client:
        patient = client.post("/Patient", json={"resourceType": "Patient", "active": True},
                              headers={"Prefer": "return=representation"}).json()
    txid = str(uuid.uuid4())
    ddb = stack.dynamodb()
    line = "\t".join((f"Patient/{patient['id']}", "2", "2020-01-01T00:00:00.000Z", str(uuid.uuid4()), "", "", ""))
    ddb.put_item(TableName=stack.table("IndexTable"), Item={
        "pk": {"S": f"{tenant}|_txn"}, "sk": {"S": txid}, "st": {"S": "pending"}, "exp": {"N": "1000"},
        "ents": {"L": [{"S": line}]}, "n": {"N": "1"}})
    ddb.update_item(TableName=stack.table("ResourcesTable"), Key={"pk": {"S": f"{tenant}|Patient|{patient['id']}"}},
                    UpdateExpression="SET tx = :x, txv = :v",
                    ExpressionAttributeValues={":x": {"S": txid}, ":v": {"N": "2"}})
    with stack.client(tenant) as client:
        assert client.get(f"/Patient/{patient['id']}").json()["meta"]["versionId"] == "1"  # readers resolve
    stuck = esus(stack, "verify", "--tenant", tenant)
    assert stuck.returncode == 1
    assert f"stuck transaction {txid} (pending, lease ended)" in stuck.stdout
    assert "esus recover-transactions" in stuck.stdout
    recovered = esus(stack, "recover-transactions", "--tenant", tenant)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "1 rolled back" in recovered.stdout
    assert esus(stack, "verify", "--tenant", tenant).returncode == 0
    with stack.client(tenant) as client:
        assert client.put(f"/Patient/{patient['id']}", json={**patient, "active": False},
                          headers={"If-Match": 'W/"1"'}).status_code == 200
