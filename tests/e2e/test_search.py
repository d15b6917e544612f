"""FHIR search over HTTP (issue 12): every parameter type and prefix, result parameters, tenants, PHI at
rest in the index, read-your-writes under racing writers, and an oracle property test."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esus.domain.search_semantics import matches, parse_search
from tests.conftest import RunningStack, created, new_tenant
from tests.e2e.phi_scan import NOISE

LOINC = "http://loinc.org"


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def patient(family: str, given: list[str], birth: str, gender: str, city: str = "Oakvale") -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": given}], "birthDate": birth,
            "gender": gender, "address": [{"line": ["1 Main St"], "city": city}]}


def observation(subject: str, code: str, value: float, when: str, status: str = "final") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": status, "subject": {"reference": subject},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"}}


@pytest.fixture(scope="module")
def data(stack: RunningStack) -> dict[str, Any]:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        def post(resource: dict[str, Any]) -> str:
            return str(created(client, resource)["id"])

        p = {
            "peter": post(patient("Chalmers", ["Peter", "James"], "1974-12-25", "male")),
            "renee": post(patient("Chalmers", ["Renée"], "1961-05-12", "female", "Springfield")),
            "ann": post(patient("Chalmersson", ["Ann"], "1961", "female")),
            "bob": post(patient("Baker", ["Bob"], "2001-02-03", "male")),
        }
        o = {
            "p1": post(observation(f"Patient/{p['peter']}", "8867-4", 120, "2024-06-10T10:00:00Z")),
            "p2": post(observation(f"Patient/{p['peter']}", "8310-5", 37.2, "2023-01-05T08:00:00Z")),
            "r1": post(observation(f"Patient/{p['renee']}", "8867-4", 80, "2024-01-01T00:00:00Z", "amended")),
        }
        encounter = post({"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "subject": {"reference": f"Patient/{p['renee']}"},
                          "period": {"start": "2024-06-01T09:00:00Z", "end": "2024-06-03T10:00:00Z"}})
        condition = post({"resourceType": "Condition", "subject": {"reference": f"Patient/{p['peter']}"},
                          "clinicalStatus": {"coding": [{
                              "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                              "code": "active"}]}, "code": {"text": "flu"}})
        report = post({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "panel"},
                       "subject": {"reference": f"Patient/{p['peter']}"},
                       "result": [{"reference": f"Observation/{o['p1']}"}]})
    return {"tenant": tenant, "p": p, "o": o, "encounter": encounter, "condition": condition, "report": report}


def test_issue_examples(stack: RunningStack, data: dict[str, Any]) -> None:
    p, o = data["p"], data["o"]
    with stack.client(data["tenant"]) as client:
        def find(path: str, **params: str) -> set[str]:
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            return ids(response.json())

        assert find("/Observation", patient=p["peter"]) == {o["p1"], o["p2"]}
        assert find("/Observation", subject=f"Patient/{p['peter']}") == {o["p1"], o["p2"]}
        assert find("/Observation", **{"subject:Patient": p["peter"]}) == {o["p1"], o["p2"]}
        assert find("/Observation", subject=f"{stack.base_url}/Patient/{p['renee']}") == {o["r1"]}
        assert find("/DiagnosticReport", result=f"Observation/{o['p1']}") == {data["report"]}
        assert find("/Patient", name="chal") == {p["peter"], p["renee"], p["ann"]}
        assert find("/Patient", name="Chalmers") == {p["peter"], p["renee"], p["ann"]}
        assert find("/Patient", given="renee") == {p["renee"]}
        assert find("/Patient", given="RENÉE") == {p["renee"]}
        assert find("/Patient", **{"family:exact": "Chalmers"}) == {p["peter"], p["renee"]}
        assert find("/Patient", **{"family:contains": "mersso"}) == {p["ann"]}
        assert find("/Patient", **{"address-city": "springf"}) == {p["renee"]}
        assert find("/Patient", birthdate="1961") == {p["renee"], p["ann"]}
        assert find("/Patient", birthdate="1961-05") == {p["renee"]}  # "1961" is a whole year: not within May
        assert find("/Patient", birthdate="ge1970") == {p["peter"], p["bob"]}
        assert find("/Patient", birthdate="lt1962-01-01") == {p["renee"], p["ann"]}
        assert find("/Patient", birthdate="sa2000") == {p["bob"]}
        assert find("/Patient", birthdate="eb1961-06") == {p["renee"]}
        assert find("/Patient", birthdate="ne1961", gender="female") == set()
        assert find("/Patient", gender="female") == {p["renee"], p["ann"]}
        assert find("/Patient", name="chalmers", birthdate="1974-12-25") == {p["peter"]}
        assert find("/Observation", date="ge2024-01-01") == {o["p1"], o["r1"]}
        assert find("/Observation", date="2024-06") == {o["p1"]}
        assert find("/Observation", date="lt2024") == {o["p2"]}
        assert find("/Observation", code=f"{LOINC}|8867-4") == {o["p1"], o["r1"]}
        assert find("/Observation", code="8867-4", patient=p["renee"]) == {o["r1"]}
        assert find("/Observation", code="|8867-4") == set()
        assert find("/Observation", **{"code:not": "8867-4"}) == {o["p2"]}
        assert find("/Observation", status="final,amended", patient=p["peter"]) == {o["p1"], o["p2"]}
        assert find("/Observation", **{"value-quantity": "gt100"}) == {o["p1"]}
        assert find("/Observation", **{"value-quantity": "le80"}) == {o["p2"], o["r1"]}
        assert find("/Observation", **{"value-quantity": "120|http://unitsofmeasure.org|mm[Hg]"}) == {o["p1"]}
        assert find("/Encounter", date="2024-06") == {data["encounter"]}
        assert find("/Encounter", date="2024-06-02") == set()  # a 3-day stay is not within one day ...
        assert find("/Encounter", date="ap2024-06-02") == {data["encounter"]}  # ... but overlaps it
        assert find("/Encounter", **{"class": "AMB"}) == {data["encounter"]}
        assert find("/Condition", **{"clinical-status": "active"}) == {data["condition"]}
        assert find("/Patient", _id=f"{p['bob']},nope") == {p["bob"]}
        assert find("/Patient") == set(p.values())
        everything = client.get("/Observation", params={"_lastUpdated": "gt2000-01-01"}).json()
        assert ids(everything) == set(o.values()) and everything["total"] == 3
        assert find("/Observation", _lastUpdated="lt2000") == set()


def test_post_search_and_searchset_shape(stack: RunningStack, data: dict[str, Any]) -> None:
    with stack.client(data["tenant"]) as client:
        response = client.post("/Patient/_search", content="name=chal&gender=female",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        bundle = response.json()
    assert response.status_code == 200
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
    assert all(e["fullUrl"].startswith("http") for e in bundle["entry"])
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert self_link.startswith(stack.base_url + "/Patient?") and "name=chal" in self_link


def test_paging_sort_total_summary_elements(stack: RunningStack, data: dict[str, Any]) -> None:
    p = data["p"]
    with stack.client(data["tenant"]) as client:
        seen: list[str] = []
        url: str | None = "/Patient?_count=1&_sort=-birthdate"
        while url:
            bundle = client.get(url).json()
            assert bundle["total"] == 4 and len(bundle["entry"]) == 1
            seen += [e["resource"]["id"] for e in bundle["entry"]]
            links = {link["relation"]: link["url"] for link in bundle["link"]}
            assert all(u.startswith("http") for u in links.values())
            assert ("previous" in links) == (len(seen) > 1)
            url = links.get("next")
        assert seen == [p["bob"], p["peter"], p["ann"], p["renee"]]  # "1961" ends after 1961-05-12
        ascending = client.get("/Patient", params={"_sort": "birthdate"}).json()
        # ascending by each resource's earliest instant: "1961" starts before 1961-05-12
        assert [e["resource"]["id"] for e in ascending["entry"]] == [p["ann"], p["renee"], p["peter"], p["bob"]]
        by_update = client.get("/Patient", params={"_sort": "-_lastUpdated"}).json()
        assert [e["resource"]["id"] for e in by_update["entry"]] == [p["bob"], p["ann"], p["renee"], p["peter"]]
        assert client.get("/Patient", params={"_sort": "family"}).status_code == 400
        no_total = client.get("/Patient", params={"_total": "none", "name": "chal"}).json()
        assert "total" not in no_total and len(no_total["entry"]) == 3
        counted = client.get("/Patient", params={"_summary": "count", "gender": "male"}).json()
        assert counted["total"] == 2 and not counted.get("entry")
        summary = client.get("/Patient", params={"_summary": "true", "_id": p["bob"]}).json()["entry"][0]["resource"]
        assert "name" in summary and summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
        elements = client.get("/Patient", params={"_elements": "birthDate", "_id": p["bob"]}).json()
        resource = elements["entry"][0]["resource"]
        assert set(resource) == {"resourceType", "id", "meta", "birthDate"}
        assert client.get(f"/Patient/{p['bob']}").json()["name"]  # the stored resource is whole
        capped = client.get("/Patient", params={"_count": "100000"}).json()
        assert len(capped["entry"]) == 4


def test_unknown_parameters_and_lenient_handling(stack: RunningStack, data: dict[str, Any]) -> None:
    with stack.client(data["tenant"]) as client:
        strict = client.get("/Patient", params={"shoe-size": "9", "name": "chal"})
        assert strict.status_code == 400 and "shoe-size" in strict.text
        assert strict.json()["resourceType"] == "OperationOutcome"
        lenient = client.get("/Patient", params={"shoe-size": "9", "name": "chal"},
                             headers={"Prefer": "handling=lenient"}).json()
        assert lenient["total"] == 3
        self_link = lenient["link"][0]["url"]
        assert "shoe-size" not in self_link and "name=chal" in self_link
        for bad in ({"birthdate": "1961-13"}, {"family:fuzzy": "x"}, {"value-quantity": "gtabc"},
                    {"_summary": "text"}, {"_total": "maybe"}):
            assert client.get("/Patient" if "value-quantity" not in bad else "/Observation",
                              params=bad).status_code == 400, bad


def test_no_cross_tenant_results(stack: RunningStack, data: dict[str, Any]) -> None:
    with stack.client(new_tenant()) as other:
        other.post("/Patient", json=patient("Chalmers", ["Eve"], "1961-05-12", "female"))
        assert other.get("/Patient", params={"name": "chal"}).json()["total"] == 1
        assert other.get("/Observation", params={"patient": data["p"]["peter"]}).json()["total"] == 0
        assert other.get("/Patient", params={"_id": data["p"]["peter"]}).json()["total"] == 0
        assert other.get("/Patient").json()["total"] == 1
    with stack.client(data["tenant"]) as client:
        assert data["p"]["renee"] in ids(client.get("/Patient", params={"birthdate": "1961-05-12"}).json())
        assert client.get("/Patient", params={"given": "eve"}).json()["total"] == 0


def test_updates_and_deletes_stop_matching_at_once(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json=patient("Oldname", ["Zed"], "1990-01-01", "male")).json()["id"]
        assert ids(client.get("/Patient", params={"family": "oldn"}).json()) == {pid}
        updated = client.put(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'},
                             json={**patient("Newname", ["Zed"], "1990-01-01", "male"), "id": pid})
        assert updated.status_code == 200
        assert client.get("/Patient", params={"family": "oldn"}).json()["total"] == 0
        assert ids(client.get("/Patient", params={"family": "newn"}).json()) == {pid}
        client.delete(f"/Patient/{pid}")
        assert client.get("/Patient", params={"family": "newn"}).json()["total"] == 0
        assert client.get("/Patient").json()["total"] == 0


def _raw_index_text(stack: RunningStack, tenant: str) -> str:
    """Every index item of the tenant: search items, Provenance's own reference index, the change log."""
    items = stack.tenant_items(tenant)["IndexTable"]
    assert len(items) > 100 and sum("|Provenance|" in i["pk"]["S"] for i in items) >= 10
    return json.dumps(items)


