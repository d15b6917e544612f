"""Large transaction Bundles (docs/TRANSACTIONS.md) on the in-process stack: all or nothing beyond 100
DynamoDB items, crashes injected at every step of the protocol, writers and readers meeting locks,
conditional URLs and references, and `esus verify` reporting stuck transactions."""

from __future__ import annotations

import uuid
from typing import Any

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
