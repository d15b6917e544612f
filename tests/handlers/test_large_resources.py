"""Versions too large for a DynamoDB item: the sealed body goes to the object store first, the version's
transaction commits a pointer and a digest, reads check both; a write that dies in between leaves only an orphan
that `esus verify` reports and cleanup removes."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from esus.container import services
from esus.ops.verify import verify_all
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

NAME = "Zyxwvutsrq Quasimodo-Plaintextson"


def _document(size: int, marker: str = NAME) -> dict[str, Any]:
    """A DocumentReference whose attachment holds `size` random bytes (base64: 4/3 of that in the JSON)."""
    data = base64.b64encode(os.urandom(size)).decode()
    return {"resourceType": "DocumentReference", "status": "current",
            "subject": {"display": marker}, "description": f"Discharge letter of {marker}",
            "content": [{"attachment": {"contentType": "application/pdf", "data": data, "title": marker}}]}


def _items(local: InProcessStack, setting: str) -> list[dict[str, Any]]:
    return list(local.ddb._client.scan(TableName=getattr(get_settings(), setting))["Items"])


def _objects(local: InProcessStack) -> dict[str, bytes]:
    client, bucket = local.s3._client, get_settings().object_bucket
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def test_a_1_mb_document_is_stored_as_an_object_and_reads_back(local: InProcessStack) -> None:
    document = _document(1_000_000)
    created = local.request("POST", "/DocumentReference", document)
    assert created.status == 201, created.body[:300]
    body = local.json(created)
    doc_id = body["id"]
    assert _strip(body) == document

    (current,) = _items(local, "resources_table")
    (history,) = _items(local, "history_table")
    for item in (current, history):
        assert "doc" not in item and "phi" not in item
        assert item["obj"]["S"] == f"acme/DocumentReference/{doc_id}/1/{item['sha']['S']}"
    assert current["obj"] == history["obj"]  # one object per version
    objects = _objects(local)
    assert list(objects) == [current["obj"]["S"]]
    stored = objects[current["obj"]["S"]]
    assert hashlib.sha256(stored).hexdigest() == current["sha"]["S"]
    assert NAME.encode() not in stored and document["content"][0]["attachment"]["data"][:64].encode() not in stored

    local.s3.calls.clear()
    read = local.request("GET", f"/DocumentReference/{doc_id}")
    assert read.status == 200 and _strip(local.json(read)) == document
    assert local.s3.calls == ["get_object"]
    assert local.json(local.request("GET", f"/DocumentReference/{doc_id}/_history/1")) == local.json(read)


def test_a_large_document_is_updated_searched_listed_and_deleted(local: InProcessStack) -> None:
    document = _document(600_000)
    created = local.json(local.request("POST", "/DocumentReference", document))
    changed = {**created, "description": "Second letter", "content": _document(500_000)["content"]}
    updated = local.request("PUT", f"/DocumentReference/{created['id']}", changed)
    assert updated.status == 200, updated.body[:300]
    assert len(_objects(local)) == 2  # one per version

    history = local.json(local.request("GET", f"/DocumentReference/{created['id']}/_history"))
    assert [e["resource"]["description"] for e in history["entry"]] == ["Second letter", document["description"]]
    assert [_strip(e["resource"]) for e in history["entry"]][1] == document
    found = local.json(local.request("GET", "/DocumentReference?status=current"))
    assert [e["resource"]["description"] for e in found["entry"]] == ["Second letter"]
    listed = local.json(local.request("GET", "/DocumentReference/_history"))
    assert len(listed["entry"]) == 2
    assert local.request("DELETE", f"/DocumentReference/{created['id']}").status == 204
    assert local.request("GET", f"/DocumentReference/{created['id']}").status == 410
    assert _strip(local.json(local.request("GET", f"/DocumentReference/{created['id']}/_history/1"))) == document


def test_a_body_that_fails_its_digest_or_is_missing_is_an_integrity_failure(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/DocumentReference", _document(500_000)))
    client, bucket = local.s3._client, get_settings().object_bucket
    (key, body), = _objects(local).items()
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    client.put_object(Bucket=bucket, Key=key, Body=tampered)
    result = local.request("GET", f"/DocumentReference/{created['id']}")
    assert result.status == 500 and NAME.encode() not in result.body
    assert any("failed its digest check" in p for p in verify_all(services()).problems)
    client.delete_object(Bucket=bucket, Key=key)
    assert local.request("GET", f"/DocumentReference/{created['id']}").status == 500
    assert any("body of this version is missing" in p for p in verify_all(services()).problems)
    client.put_object(Bucket=bucket, Key=key, Body=body)  # restored: readable again
    assert local.request("GET", f"/DocumentReference/{created['id']}").status == 200


def test_a_write_killed_between_object_and_transaction_leaves_only_an_orphan(local: InProcessStack) -> None:
    from datetime import timedelta

    from botocore.exceptions import ClientError

    from esus.ops.verify import cleanup_objects

    def die(_: dict[str, Any]) -> None:
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "killed"}}, "TransactWriteItems")

    local.ddb.faults["transact_write_items"] = die
    result = local.request("POST", "/DocumentReference", _document(500_000))
    assert result.status == 503, result.body[:300]
    local.ddb.faults.clear()
    assert len(_objects(local)) == 1  # the object was written first ...
    assert all(local.count(t) == 0 for t in ("resources_table", "history_table", "provenance_table"))  # ... only
    assert local.json(local.request("GET", "/DocumentReference"))["total"] == 0

    report = verify_all(services())
    assert report.ok and report.objects == 1
    assert report.orphaned_objects == 0  # younger than the threshold: its write might still be committing
    report = verify_all(services(), orphan_min_age=timedelta(0))
    assert report.ok and report.tenants["acme"].orphaned_objects == 1  # reported, not a problem: invisible
    report = cleanup_objects(services(), min_age=timedelta(0), remove=False)
    assert report.tenants["acme"].orphaned_objects == 1 and len(_objects(local)) == 1  # a dry run
    kept = local.json(local.request("POST", "/DocumentReference", _document(400_000)))  # a live one stays
    report = cleanup_objects(services(), tenant="acme", min_age=timedelta(0))
    assert report.tenants["acme"].removed_objects == 1
    assert len(_objects(local)) == 1
    assert local.request("GET", f"/DocumentReference/{kept['id']}").status == 200
    assert verify_all(services()).ok


def test_a_page_larger_than_a_response_says_how_many_entries_fit(local: InProcessStack) -> None:
    """Three 2.5 MB versions make a 7.5 MB history page: more than a Lambda response holds (AWS would answer 502)."""
    created = local.json(local.request("POST", "/DocumentReference", _document(1_900_000)))
    for n in (2, 3):
        body = {**created, "description": f"version {n}", "content": _document(1_900_000)["content"]}
        assert local.request("PUT", f"/DocumentReference/{created['id']}", body).status == 200
    for _ in range(2):  # three current versions for a search
        assert local.request("POST", "/DocumentReference", _document(1_900_000)).status == 201
    for path in (f"/DocumentReference/{created['id']}/_history", "/DocumentReference/_history?_count=3",
                 "/_history?_count=3", "/DocumentReference?status=current"):
        refused = local.request("GET", path)
        assert refused.status == 400, path
        issue = local.json(refused)["issue"][0]
        assert issue["code"] == "too-costly" and "_count=2" in issue["diagnostics"], issue
    page = local.json(local.request("GET", f"/DocumentReference/{created['id']}/_history?_count=2"))
    assert [e["resource"]["description"] for e in page["entry"]] == ["version 3", "version 2"]
    following = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = local.json(local.request("GET", "/" + following.split("/fhir/", 1)[1]))
    assert [_strip(e["resource"]) for e in rest.get("entry", [])] == [_strip(created)], (following, rest)


def test_rotation_reseals_large_bodies_into_new_objects(local: InProcessStack) -> None:
    from datetime import timedelta

    from esus.container import build_services, use_services
    from esus.ops.rotation import reencrypt_all, rotate_root_key
    from esus.ops.verify import cleanup_objects

    document = _document(500_000)
    created = local.json(local.request("POST", "/DocumentReference", document))
    (old_key,) = _objects(local)
    settings = get_settings()
    rotate_root_key(local.secrets, settings.root_key_secret_id)
    use_services(build_services(settings, local.ddb, local.secrets, local.s3))
    moved = reencrypt_all(services())
    assert (moved.current_items, moved.history_items, moved.failed_keys) == (1, 1, [])
    assert reencrypt_all(services()).history_items == 0  # each item names the key versions of its object
    (current,) = _items(local, "resources_table")
    (history,) = _items(local, "history_table")
    assert [kv["S"] for kv in current["okv"]["L"]] == ["2"] and current["obj"] != history["obj"]
    assert old_key not in {current["obj"]["S"], history["obj"]["S"]}
    assert _strip(local.json(local.request("GET", f"/DocumentReference/{created['id']}"))) == document
    assert _strip(local.json(local.request("GET", f"/DocumentReference/{created['id']}/_history/1"))) == document
    report = cleanup_objects(services(), min_age=timedelta(0))  # bodies no item points to any more
    assert old_key not in _objects(local) and report.tenants["acme"].removed_objects >= 1
    assert set(_objects(local)) == {current["obj"]["S"], history["obj"]["S"]}
    assert verify_all(services()).ok


def test_a_transaction_with_a_large_entry_commits_its_object_with_the_rest(local: InProcessStack) -> None:
    document = _document(700_000)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d0c0000-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**document, "subject": {"reference": "urn:uuid:0d0c0000-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "DocumentReference"}}]}
    result = local.request("POST", "", bundle, headers={"Prefer": "return=representation"})
    assert result.status == 200, result.body[:300]
    entries = local.json(result)["entry"]
    doc_id = entries[1]["response"]["location"].split("/")[1]
    read = local.json(local.request("GET", f"/DocumentReference/{doc_id}"))
    assert read["content"] == document["content"] and read["subject"]["reference"].startswith("Patient/")
    assert len(_objects(local)) == 1


def test_a_large_transaction_rolls_a_large_entry_forward_with_its_object(local: InProcessStack) -> None:
    # Over 100 items: the large-transaction protocol, whose roll-forward makes each current item from the
    # pending history item; a body kept in the object store must come along (obj, sha, okv).
    entries: list[dict[str, Any]] = [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": str(n)}]},
         "request": {"method": "POST", "url": "Patient"}} for n in range(12)]
    document = _document(500_000)
    entries.append({"resource": document, "request": {"method": "POST", "url": "DocumentReference"}})
    result = local.request("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert result.status == 200, result.body[:300]
    assert any(c == "update_item" for c in local.ddb.calls)  # the record's commit: the protocol ran
    doc_id = local.json(result)["entry"][-1]["response"]["location"].split("/")[1]
    read = local.request("GET", f"/DocumentReference/{doc_id}")
    assert read.status == 200, read.body[:300]
    assert local.json(read)["content"] == document["content"]
    current = [i for i in _items(local, "resources_table") if i["pk"]["S"].endswith(doc_id)]
    assert current and "obj" in current[0] and "tx" not in current[0]
    assert verify_all(services()).ok


def test_repair_completes_the_idx_of_a_large_version_without_a_new_object(
    local: InProcessStack, monkeypatch: Any
) -> None:
    """A large DocumentReference stored before compartment items existed: `--repair-index` writes its item and
    rewrites only the current item's idx; the sealed object and its pointer stay as they are."""
    from esus.domain import search_index

    patient = local.json(local.request("POST", "/Patient", {"resourceType": "Patient"}))["id"]
    with monkeypatch.context() as earlier:
        earlier.setattr(search_index, "compartment_patients", lambda resource_type, resource: set())
        document = {**_document(500_000), "subject": {"reference": f"Patient/{patient}"}}
        created = local.json(local.request("POST", "/DocumentReference", document))
    before = {i["pk"]["S"]: i for i in _items(local, "resources_table")}
    objects = _objects(local)
    assert not verify_all(services()).ok
    assert verify_all(services(), repair_index=True).ok and verify_all(services()).ok
    after = {i["pk"]["S"]: i for i in _items(local, "resources_table")}
    key = f"acme|DocumentReference|{created['id']}"
    assert len(after[key]["idx"]["L"]) == len(before[key]["idx"]["L"]) + 1
    assert {k: v for k, v in after[key].items() if k != "idx"} == {k: v for k, v in before[key].items() if k != "idx"}
    assert _objects(local) == objects
    found = local.json(local.request("GET", f"/Patient/{patient}/DocumentReference"))
    assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]
