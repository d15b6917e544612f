"""The CLI against a running local stack: `esus verify` over every tenant with per-tenant output, orphaned objects
reported and removed by `esus cleanup-objects`, and operator errors answered in one line (unknown tenant, rejected
token, unreadable input, missing tables)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningStack, new_tenant, start_stack

PHONE = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555-010-9999"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Its own stack: `esus verify` without --tenant checks everything stored, so no other test's data."""
    yield from start_stack(tmp_path_factory)


def esus(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir)}
    for name in ("ESUS_TOKEN", "ESUS_LOCAL_PORT", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "esus_dev.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def _patient_with_two_versions(stack: RunningStack, tenant: str) -> str:
    with stack.client(tenant) as client:
        created = client.post("/Patient", json=PHONE, headers={"Prefer": "return=representation"}).json()
        assert client.put(f"/Patient/{created['id']}", json={**created, "active": True}).status_code == 200
    return str(created["id"])


def test_verify_without_tenant_checks_every_tenant(stack: RunningStack) -> None:
    """Issue 16, through the CLI: two tenants with hashed index items, no --tenant, no false problems;
    then damage in one is reported under that tenant only."""
    first, second = new_tenant(), new_tenant()
    ids = {tenant: _patient_with_two_versions(stack, tenant) for tenant in (first, second)}
    clean = esus(stack, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    for tenant in (first, second):
        assert f"Tenant {tenant}: 1 resources, 2 versions, 2 Provenance, " in clean.stdout
    assert "OK: every invariant holds." in clean.stdout

    key = f"{second}|Patient|{ids[second]}"
    stack.dynamodb().delete_item(TableName=stack.table("HistoryTable"), Key={"pk": {"S": key}, "v": {"N": "1"}})
    damaged = esus(stack, "verify")
    assert damaged.returncode == 1
    lines = damaged.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith(f"Tenant {second}:")))
    assert lines[at].endswith(": 1 problem(s)") and lines[at + 1] == f"  {key}: history versions [2] are not 1..2"
    assert next(line for line in lines if line.startswith(f"Tenant {first}:")).endswith(": OK")
    assert lines[-1] == f"1 problem(s) in 1 tenant(s): {second}"
    only_first = esus(stack, "verify", "--tenant", first)
    assert only_first.returncode == 0 and f"Tenant {first}:" in only_first.stdout and second not in only_first.stdout


def test_orphaned_objects_are_reported_and_cleaned_up(stack: RunningStack) -> None:
    """A large version's body is an object; an object no item points to (a write that died before its
    transaction) is counted as orphaned once old enough, and `esus cleanup-objects` removes only it."""
    import boto3

    tenant = new_tenant()
    document = {"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {
        "contentType": "application/pdf", "data": base64.b64encode(os.urandom(450_000)).decode()}}]}
    with stack.client(tenant) as client:
        doc_id = client.post("/DocumentReference", json=document).json()["id"]
    s3 = boto3.client("s3", endpoint_url=stack.state["aws_endpoint"])
    bucket = stack.state["ObjectBucket"]
    orphan = b"ESUS-SEALED-1\n{}"
    key = f"{tenant}/DocumentReference/never-committed/1/{hashlib.sha256(orphan).hexdigest()}"
    s3.put_object(Bucket=bucket, Key=key, Body=orphan)

    fresh = esus(stack, "verify", "--tenant", tenant)
    assert fresh.returncode == 0 and "2 objects (0 orphaned)" in fresh.stdout  # young: maybe still committing
    aged = esus(stack, "verify", "--tenant", tenant, "--min-age-minutes", "0")
    assert aged.returncode == 0 and "2 objects (1 orphaned)" in aged.stdout and "esus cleanup-objects" in aged.stdout
    dry = esus(stack, "cleanup-objects", "--tenant", tenant, "--min-age-minutes", "0", "--dry-run")
    assert dry.returncode == 0 and f"Tenant {tenant}: 2 objects, would remove 1 orphaned" in dry.stdout
    done = esus(stack, "cleanup-objects", "--tenant", tenant, "--min-age-minutes", "0")
    assert done.returncode == 0 and f"Tenant {tenant}: 2 objects, removed 1 orphaned" in done.stdout
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{tenant}/").get("Contents", [])]
    assert len(left) == 1 and left[0].startswith(f"{tenant}/DocumentReference/{doc_id}/1/")
    with stack.client(tenant) as client:
        assert client.get(f"/DocumentReference/{doc_id}").json()["content"] == document["content"]
    assert esus(stack, "verify", "--tenant", tenant, "--min-age-minutes", "0").returncode == 0


def test_verify_of_an_unknown_tenant(stack: RunningStack) -> None:
    done = esus(stack, "verify", "--tenant", "no-such-tenant")
    assert done.returncode == 2
    assert done.stderr.strip() == ("esus verify: no data is stored for tenant 'no-such-tenant': nothing to check "
                                   "(tenant names are matched exactly; run without --tenant to check every tenant)")


def test_deployed_settings_naming_missing_tables(stack: RunningStack) -> None:
    """--endpoint with the deployment's default table names, which this AWS stand-in does not have."""
    done = esus(stack, "verify", "--endpoint", stack.state["aws_endpoint"])
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith("esus verify: Scan: ") and "check the table and secret names" in line
    assert "\n" not in line


def test_import_with_a_rejected_token(stack: RunningStack, tmp_path: Path) -> None:
    source = tmp_path / "patient.json"
    source.write_text(json.dumps({"resourceType": "Patient", "id": "p1"}))
    done = esus(stack, "import", str(source), "--base-url", stack.base_url, "--token", "not-a-token")
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"esus import: the API at {stack.base_url} rejects the token (401)")


def test_import_of_unreadable_json_names_the_file(stack: RunningStack, tmp_path: Path) -> None:
    """A broken file among the inputs is a failure of that file (the others load), not a crash."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "good-1"}))
    bad.write_text('{"resourceType": "Patient", ')
    done = esus(stack, "import", str(good), str(bad), "--state-file", str(tmp_path / "state.json"))
    assert done.returncode == 1
    assert "  created     1" in done.stdout
    failure = next(line for line in done.stdout.splitlines() if "bad.json" in line)
    assert "not readable as JSON" in failure