def test_index_holds_no_phi_in_clear(stack: RunningStack, data: dict[str, Any]) -> None:
    """Names, their folded prefixes, birth dates (any precision), cities and patient references never
    appear in any index key, Provenance's target/agent/patient/entity items included (every write's
    Provenance targets the version it wrote: the Patients' ones target the patients)."""
    text = _raw_index_text(stack, data["tenant"])
    raw = text.lower()
    # Server-made ids (uuids), tokens and timestamps can hold "1961" by chance: blanked for the value probes.
    values = NOISE.sub(b"~", text.encode()).decode().lower()
    for probe in ("chalmers", "chal", "renee", "renée", "peter", "oakvale", "springfield", "main st",
                  "1961-05-12", "1974-12", "y1961", "t1961", "1961", "1974"):
        assert probe not in values, probe
    for pid in data["p"].values():
        assert f"patient/{pid}" not in raw
        # a patient's id appears only as the sort key of its own items, never inside a partition key
        assert not [i for i in json.loads(raw) if pid in i["pk"]["s"]]


def test_if_match_update_is_one_conditional_write(stack: RunningStack) -> None:
    """No read first on indexed types: an If-Match on a stale version fails without touching the store."""
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json=patient("Once", ["Only"], "1990-01-01", "male")).json()["id"]
        client.put(f"/Patient/{pid}", json={**patient("Twice", ["Only"], "1990-01-01", "male"), "id": pid})
        stale = client.put(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'},
                           json={**patient("Thrice", ["Only"], "1990-01-01", "male"), "id": pid})
        assert stale.status_code == 412 and stale.headers["ETag"] == 'W/"2"'
        assert client.get("/Patient", params={"family": "thrice"}).json()["total"] == 0


