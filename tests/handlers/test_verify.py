"""The integrity checker: a clean store passes for every tenant; each kind of damage is named, attributed
to the tenant it hit, and nothing else is reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from esus.container import build_services, services, use_services
from esus.domain.search_index import SearchKeys
from esus.ops.rotation import reencrypt_all, rotate_root_key
from esus.ops.verify import VerifyReport, verify_all
from esus.settings import get_settings
from esus.storage.store import change_log_partition
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555-123-4567"}]}
TENANTS = ("acme", "beta", "gamma")
Undo = Callable[[], None]


def _populate(local: InProcessStack, tenant: str = "acme") -> str:
    """Two resources, five versions (create, update, delete, revive), five Provenance records."""
    created = local.json(local.request("POST", "/Patient", PATIENT, tenant=tenant))
    pid = created["id"]
    local.request("PUT", f"/Patient/{pid}", {**created, "telecom": [{"system": "email", "value": "a@b.c"}]},
                  tenant=tenant)
    local.request("POST", "/Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                  tenant=tenant)
    local.request("DELETE", f"/Patient/{pid}", tenant=tenant)
    local.request("PUT", f"/Patient/{pid}", {**created, "active": True}, tenant=tenant)
    return pid


def _raw_counts(local: InProcessStack, tenant: str) -> dict[str, int]:
    """What is stored for the tenant, counted straight from the tables."""
    settings, ddb = get_settings(), local.ddb._client
    counts = {}
    for name, table in (("resources", settings.resources_table), ("versions", settings.history_table),
                        ("provenances", settings.provenance_table), ("index_items", settings.index_table)):
        items = ddb.scan(TableName=table)["Items"]
        counts[name] = sum(1 for i in items if i["pk"]["S"].startswith(f"{tenant}|"))
    return counts


def _counts(report: VerifyReport, tenant: str) -> dict[str, int]:
    found = report.tenants[tenant]
    return {"resources": found.resources, "versions": found.versions, "provenances": found.provenances,
            "index_items": found.index_items}


@pytest.fixture
def three(local: InProcessStack) -> dict[str, str]:
    """Three tenants with the same history each (tenant -> the Patient's id)."""
    return {tenant: _populate(local, tenant) for tenant in TENANTS}


def test_clean_store_verifies(local: InProcessStack) -> None:
    _populate(local)
    report = verify_all(services())
    assert report.ok, report.problems
    assert report.resources == 2 and report.versions == 5 and report.provenances == 5


def test_three_clean_tenants_verify_with_per_tenant_counts(local: InProcessStack, three: dict[str, str]) -> None:
    report = verify_all(services())
    assert report.ok, report.problems
    assert sorted(report.tenants) == sorted(TENANTS)
    for tenant in TENANTS:
        assert _counts(report, tenant) == _raw_counts(local, tenant)
        assert _counts(report, tenant)["resources"] == 2 and _counts(report, tenant)["versions"] == 5
    assert report.resources == 6 and report.versions == 15 and report.provenances == 15
    only = verify_all(services(), tenant="beta")
    assert list(only.tenants) == ["beta"] and only.ok and _counts(only, "beta") == _raw_counts(local, "beta")


def test_two_tenants_without_tenant_filter_report_no_false_problems(local: InProcessStack) -> None:
    """Regression (issue 16): the Provenance loop rebound `tenant`, so the resources of every tenant but
    the last Provenance's were skipped and their hashed index items reported as belonging to nothing."""
    _populate(local, "acme")
    _populate(local, "zeta")
    report = verify_all(services())
    assert report.problems == []
    assert report.resources == 4 and report.versions == 10


def test_posted_provenance_targeting_a_version_is_not_a_second_write_record(local: InProcessStack) -> None:
    pid = _populate(local)
    attestation = {
        "resourceType": "Provenance", "target": [{"reference": f"Patient/{pid}/_history/1"}],
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/1"}, "onBehalfOf": {"reference": "Organization/acme"}}],
    }
    assert local.request("POST", "/Provenance", attestation).status == 201
    report = verify_all(services())
    assert report.ok, report.problems
    assert report.provenances == 6


def test_rotation_and_reencryption_keep_the_store_verifiable(local: InProcessStack) -> None:
    """Re-encryption seals current and history items separately (new nonces): the checker compares what
    they decrypt to, not their ciphertexts."""
    pid = _populate(local)
    settings = get_settings()
    rotate_root_key(local.secrets, settings.root_key_secret_id)
    use_services(build_services(settings, local.ddb, local.secrets))  # a fresh keyring sees the new version
    moved = reencrypt_all(services())
    # Sealed items only: the Patient's history, and both current items (the Observation's search tokens,
    # e.g. combo-code, are HMACs under the old key and move too).
    assert moved.current_items == 2 and moved.history_items == 3 and not moved.failed_keys
    current = _get(settings.resources_table, {"pk": {"S": f"acme|Patient|{pid}"}}, local)
    newest = _get(settings.history_table, {"pk": {"S": f"acme|Patient|{pid}"}, "v": {"N": "4"}}, local)
    assert current["phi"] != newest["phi"]
    report = verify_all(services())
    assert report.ok, report.problems
    assert report.resources == 2 and report.versions == 5


def test_a_write_landing_during_the_check_is_not_reported(local: InProcessStack) -> None:
    """The checker reads the current item, then its history: a version written in between is judged
    against the current item as it is now, not reported as a history gap."""
    pid = _populate(local)
    history_key = {"S": f"acme|Patient|{pid}"}
    written: list[int] = []

    def write_meanwhile(kwargs: dict[str, Any]) -> None:
        if written or kwargs["ExpressionAttributeValues"].get(":pk") != history_key:
            return
        if kwargs["TableName"] == get_settings().history_table:
            current = local.json(local.request("GET", f"/Patient/{pid}"))
            written.append(local.request("PUT", f"/Patient/{pid}", {**current, "active": False}).status)

    local.ddb.faults["query"] = write_meanwhile
    report = verify_all(services())
    assert written == [200]
    assert report.ok, report.problems
    assert report.versions == 6


# ---------- damage, one tenant at a time ----------
def _key(tenant: str, pid: str) -> str:
    return f"{tenant}|Patient|{pid}"


def _get(table: str, key: dict[str, Any], local: InProcessStack) -> dict[str, Any]:
    item: dict[str, Any] = local.ddb._client.get_item(TableName=table, Key=key)["Item"]
    return item


def _delete(local: InProcessStack, table: str, key: dict[str, Any]) -> Undo:
    ddb, item = local.ddb._client, _get(table, key, local)
    ddb.delete_item(TableName=table, Key=key)
    return lambda: ddb.put_item(TableName=table, Item=item)


def _replace(local: InProcessStack, table: str, key: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> Undo:
    ddb, item = local.ddb._client, _get(table, key, local)
    damaged = {k: v for k, v in item.items()}
    change(damaged)
    ddb.put_item(TableName=table, Item=damaged)
    return lambda: ddb.put_item(TableName=table, Item=item)


def _provenance_id(local: InProcessStack, tenant: str, pid: str, version: int) -> str:
    keys = SearchKeys(services().keyring, get_settings())
    [partition] = keys.provenance_partitions(tenant, "target", f"Patient/{pid}/_history/{version}")
    items = local.ddb._client.query(TableName=get_settings().index_table, KeyConditionExpression="pk = :p",
                                    ExpressionAttributeValues={":p": {"S": partition}})["Items"]
    assert len(items) == 1
    return str(items[0]["sk"]["S"]).rsplit("|", 1)[1]


def _flip_first_sealed_byte(item: dict[str, Any]) -> None:
    sealed = dict(item["phi"]["M"])
    element = sorted(sealed)[0]
    raw = bytearray(sealed[element]["B"])
    raw[-1] ^= 0x01  # inside the GCM tag
    item["phi"] = {"M": {**sealed, element: {"B": bytes(raw)}}}


def damage_history_version(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    key = _key(tenant, pid)
    undo = _delete(local, get_settings().history_table, {"pk": {"S": key}, "v": {"N": "2"}})
    return undo, [f"{key}: history versions [1, 3, 4] are not 1..4"]


def damage_missing_provenance(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    provenance_id = _provenance_id(local, tenant, pid, 3)
    undo = _delete(local, get_settings().provenance_table, {"pk": {"S": f"{tenant}|Provenance|{provenance_id}"}})
    return undo, [f"{_key(tenant, pid)} v3: 0 Provenance records (expected 1)"]


def damage_duplicate_provenance(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    """A second, well-formed and fully indexed write record for version 3 (as a doubled write would store)."""
    settings, store, ddb = get_settings(), services().store, local.ddb._client
    provenance_id = _provenance_id(local, tenant, pid, 3)
    original = _get(settings.provenance_table, {"pk": {"S": f"{tenant}|Provenance|{provenance_id}"}}, local)
    record = store.provenances(tenant, [provenance_id])[0]
    twin = {**record, "id": f"{provenance_id}-twin"}
    recorded = str(original["rec"]["S"])
    kv = services().keyring.current_version()
    puts = [store.provenance_put(tenant, twin, recorded, kv)["Put"],
            *(store.index_put(e)["Put"] for e in services().resources.provenance_index(tenant, twin, recorded, kv))]
    for put in puts:
        ddb.put_item(TableName=put["TableName"], Item=put["Item"])

    def undo() -> None:
        for put in puts:
            keys = ("pk", "sk") if put["TableName"] == settings.index_table else ("pk",)
            ddb.delete_item(TableName=put["TableName"], Key={k: put["Item"][k] for k in keys})

    return undo, [f"{_key(tenant, pid)} v3: 2 Provenance records (expected 1)"]


def damage_missing_index_item(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    settings = get_settings()
    current = _get(settings.resources_table, {"pk": {"S": _key(tenant, pid)}}, local)
    partition, sort = current["idx"]["L"][0]["S"].split("\n", 1)
    undo = _delete(local, settings.index_table, {"pk": {"S": partition}, "sk": {"S": sort}})
    return undo, [f"{_key(tenant, pid)}: index item {partition} is missing (esus verify --repair-index writes it)"]


def damage_unlisted_index_item(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    """The current item's idx no longer names one of the search items its content needs."""
    def drop_first(item: dict[str, Any]) -> None:
        item["idx"] = {"L": item["idx"]["L"][1:]}

    undo = _replace(local, get_settings().resources_table, {"pk": {"S": _key(tenant, pid)}}, drop_first)
    return undo, [f"{_key(tenant, pid)}: idx does not list 1 index item(s) its content needs (esus verify "
                  "--repair-index adds them)"]


def test_orphan_search_items_are_counted_stale_not_reported(local: InProcessStack, three: dict[str, str]) -> None:
    """An index item no current version lists (an older version's, or a failed write's) never matches a
    search (every candidate is re-checked), so it is stale: counted for its tenant, removed by repair."""
    table, ddb = get_settings().index_table, local.ddb._client
    baseline = verify_all(services())
    partition = "acme|Patient|phone|k1.dead"
    key = {"pk": {"S": partition}, "sk": {"S": f"{three['acme']}|{1:012d}"}}
    ddb.put_item(TableName=table, Item={**key, "rid": {"S": three["acme"]}})
    report = verify_all(services())
    assert report.ok, report.problems
    assert report.tenant("acme").stale_index_items == baseline.tenant("acme").stale_index_items + 1
    assert report.tenant("beta").stale_index_items == baseline.tenant("beta").stale_index_items
    verify_all(services(), repair_index=True)
    assert "Item" not in ddb.get_item(TableName=table, Key=key)
    assert verify_all(services()).tenant("acme").stale_index_items == 0


def damage_change_log(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    table, partition = get_settings().index_table, change_log_partition(tenant, "Patient")
    items = local.ddb._client.query(TableName=table, KeyConditionExpression="pk = :p",
                                    ExpressionAttributeValues={":p": {"S": partition}})["Items"]
    entry = next(i for i in items if i["sk"]["S"].endswith(f"|Patient|{pid}|{2:012d}"))
    undo = _delete(local, table, {"pk": entry["pk"], "sk": entry["sk"]})
    return undo, [f"{_key(tenant, pid)} v2: missing from the Patient change log"]


def damage_history_ciphertext(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    key = _key(tenant, pid)
    undo = _replace(local, get_settings().history_table, {"pk": {"S": key}, "v": {"N": "1"}}, _flip_first_sealed_byte)
    return undo, [f"{key} v1: Stored data failed its integrity check"]


def damage_current_ciphertext(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    key = _key(tenant, pid)
    undo = _replace(local, get_settings().resources_table, {"pk": {"S": key}}, _flip_first_sealed_byte)
    return undo, [f"{key} (current item): Stored data failed its integrity check"]


def damage_provenance_ciphertext(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    pk = f"{tenant}|Provenance|{_provenance_id(local, tenant, pid, 2)}"
    undo = _replace(local, get_settings().provenance_table, {"pk": {"S": pk}}, _flip_first_sealed_byte)
    return undo, [f"{pk}: Stored data failed its integrity check"]


def damage_current_differs(local: InProcessStack, tenant: str, pid: str) -> tuple[Undo, list[str]]:
    """The clear part of the current item edited (active: true -> false): it decodes, but is not v4."""
    key = _key(tenant, pid)

    def edit(item: dict[str, Any]) -> None:
        assert '"active":true' in item["doc"]["S"]
        item["doc"] = {"S": item["doc"]["S"].replace('"active":true', '"active":false')}

    undo = _replace(local, get_settings().resources_table, {"pk": {"S": key}}, edit)
    # The edited content also needs other `active` index items than idx lists.
    return undo, [f"{key}: current item differs from history v4",
                  f"{key}: idx does not list 2 index item(s) its content needs (esus verify "
                  "--repair-index adds them)"]


@pytest.mark.parametrize("damage", [
    damage_history_version, damage_missing_provenance, damage_duplicate_provenance, damage_missing_index_item,
    damage_unlisted_index_item, damage_change_log, damage_history_ciphertext, damage_current_ciphertext,
    damage_provenance_ciphertext, damage_current_differs,
])
def test_each_damage_is_reported_for_its_tenant_only(
    local: InProcessStack, three: dict[str, str],
    damage: Callable[[InProcessStack, str, str], tuple[Undo, list[str]]],
) -> None:
    for tenant in TENANTS:
        undo, expected = damage(local, tenant, three[tenant])
        report = verify_all(services())
        assert {t: r.problems for t, r in report.tenants.items()} == {
            t: (expected if t == tenant else []) for t in TENANTS}
        assert verify_all(services(), tenant=tenant).problems == expected
        assert verify_all(services(), tenant=next(t for t in TENANTS if t != tenant)).ok
        undo()
        assert verify_all(services()).ok


def test_repair_rewrites_an_idx_that_lacks_items_but_never_a_damaged_current_item(
    local: InProcessStack, three: dict[str, str]
) -> None:
    """`--repair-index` completes the idx (and the items) of a sound version whose idx lacks some (a kind of index
    item added after it was written); a current item that differs from its history is reported, not re-sealed."""
    tenant = "acme"
    _, _ = damage_unlisted_index_item(local, tenant, three[tenant])
    repaired = verify_all(services(), tenant=tenant, repair_index=True)
    assert repaired.ok and repaired.tenant(tenant).repaired_index_items >= 1
    assert verify_all(services()).ok

    key = {"pk": {"S": _key("beta", three["beta"])}}
    _, expected = damage_current_differs(local, "beta", three["beta"])
    damaged = local.ddb._client.get_item(TableName=get_settings().resources_table, Key=key)["Item"]
    assert verify_all(services(), tenant="beta", repair_index=True).problems == expected
    assert local.ddb._client.get_item(TableName=get_settings().resources_table, Key=key)["Item"] == damaged
