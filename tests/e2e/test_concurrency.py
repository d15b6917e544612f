"""Optimistic locking under real concurrency, against the local stack (whose AWS stand-in must give
DynamoDB's all-or-nothing guarantee even though moto alone does not)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from tests.conftest import RunningStack, new_tenant

CLIENTS = 16
ROUNDS = 4


def test_if_match_read_modify_write_never_loses_an_update(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
    statuses: Counter[int] = Counter()
    winners: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def worker(n: int) -> None:
        with stack.client(tenant) as client:
            barrier.wait()
            for round_ in range(ROUNDS):
                current = client.get(f"/Patient/{pid}")
                etag = current.headers["ETag"]
                body = {**current.json(), "birthDate": f"19{n:02d}-01-{round_ + 1:02d}"}
                response = client.put(f"/Patient/{pid}", json=body, headers={"If-Match": etag})
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        winners.append(response.json()["meta"]["versionId"])
                    else:
                        assert response.json()["issue"][0]["code"] == "conflict"

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))

    assert set(statuses) <= {200, 412}, statuses
    assert statuses[200] >= 1 and statuses[412] >= 1, statuses
    with stack.client(tenant) as client:
        final = int(client.get(f"/Patient/{pid}").json()["meta"]["versionId"])
        history = []
        url = f"/Patient/{pid}/_history?_count=100"
        while url:
            page = client.get(url).json()
            history += [int(e["response"]["etag"][3:-1]) for e in page["entry"]]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        provenance = client.get("/Provenance", params={"target": f"Patient/{pid}", "_count": 100}).json()
    assert final == 1 + statuses[200]
    assert sorted(winners, key=int) == [str(v) for v in range(2, final + 1)]  # each version won exactly once
    assert history == list(range(final, 0, -1))  # contiguous, each exactly once
    targets = sorted(int(e["resource"]["target"][0]["reference"].rsplit("/", 1)[1]) for e in provenance["entry"])
    assert targets == list(range(1, final + 1))  # one Provenance per version, no orphan from a loser


def test_updates_without_if_match_are_all_applied(stack: RunningStack) -> None:
    """No If-Match: read, conditional write, bounded retry -> every update lands as its own version."""
    tenant = new_tenant()
    with stack.client(tenant) as client:
        oid = client.post("/Organization", json={"resourceType": "Organization", "name": "A"}).json()["id"]

    def worker(n: int) -> int:
        with stack.client(tenant) as client:
            body = {"resourceType": "Organization", "id": oid, "name": f"Org {n}"}
            return client.put(f"/Organization/{oid}", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    applied = results.count(200)
    assert set(results) <= {200, 409}
    with stack.client(tenant) as client:
        assert client.get(f"/Organization/{oid}").json()["meta"]["versionId"] == str(1 + applied)
    assert applied >= len(results) // 2  # bounded retry resolves ordinary contention (409 only when exhausted)


def test_local_aws_stand_in_is_atomic_across_threads(stack: RunningStack) -> None:
    """The brief's trap: 8 threads x 50 conditional TransactWriteItems on one item. moto alone gave
    257 successes for 256 versions; the local stack's stand-in must give exactly one per version."""
    ddb = stack.dynamodb()
    table = stack.table("ResourcesTable")
    key = f"{new_tenant()}|Basic|race"
    ddb.put_item(TableName=table, Item={"pk": {"S": key}, "v": {"N": "0"}})
    successes: list[int] = []
    lock = threading.Lock()

    def worker(_: int) -> None:
        for _ in range(50):
            current = int(ddb.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)["Item"]["v"]["N"])
            try:
                ddb.transact_write_items(TransactItems=[{"Put": {
                    "TableName": table, "Item": {"pk": {"S": key}, "v": {"N": str(current + 1)}},
                    "ConditionExpression": "v = :v", "ExpressionAttributeValues": {":v": {"N": str(current)}},
                }}])
                with lock:
                    successes.append(current + 1)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "TransactionCanceledException"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    final = int(ddb.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)["Item"]["v"]["N"])
    assert len(successes) == final
    assert sorted(successes) == list(range(1, final + 1))


def test_local_aws_stand_in_rolls_back_a_cancelled_transaction(stack: RunningStack) -> None:
    """Earlier items of a cancelled transaction (puts and deletes, across tables) leave no trace."""
    ddb = stack.dynamodb()
    resources, index = stack.table("ResourcesTable"), stack.table("IndexTable")
    tenant = new_tenant()
    keep = {"pk": {"S": f"{tenant}|idx|keep"}, "sk": {"S": "1"}}
    ddb.put_item(TableName=index, Item=keep)
    try:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": resources, "Item": {"pk": {"S": f"{tenant}|Basic|new"}, "v": {"N": "1"}}}},
            {"Delete": {"TableName": index, "Key": keep}},
            {"Put": {"TableName": resources, "Item": {"pk": {"S": f"{tenant}|Basic|guard"}, "v": {"N": "1"}},
                     "ConditionExpression": "attribute_exists(pk)"}},
        ])
        raise AssertionError("the transaction should have been cancelled")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "TransactionCanceledException"
    assert "Item" not in ddb.get_item(TableName=resources, Key={"pk": {"S": f"{tenant}|Basic|new"}})
    assert "Item" in ddb.get_item(TableName=index, Key=keep)


def test_esus_verify_after_concurrent_writes_and_after_damage(stack: RunningStack) -> None:
    """`esus verify` on the local stack: the invariants hold after racing writers; damage is named."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    tenant = new_tenant()
    with stack.client(tenant) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": "555-777-0001"}]}).json()["id"]

        def update(n: int) -> int:
            with stack.client(tenant) as c:
                phone = {"system": "phone", "value": f"555-777-{n:04d}"}
                body = {"resourceType": "Patient", "id": pid, "telecom": [phone]}
                return c.put(f"/Patient/{pid}", json=body).status_code

        with ThreadPoolExecutor(6) as pool:
            assert set(pool.map(update, range(12))) <= {200, 409}
        client.delete(f"/Patient/{pid}")

    def verify() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir)}
        return subprocess.run([sys.executable, "-m", "esus_dev.cli", "verify", "--tenant", tenant], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)

    clean = verify()
    assert clean.returncode == 0 and "OK" in clean.stdout, clean.stdout + clean.stderr
    stack.dynamodb().delete_item(TableName=stack.table("HistoryTable"),
                                 Key={"pk": {"S": f"{tenant}|Patient|{pid}"}, "v": {"N": "2"}})
    damaged = verify()
    assert damaged.returncode == 1 and f"{tenant}|Patient|{pid}: history versions" in damaged.stdout
