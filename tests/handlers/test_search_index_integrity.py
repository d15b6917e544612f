"""The search index under `esus verify` (docs/SEARCH.md): stale items are expected after updates and
deletes (counted, not reported), missing ones (a crash between a version and its deferred items) are
reported and repaired by `--repair-index`, which also removes the stale ones."""

from __future__ import annotations

from esus.container import services
from esus.ops.verify import VerifyReport, verify_all
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974"}


def _verify(repair: bool = False) -> VerifyReport:
    return verify_all(services(), "acme", repair_index=repair)


def test_stale_missing_and_repair(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    pid = created["id"]
    local.request("PUT", f"/Patient/{pid}", {**created, "name": [{"family": "Baker"}]})
    report = _verify()
    assert report.ok, report.problems
    assert report.tenant("acme").stale_index_items > 0  # version 1's items: harmless, cleaned lazily
    # A crash after the version's transaction and before its index items: some of them are missing.
    settings, ddb = get_settings(), local.ddb._client
    victims = [i for i in ddb.scan(TableName=settings.index_table)["Items"]
               if i["sk"]["S"].endswith("|000000000002") and "|family|" in i["pk"]["S"]]
    assert victims
    for victim in victims:
        ddb.delete_item(TableName=settings.index_table, Key={"pk": victim["pk"], "sk": victim["sk"]})
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 0  # not found: incomplete
    damaged = _verify()
    assert not damaged.ok and all("is missing" in p for p in damaged.problems), damaged.problems
    assert len(damaged.problems) == len(victims)
    repaired = _verify(repair=True)
    assert repaired.tenant("acme").repaired_index_items == len(victims) + report.tenant("acme").stale_index_items
    after = _verify()
    assert after.ok and after.tenant("acme").stale_index_items == 0
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 1
    assert local.json(local.request("GET", "/Patient?family=chal"))["total"] == 0


def test_an_idx_missing_what_the_content_needs_is_reported(local: InProcessStack) -> None:
    pid = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    settings, ddb = get_settings(), local.ddb._client
    key = {"pk": {"S": f"acme|Patient|{pid}"}}
    item = ddb.get_item(TableName=settings.resources_table, Key=key)["Item"]
    item["idx"] = {"L": item["idx"]["L"][1:]}  # the version no longer lists one of its items
    ddb.put_item(TableName=settings.resources_table, Item=item)
    report = _verify()
    assert any("idx does not list 1 index item" in p for p in report.problems), report.problems