def test_transaction_with_a_report_and_30_observations_commits(stack: RunningStack) -> None:
    """Search index items never take room in a transaction: a report with 30 richly indexed results
    needs exactly as many transaction items as one whose results have almost nothing to index."""
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json=patient("Bundle", ["Tx"], "1980-01-01", "male")).json()["id"]

        def bundle(rich: bool) -> dict[str, Any]:
            plain = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
            entries = [{"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{n:012d}", "resource": observation(
                f"Patient/{pid}", "8867-4", 60 + n, f"2024-06-{1 + n % 28:02d}T10:00:00Z") if rich else plain,
                "request": {"method": "POST", "url": "Observation"}} for n in range(30)]
            entries.append({"resource": {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
                                         "subject": {"reference": f"Patient/{pid}"},
                                         "result": [{"reference": e["fullUrl"]} for e in entries]},
                            "request": {"method": "POST", "url": "DiagnosticReport"}})
            return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

        rich = client.post(stack.base_url, json=bundle(rich=True))
        if rich.status_code == 413:  # the per-entry core items (version, history, Provenance ...) are too many
            plain = client.post(stack.base_url, json=bundle(rich=False))
            assert plain.status_code == 413
            needed = [int(r.json()["issue"][0]["diagnostics"].split("needs ")[1].split()[0]) for r in (rich, plain)]
            assert needed[0] == needed[1], needed  # search index items add nothing
            return
        assert rich.status_code == 200, rich.text[:500]
        assert client.get("/Observation", params={"patient": pid, "_count": "100"}).json()["total"] == 30
        assert client.get("/DiagnosticReport", params={"patient": pid}).json()["total"] == 1


