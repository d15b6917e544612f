"""Patient compartment over HTTP (issue 14): compartment search, $everything paging (_type, _since, _count,
absolute next links, referenced Practitioners/Organizations/Locations/Medications), _include/_revinclude
(incl. :iterate and the Provenance chain of custody with versioned targets), patient-scoped tokens and the
discovery documents."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import RunningStack, created, new_tenant

CLASS = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}


def code(value: str) -> dict[str, Any]:
    return {"coding": [{"system": "urn:c", "code": value}]}


def matches(bundle: dict[str, Any], mode: str = "match") -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle.get("entry", [])
            if e["search"]["mode"] == mode]


def all_pages(client: httpx.Client, url: str, base_url: str) -> tuple[list[dict[str, Any]], int]:
    """Every entry, following absolute next links; and the number of pages."""
    entries: list[dict[str, Any]] = []
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        entries += bundle["entry"]
        pages += 1
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(base_url)
        url = links.get("next", "")
        assert not url or url.startswith(base_url + "/"), url  # absolute
        assert pages < 50
    return entries, pages


@pytest.fixture(scope="module")
def world(stack: RunningStack) -> dict[str, Any]:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        def post(resource: dict[str, Any]) -> str:
            return str(created(client, resource)["id"])

        org = post({"resourceType": "Organization", "name": "Good Health"})
        unused_org = post({"resourceType": "Organization", "name": "Unreferenced"})
        doctor = post({"resourceType": "Practitioner", "name": [{"family": "Who"}]})
        clinic = post({"resourceType": "Location", "name": "Clinic", "managingOrganization": {
            "reference": f"Organization/{org}"}})
        drug = post({"resourceType": "Medication", "code": {"text": "aspirin"},
                     "manufacturer": {"reference": f"Organization/{org}"}})
        p = post({"resourceType": "Patient", "name": [{"family": "Pond"}],
                  "managingOrganization": {"reference": f"Organization/{org}"}})
        q = post({"resourceType": "Patient", "name": [{"family": "Quill"}]})
        members: set[tuple[str, str]] = {("Patient", p)}
        for i in range(12):
            members.add(("Observation", post({
                "resourceType": "Observation", "status": "final", "code": code(f"obs{i % 3}"),
                "subject": {"reference": f"Patient/{p}"}, "performer": [{"reference": f"Practitioner/{doctor}"}]})))
        for _ in range(4):
            members.add(("Encounter", post({"resourceType": "Encounter", "status": "finished", "class": CLASS,
                                             "subject": {"reference": f"Patient/{p}"},
                                             "location": [{"location": {"reference": f"Location/{clinic}"}}]})))
        members.add(("MedicationRequest", post({
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{p}"}, "medicationReference": {"reference": f"Medication/{drug}"}})))
        # In P's compartment only through a second compartment parameter (performer, not subject).
        performed = post({"resourceType": "Observation", "status": "final", "code": code("obs0"),
                          "subject": {"reference": f"Patient/{q}"}, "performer": [{"reference": f"Patient/{p}"}]})
        members.add(("Observation", performed))
        for i in range(3):
            post({"resourceType": "Observation", "status": "final", "code": code(f"obs{i}"),
                  "subject": {"reference": f"Patient/{q}"}})
        provenance = client.get(f"/Provenance?target=Patient/{p}").json()["entry"]
        members |= {("Provenance", e["resource"]["id"]) for e in provenance}
        return {"tenant": tenant, "p": p, "q": q, "org": org, "unused_org": unused_org, "doctor": doctor,
                "clinic": clinic, "drug": drug, "members": members, "performed": performed}


def test_compartment_search_is_the_or_of_compartment_parameters_and_the_query(
        stack: RunningStack, world: dict[str, Any]) -> None:
    p = world["p"]
    with stack.client(world["tenant"]) as client:
        found = client.get(f"/Patient/{p}/Observation").json()
        expected = {i for t, i in world["members"] if t == "Observation"}
        assert found["total"] == 13 and {i for _, i in matches(found)} <= expected
        entries, _ = all_pages(client, f"{stack.base_url}/Patient/{p}/Observation?_count=5", stack.base_url)
        assert {e["resource"]["id"] for e in entries} == expected  # 13, paged on the compartment path
        narrowed = client.get(f"/Patient/{p}/Observation", params={"code": "urn:c|obs0"}).json()
        assert narrowed.get("total") == 5 and world["performed"] in {i for _, i in matches(narrowed)}
        links = {link["relation"]: link["url"] for link in narrowed["link"]}
        assert links["self"].startswith(f"{stack.base_url}/Patient/{p}/Observation?")
        assert client.get(f"/Patient/{world['q']}/Observation").json()["total"] == 4  # 3 + performed
        assert client.get(f"/Patient/{p}/Encounter").json()["total"] == 4
        assert client.get("/Patient/nobody/Observation").json()["total"] == 0
        refused = client.get(f"/Patient/{p}/Practitioner")
        assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome"
        assert client.get(f"/Observation/{p}/Encounter").status_code == 404  # only the Patient compartment


def test_everything_pages_the_whole_compartment_with_what_it_references(
        stack: RunningStack, world: dict[str, Any]) -> None:
    p = world["p"]
    with stack.client(world["tenant"]) as client:
        entries, pages = all_pages(client, f"{stack.base_url}/Patient/{p}/$everything?_count=7", stack.base_url)
        found = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries
                 if e["search"]["mode"] == "match"]
        assert len(found) == len(set(found)) and set(found) == world["members"]
        assert found[0] == ("Patient", p) and pages == -(-len(world["members"]) // 7)
        included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries
                    if e["search"]["mode"] == "include"}
        assert included == {("Organization", world["org"]), ("Practitioner", world["doctor"]),
                            ("Location", world["clinic"]), ("Medication", world["drug"])}
        only = client.get(f"/Patient/{p}/$everything", params={"_type": "Encounter,Location", "_count": 50}).json()
        assert {t for t, _ in matches(only)} == {"Encounter"} and matches(only, "include") == [
            ("Location", world["clinic"])]
        first = client.get(f"/Patient/{p}/$everything", params={"_count": 7}).json()
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        cursor = next_url.split("_cursor=")[1]
        assert client.get(f"/Patient/{p}/$everything", params={"_count": 8, "_cursor": cursor}).status_code == 400
        assert client.get(f"/Patient/{world['q']}/$everything", params={"_count": 7, "_cursor": cursor}
                          ).status_code == 400  # bound to the patient and the query
        forged = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
        assert client.get(f"/Patient/{p}/$everything", params={"_count": 7, "_cursor": forged}).status_code == 400
        bad = client.get(f"/Patient/{p}/$everything", params={"_type": "Nope"})
        assert bad.status_code == 400
        assert client.get(f"/Patient/{p}/$everything", params={"start": "2020"}).status_code == 400
        assert client.get("/Patient/nobody/$everything").status_code == 404


def test_everything_since(stack: RunningStack, world: dict[str, Any]) -> None:
    p = world["p"]
    with stack.client(world["tenant"]) as client:
        cut = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".999Z"  # everything so far is older
        time.sleep(1.1)
        late = client.post("/Condition", json={"resourceType": "Condition", "subject": {"reference": f"Patient/{p}"},
                                               "code": {"text": "late"}})
        assert late.status_code == 201
        recent = client.get(f"/Patient/{p}/$everything", params={"_since": cut, "_count": 100}).json()
        assert matches(recent) == [("Condition", late.json()["id"])]
        world["members"].add(("Condition", late.json()["id"]))


def test_includes_and_the_chain_of_custody(stack: RunningStack, world: dict[str, Any]) -> None:
    p = world["p"]
    with stack.client(world["tenant"]) as client:
        for family in ("Ponder", "Pondest", "Pondiest"):  # versions 2..4
            current = client.get(f"/Patient/{p}").json()
            assert client.put(f"/Patient/{p}", json={**current, "name": [{"family": family}]}).status_code == 200
        posted = client.post("/Provenance", json={
            "resourceType": "Provenance", "target": [{"reference": f"Patient/{p}/_history/2"}],
            "agent": [{"who": {"reference": f"Organization/{world['org']}"}}]})
        assert posted.status_code == 201, posted.text
        custody = client.get("/Patient", params={"_id": p, "_revinclude": "Provenance:target"}).json()
        assert matches(custody) == [("Patient", p)]
        records = [e["resource"] for e in custody["entry"] if e["search"]["mode"] == "include"]
        targets = sorted(t["reference"] for r in records for t in r["target"])
        assert targets == sorted([f"Patient/{p}/_history/{n}" for n in (1, 2, 3, 4)] + [f"Patient/{p}/_history/2"])
        links = {link["relation"]: link["url"] for link in custody["link"]}
        assert "_revinclude=Provenance%3Atarget" in links["self"]

        obs = client.get("/Observation", params={"subject": f"Patient/{p}", "_include": "Observation:subject",
                                                 "_count": 3}).json()
        assert len(matches(obs)) == 3 and matches(obs, "include") == [("Patient", p)]  # once, not per match
        chain = client.get("/MedicationRequest", params={
            "subject": f"Patient/{p}", "_include": "MedicationRequest:medication",
            "_include:iterate": "Medication:manufacturer"}).json()
        assert set(matches(chain, "include")) == {("Medication", world["drug"]), ("Organization", world["org"])}
        rev = client.get("/Practitioner", params={"_id": world["doctor"], "_revinclude": "Observation:performer",
                                                  "_count": 1}).json()
        assert len(matches(rev, "include")) == 12
        assert client.get("/Observation", params={"_include": "Observation:nope"}).status_code == 400


def test_patient_scoped_token(stack: RunningStack, world: dict[str, Any]) -> None:
    p, q = world["p"], world["q"]
    token = stack.token(world["tenant"], "patient/*.read", None, patient=p)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as client:
        assert client.get(f"/Patient/{p}").status_code == 200
        assert client.get(f"/Patient/{q}").status_code == 404
        assert client.get(f"/Patient/{q}/$everything").status_code == 404
        assert client.get(f"/Observation?subject=Patient/{q}").status_code == 404
        mine = client.get("/Observation", params={"_count": 100}).json()
        assert {i for _, i in matches(mine)} == {i for t, i in world["members"] if t == "Observation"}
        everything = client.get(f"/Patient/{p}/$everything", params={"_count": 100}).json()
        assert {t for t, _ in matches(everything, "include")} == set()  # Practitioner etc.: not in its scopes
        assert client.get("/_history").status_code == 403 and client.get("/Observation/_history").status_code == 403
        assert client.get(f"/Practitioner/{world['doctor']}").status_code == 403


def test_discovery_documents(stack: RunningStack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:  # no token
        smart = client.get("/.well-known/smart-configuration")
        assert smart.status_code == 200 and smart.headers["Content-Type"].startswith("application/json")
        assert "permission-patient" in smart.json()["capabilities"]
        statement = client.get("/metadata").json()
        assert statement["rest"][0]["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
