"""The search index check `esus verify` must run (docs/SEARCH.md): stale items are expected after
updates and deletes, missing ones (a crash between a version and its deferred items) are found and
repaired, and cleanup leaves only current versions' items."""

from __future__ import annotations

from esus.container import services
from esus.search_verify import check_search_index, repair_search_index
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974"}


def _report() -> object:
    settings, store = get_settings(), services().store
    return check_search_index(services(), store.scan(settings.resources_table), store.scan(settings.index_table))


def test_stale_missing_and_repair(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    pid = created["id"]
    local.request("PUT", f"/Patient/{pid}", {**created, "name": [{"family": "Baker"}]})
    report = _report()
    assert not report.problems and report.checked_versions == 1  # type: ignore[attr-defined]
    assert report.stale and all(r.endswith(f"\n{pid}|000000000001") for r in report.stale)  # type: ignore[attr-defined]
    # A crash after the version's transaction and before its index items: some of them are missing.
    settings, ddb = get_settings(), local.ddb._client
    victims = [i for i in ddb.scan(TableName=settings.index_table)["Items"]
               if i["sk"]["S"].endswith("|000000000002") and "|family|" in i["pk"]["S"]]
    assert victims
    for victim in victims:
        ddb.delete_item(TableName=settings.index_table, Key={"pk": victim["pk"], "sk": victim["sk"]})
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 0  # not found: incomplete
    damaged = _report()
    assert damaged.missing and any("is missing" in p for p in damaged.problems)  # type: ignore[attr-defined]
    repair_search_index(services(), damaged)  # type: ignore[arg-type]
    repaired = _report()
    assert not repaired.problems and not repaired.stale  # type: ignore[attr-defined]
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 1
    assert local.json(local.request("GET", "/Patient?family=chal"))["total"] == 0