def test_read_your_writes_under_racing_writers(stack: RunningStack) -> None:
    """A write that returned is found by every search started after it, while others write."""
    tenant = new_tenant()
    failures: list[str] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        with stack.client(tenant) as client:
            k = 0
            while not stop.is_set() and k < 15:
                family = f"Racer{n}x{k}"
                created = client.post("/Patient", json=patient(family, ["R"], "1990-01-01", "male"))
                if created.status_code != 201:
                    failures.append(f"create {created.status_code}")
                    continue
                pid = created.json()["id"]
                if ids(client.get("/Patient", params={"family": family.lower()}).json()) != {pid}:
                    failures.append(f"{family} not found right after its create")
                renamed = f"Moved{n}x{k}"
                update = client.put(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'},
                                    json={**patient(renamed, ["R"], "1990-01-01", "male"), "id": pid})
                if update.status_code != 200:
                    failures.append(f"update {update.status_code}")
                elif client.get("/Patient", params={"family": family}).json()["total"] != 0 or \
                        ids(client.get("/Patient", params={"family": renamed}).json()) != {pid}:
                    failures.append(f"{family} still matches (or {renamed} not yet) after the update returned")
                k += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    for t in threads:
        t.join(timeout=240)
    stop.set()
    assert not failures, failures[:5]
    with stack.client(tenant) as client:
        assert client.get("/Patient", params={"family": "moved"}).json()["total"] == 60


# ---------- the oracle: indexed search == brute force over every decrypted resource ----------
ORACLE_QUERIES = st.one_of(
    st.builds(lambda v: ("name", v), st.sampled_from(["chal", "Chalmers", "ren", "b", "ann", "peter j", "zz"])),
    st.builds(lambda v: ("family:exact", v), st.sampled_from(["Chalmers", "chalmers", "Baker"])),
    st.builds(lambda v: ("family", v), st.sampled_from(["chal", "ann", "b", "peterson"])),
    st.builds(lambda v: ("given", v), st.sampled_from(["ren", "chal", "pet", "j"])),
    st.builds(lambda v: ("gender", v), st.sampled_from(["male", "female", "male,female", "other"])),
    st.builds(lambda p, d: ("birthdate", p + d), st.sampled_from(["", "ge", "le", "gt", "lt", "sa", "eb", "ne"]),
              st.sampled_from(["1961", "1961-05", "1961-05-12", "1974-12-25", "2001", "1990-06"])),
    st.builds(lambda v: ("address-city", v), st.sampled_from(["oak", "spring", "nowhere"])),
)


@pytest.fixture(scope="module")
def oracle_data(stack: RunningStack, data: dict[str, Any]) -> tuple[httpx.Client, list[dict[str, Any]]]:
    client = stack.client(data["tenant"])
    everything = client.get("/Patient", params={"_count": "100"}).json()
    return client, [e["resource"] for e in everything["entry"]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ORACLE_QUERIES, min_size=1, max_size=3))
def test_oracle_indexed_search_equals_brute_force(
    oracle_data: tuple[httpx.Client, list[dict[str, Any]]], query: list[tuple[str, str]]
) -> None:
    client, resources = oracle_data
    params: dict[str, list[str]] = {}
    for name, value in query:
        params.setdefault(name, []).append(value)
    criteria = parse_search("Patient", params, lenient=False).criteria
    expected = {r["id"] for r in resources if matches(r, criteria)}
    response = client.get("/Patient", params=[(k, v) for k, vs in params.items() for v in vs] + [("_count", "100")])
    assert response.status_code == 200, response.text
    assert ids(response.json()) == expected, params
