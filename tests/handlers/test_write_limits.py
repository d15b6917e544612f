"""Writes that used to end in a 500 (security review, issue 10): index-token collisions, writes over
DynamoDB's 100-item transaction limit, batch entries that fail unexpectedly, and JSON Patch growth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from esus.container import services
from esus.verify import verify_all
from tests.handlers.conftest import InProcessStack

TABLES = ("resources_table", "history_table", "provenance_table", "index_table")
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
def checked(local: InProcessStack) -> Iterator[InProcessStack]:
    """After each test the whole store still satisfies every integrity invariant."""
    yield local
    local.ddb.faults.clear()
    report = verify_all(services())
    assert report.ok, report.problems


def _counts(local: InProcessStack) -> dict[str, int]:
    return {t: local.count(t) for t in TABLES}


def _outcome_text(local: InProcessStack, result: Any) -> str:
    body = local.json(result)
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i["diagnostics"] for i in body["issue"])


# ---------- batch: every entry gets its own result ----------
@pytest.mark.parametrize(("fault", "status", "absent"), [
    (ClientError({"Error": {"Code": "ThrottlingException", "Message": "injected"}}, "TransactWriteItems"), "429",
     "injected"),
    (ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "TransactWriteItems"), "503",
     "injected"),
    (ClientError({"Error": {"Code": "ValidationException", "Message": "injected"}}, "TransactWriteItems"), "500",
     "injected"),
    (RuntimeError("secret detail: Peter Chalmers"), "500", "Peter"),
])
def test_batch_entry_failing_unexpectedly_gets_its_own_outcome(
    checked: InProcessStack, fault: Exception, status: str, absent: str
) -> None:
    local = checked
    calls: list[int] = []

    def second_write_fails(_: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise fault

    local.ddb.faults["transact_write_items"] = second_write_fails
    entries = [{"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": f"Entry{n}"}]}} for n in range(3)]
    result = local.request("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert result.status == 200, result.body[:300]
    responses = [e["response"] for e in local.json(result)["entry"]]
    assert [r["status"].split()[0] for r in responses] == ["201", status, "201"]
    failed = json.dumps(responses[1]["outcome"])
    assert absent not in failed and "Traceback" not in failed
    if status == "500":
        assert "correlation id" in failed
    assert local.count("resources_table") == 2
