"""The rest of the REST surface: PATCH, conditional create/update/delete, type and system history."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import RunningStack, new_tenant

PATCH_JSON = {"Content-Type": "application/json-patch+json"}


def _patient(client, phone: str = "555-200-0001", **fields):
    body = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": phone}], **fields}
    return client.post("/Patient", json=body).json()


def test_json_patch(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        created = _patient(client, gender="male")
        pid = created["id"]
        ops = [{"op": "test", "path": "/gender", "value": "male"},
               {"op": "replace", "path": "/gender", "value": "female"},
               {"op": "add", "path": "/birthDate", "value": "1980-02-03"}]
        patched = client.patch(f"/Patient/{pid}", content=json.dumps(ops), headers={**PATCH_JSON, "If-Match": 'W/"1"'})
        assert patched.status_code == 200, patched.text
        assert patched.json()["gender"] == "female" and patched.json()["meta"]["versionId"] == "2"
        assert patched.headers["ETag"] == 'W/"2"'
        stale = client.patch(f"/Patient/{pid}", content=json.dumps(ops[1:]), headers={**PATCH_JSON, "If-Match": "1"})
        assert stale.status_code == 412
        failing_test = client.patch(f"/Patient/{pid}", content=json.dumps(ops), headers=PATCH_JSON)
        assert failing_test.status_code == 422
        for bad, status in (
            ([{"op": "replace", "path": "/id", "value": "x"}], 400),
            ([{"op": "remove", "path": "/meta"}], 400),
            ([{"op": "add", "path": "/birthDate", "value": "not a date"}], 400),
            ([{"op": "frobnicate", "path": "/gender"}], 400),
            ({"op": "add"}, 400),
            ([{"op": "remove", "path": "/name/7"}], 422),
        ):
            response = client.patch(f"/Patient/{pid}", content=json.dumps(bad), headers=PATCH_JSON)
            assert response.status_code == status, (bad, response.text)
            assert response.json()["resourceType"] == "OperationOutcome"
        wrong_type = client.patch(f"/Patient/{pid}", json=ops)
        assert wrong_type.status_code == 415
        assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
        assert client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["total"] == 2


def test_conditional_create(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "MRN-1"}]}
        first = client.post("/Patient", json=body, headers={"If-None-Exist": "identifier=urn:mrn|MRN-1"})
        assert first.status_code == 201
        second = client.post("/Patient", json=body, headers={"If-None-Exist": "identifier=urn:mrn|MRN-1"})
        assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
        assert second.headers["ETag"] == 'W/"1"'
        client.post("/Patient", json={**body, "identifier": [{"system": "urn:mrn", "value": "MRN-2"}]})
        client.post("/Patient", json={**body, "identifier": [{"system": "urn:mrn", "value": "MRN-2"}]})
        many = client.post("/Patient", json=body, headers={"If-None-Exist": "identifier=MRN-2"})
        assert many.status_code == 412
        assert client.get("/Patient", params={"identifier": "MRN-2"}).json()["total"] == 2
        bad = client.post("/Patient", json=body, headers={"If-None-Exist": "shoe=9"})
        assert bad.status_code == 400


def test_concurrent_conditional_creates_make_exactly_one(stack: RunningStack) -> None:
    tenant = new_tenant()
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "RACE-1"}]}

    def create(_: int) -> tuple[int, str]:
        with stack.client(tenant) as client:
            response = client.post("/Patient", json=body, headers={"If-None-Exist": "identifier=urn:mrn|RACE-1"})
            return response.status_code, response.json().get("id", "")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    assert [s for s, _ in results].count(201) == 1, results
    assert {s for s, _ in results} <= {200, 201}
    assert len({i for _, i in results}) == 1
    with stack.client(tenant) as client:
        assert client.get("/Patient", params={"identifier": "urn:mrn|RACE-1"}).json()["total"] == 1
        # After the match is deleted, a new conditional create may create again.
        pid = results[0][1]
        client.delete(f"/Patient/{pid}")
        again = client.post("/Patient", json=body, headers={"If-None-Exist": "identifier=urn:mrn|RACE-1"})
        assert again.status_code == 201 and again.json()["id"] != pid


def test_conditional_update_and_delete(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        created = client.put("/Patient", params={"identifier": "urn:mrn|C-1"}, json={
            "resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "C-1"}]})
        assert created.status_code == 201
        pid = created.json()["id"]
        updated = client.put("/Patient", params={"identifier": "urn:mrn|C-1"}, json={
            "resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "C-1"}], "active": True},
            headers={"If-Match": 'W/"1"'})
        assert updated.status_code == 200 and updated.json()["id"] == pid and updated.json()["active"] is True
        mismatch = client.put("/Patient", params={"identifier": "urn:mrn|C-1"}, json={
            "resourceType": "Patient", "id": "another"})
        assert mismatch.status_code == 400
        client.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "C-1"}]})
        assert client.put("/Patient", params={"identifier": "C-1"}, json={"resourceType": "Patient"}).status_code == 412
        assert client.delete("/Patient", params={"identifier": "C-1"}).status_code == 412
        assert client.delete("/Patient", params={"identifier": "nobody"}).status_code == 204
        other = client.post("/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": "urn:mrn", "value": "D-1"}]}).json()["id"]
        assert client.delete("/Patient", params={"identifier": "urn:mrn|D-1"}).status_code == 204
        assert client.get(f"/Patient/{other}").status_code == 410
        assert client.put("/Observation", params={"code": "x"}, json={"resourceType": "Observation"}).status_code == 400


def test_conditional_update_matching_nothing_never_takes_over_an_existing_id(stack: RunningStack) -> None:
    """R5 http.html: no match and the body's id exists -> 409; the existing resource is untouched.
    No match and a new id -> created under that id."""
    with stack.client(new_tenant()) as client:
        victim = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()
        taken = client.put("/Patient", params={"identifier": "urn:mrn|NOBODY"},
                           json={"resourceType": "Patient", "id": victim["id"], "active": False})
        assert taken.status_code == 409, taken.text
        assert taken.json()["resourceType"] == "OperationOutcome"
        after = client.get(f"/Patient/{victim['id']}").json()
        assert after["meta"]["versionId"] == "1" and after["active"] is True
        client.delete(f"/Patient/{victim['id']}")
        assert client.put("/Patient", params={"identifier": "urn:mrn|NOBODY"},
                          json={"resourceType": "Patient", "id": victim["id"]}).status_code == 409
        assert client.get(f"/Patient/{victim['id']}").status_code == 410
        fresh = "cond-new-1"
        created = client.put("/Patient", params={"identifier": "urn:mrn|NOBODY"},
                             json={"resourceType": "Patient", "id": fresh})
        assert created.status_code == 201 and created.json()["id"] == fresh
        assert created.headers["Location"].endswith(f"/Patient/{fresh}/_history/1")


def test_type_and_system_history(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        p1 = _patient(client)["id"]
        obs = client.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                "code": {"text": "weight"}}).json()["id"]
        middle = client.put(f"/Patient/{p1}", json={"resourceType": "Patient", "id": p1}).json()["meta"]["lastUpdated"]
        client.delete(f"/Observation/{obs}")
        p2 = _patient(client, "555-200-0002")["id"]

        def refs(bundle: dict) -> list[str]:
            return [f"{e['fullUrl'].split('/fhir/')[1]}@{e['response']['etag']}" for e in bundle["entry"]]

        patients = client.get("/Patient/_history").json()
        assert patients["type"] == "history"
        assert refs(patients) == [f"Patient/{p2}@W/\"1\"", f"Patient/{p1}@W/\"2\"", f"Patient/{p1}@W/\"1\""]
        everything = client.get("/_history").json()
        assert refs(everything) == [f"Patient/{p2}@W/\"1\"", f"Observation/{obs}@W/\"2\"", f"Patient/{p1}@W/\"2\"",
                                    f"Observation/{obs}@W/\"1\"", f"Patient/{p1}@W/\"1\""]
        assert "resource" not in everything["entry"][1]  # the delete
        since = client.get("/_history", params={"_since": middle}).json()
        assert len(since["entry"]) == 3
        at = client.get("/_history", params={"_at": middle}).json()
        assert refs(at)[0] == f"Patient/{p1}@W/\"2\"" and len(at["entry"]) == 3
        paged, url = [], "/_history?_count=2"
        while url:
            page = client.get(url).json()
            assert len(page["entry"]) <= 2
            paged += refs(page)
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        assert paged == refs(everything)
    with stack.client(new_tenant()) as stranger:
        assert stranger.get("/_history").json()["entry"] == []
        assert stranger.get("/Patient/_history").json()["entry"] == []
    with stack.client(new_tenant(), scope="user/Patient.read") as narrow:
        assert narrow.get("/_history").status_code == 403
