"""The integrity checker: a clean store passes; each kind of damage is named."""

from __future__ import annotations

from esus.container import services
from esus.settings import get_settings
from esus.verify import verify_all
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555-123-4567"}]}


def _populate(local: InProcessStack) -> str:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    pid = created["id"]
    local.request("PUT", f"/Patient/{pid}", {**created, "telecom": [{"system": "email", "value": "a@b.c"}]})
    local.request("POST", "/Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    local.request("DELETE", f"/Patient/{pid}")
    local.request("PUT", f"/Patient/{pid}", {**created, "active": True})
    return pid


def test_clean_store_verifies(local: InProcessStack) -> None:
    _populate(local)
    report = verify_all(services())
    assert report.ok, report.problems
    assert report.resources == 2 and report.versions == 5 and report.provenances == 5


def test_damage_is_reported(local: InProcessStack) -> None:
    pid = _populate(local)
    settings, ddb = get_settings(), local.ddb._client
    key = f"acme|Patient|{pid}"
    ddb.delete_item(TableName=settings.history_table, Key={"pk": {"S": key}, "v": {"N": "2"}})
    ddb.put_item(TableName=settings.index_table, Item={
        "pk": {"S": "acme|Patient|phone|k1.dead"}, "sk": {"S": "ghost"}, "rid": {"S": "ghost"}})
    for provenance in ddb.scan(TableName=settings.provenance_table)["Items"]:  # every version loses its record
        ddb.delete_item(TableName=settings.provenance_table, Key={"pk": provenance["pk"]})
    report = verify_all(services())
    text = "\n".join(report.problems)
    assert f"{key}: history versions [1, 3, 4] are not 1..4" in text
    assert "belongs to no live version" in text
    assert "0 Provenance records (expected 1)" in text
    assert not verify_all(services(), tenant="someone-else").problems
