"""The measured interactions and the requests of one iteration."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esus_dev.bench import REPO
from esus_dev.bench.gateway import Client
from esus_dev.bench.report import Interaction

SHARED_DATA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared"))
EXAMPLES = SHARED_DATA / "fhir-examples" / "r4"

INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("create Patient", "CreateFunction", 1, design=(
        "one TransactWriteItems holds the version, its history, its Provenance and every search index item of "
        "the specification's Patient example (name, address and telecom words as prefix tokens; family, given "
        "and the address parts are looked up in name's and address's items, docs/SEARCH.md). A Patient with "
        "more items than fit sends them in BatchWriteItem calls of 25, side by side with the transaction")),
    Interaction("create Observation", "CreateFunction", 1),
    Interaction("read Patient", "ReadFunction", 1),
    Interaction("vread Patient", "VreadFunction", 1),
    Interaction("update Patient, If-Match", "UpdateFunction", 1, design=(
        "no read first (index items are keyed by version); one TransactWriteItems, as for create Patient")),
    Interaction("update Observation, If-Match", "UpdateFunction", 1),
    Interaction("update Patient, no If-Match", "UpdateFunction", 2),
    Interaction("update Observation, no If-Match", "UpdateFunction", 2),
    Interaction("history page (3 versions)", "HistoryFunction", 1),
    Interaction("search Patient by phone", "SearchFunction", design=(
        "one keys-only Query per blind token (per live root-key version) + one BatchGetItem for the page")),
    Interaction("create Provenance", "CreateFunction", design=(
        "one BatchGetItem per target type (the targets must exist) + one TransactWriteItems (record + its index "
        "items)")),
    Interaction("search Provenance by target", "SearchFunction", design=(
        "one keys-only Query per reference value + one BatchGetItem for the page")),
    Interaction("search Observation?patient=X", "SearchFunction", 2, design=(
        "one keys-only Query on the patient's reference-token partition (per live root-key version) + one "
        "BatchGetItem of the candidates, each decrypted and re-checked against the whole query")),
    Interaction("search Patient?name=...&birthdate=...", "SearchFunction", design=(
        "one keys-only Query for the name's prefix token (the cheapest parameter) + one BatchGetItem; a "
        "day-precision birth date would need 5 lookups (its day, month, year, decade and era tokens), more than "
        "the 4 a second parameter may use to narrow too, so it only filters: patients sharing the name are "
        "read, decrypted and dropped (section 2a)")),
    Interaction("list Observation (type listing)", "SearchFunction", 2, design=(
        "one keys-only Query of the type's change-log partition + one BatchGetItem for the page only")),
    Interaction("search Observation?patient=X&_summary=count", "SearchFunction", 2, design=(
        "as the patient search: the count is exact, so every candidate is read and re-checked")),
    Interaction("delete Patient", "DeleteFunction", 2, at_most=True),
    # Too large for a DynamoDB item: the sealed body is an S3 object (esus.storage.objects).
    Interaction("create DocumentReference (1 MB)", "CreateFunction", 2, design=(
        "the sealed body is written to S3 first (PutObject), then the version's TransactWriteItems commits its "
        "pointer and digest")),
    Interaction("read DocumentReference (1 MB)", "ReadFunction", 2, design=(
        "GetItem (the current item: pointer and digest) + GetObject (the sealed body)")),
)
LARGE_ATTACHMENT_BYTES = 750_000  # 1,000,000 characters of base64: a 1 MB JSON body
# Searches whose "candidates decrypted per returned result" the report shows (docs/SEARCH.md: every
# candidate's current version is decrypted and re-checked, so this is the price of the index's precision).
SEARCHES = tuple(i.name for i in INTERACTIONS if i.function == "SearchFunction" and "Provenance" not in i.name)
OBSERVATIONS_PER_PATIENT = 5  # the patient's own; as many again belong to decoy patients
DECOY_BIRTH_DATES = ("1974-12-24", "1974-11-25", "1975-12-25")  # near the example's 1974-12-25, same name


def load_example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / name).read_text(encoding="utf-8")))


def patient_body(phone: str, email: str) -> dict[str, Any]:
    """The specification's Patient example with a unique phone (so a phone search finds exactly one)."""
    patient = load_example("Patient-example.json")
    patient.pop("id", None)
    patient["telecom"] = [
        {"system": "phone", "value": phone, "use": "mobile"},
        {"system": "email", "value": email, "use": "home"},
    ]
    return patient


def observation_body(patient_id: str) -> dict[str, Any]:
    observation = load_example("Observation-example.json")
    observation.pop("id", None)
    observation["subject"] = {"reference": f"Patient/{patient_id}"}
    return observation


def provenance_body(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"Patient/{patient_id}"}],
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": "UPDATE"}]},
        "agent": [{"who": {"reference": "Practitioner/bench"}, "onBehalfOf": {"reference": "Organization/bench"}}],
    }


def large_document_body(patient_id: str) -> dict[str, Any]:
    """A DocumentReference with a PDF attachment making its JSON about 1 MB (fresh bytes every time)."""
    data = base64.b64encode(os.urandom(LARGE_ATTACHMENT_BYTES)).decode()
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient_id}"},
            "description": "Discharge letter",
            "content": [{"attachment": {"contentType": "application/pdf", "data": data, "title": "letter.pdf"}}]}


def revised(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**{k: v for k, v in resource.items() if k != "meta"}, **changes}


# ====================================================================================== one scenario iteration
def run_iteration(client: Client, i: int) -> None:
    """Every measured interaction once, on fresh resources. Interaction names match INTERACTIONS."""
    phone = f"+1 555 {i // 10000 % 1000:03d} {i % 10000:04d}"
    patient = client.call("create Patient", "POST", "/fhir/Patient",
                          patient_body(phone, f"bench{i}@example.org"), 201).body
    pid = patient["id"]
    observation = client.call("create Observation", "POST", "/fhir/Observation", observation_body(pid), 201).body
    oid = observation["id"]
    client.call("read Patient", "GET", f"/fhir/Patient/{pid}")
    client.call("vread Patient", "GET", f"/fhir/Patient/{pid}/_history/1")
    patient = client.call("update Patient, If-Match", "PUT", f"/fhir/Patient/{pid}",
                          revised(patient, gender="female"), headers={"If-Match": 'W/"1"'}).body
    observation = client.call("update Observation, If-Match", "PUT", f"/fhir/Observation/{oid}",
                              revised(observation, status="amended"), headers={"If-Match": 'W/"1"'}).body
    client.call("update Patient, no If-Match", "PUT", f"/fhir/Patient/{pid}", revised(patient, gender="other"))
    client.call("update Observation, no If-Match", "PUT", f"/fhir/Observation/{oid}",
                revised(observation, status="corrected"))
    history = client.call("history page (3 versions)", "GET", f"/fhir/Patient/{pid}/_history").body
    _expect(len(history["entry"]) == 3, f"history of {pid} has {len(history['entry'])} entries, expected 3")
    found = client.call("search Patient by phone", "GET", f"/fhir/Patient?phone={phone.replace(' ', '')}").body
    _expect(found["total"] == 1, f"phone search found {found['total']} patients, expected 1")
    client.call("create Provenance", "POST", "/fhir/Provenance", provenance_body(pid), 201)
    provenance = client.call("search Provenance by target", "GET", f"/fhir/Provenance?target=Patient/{pid}").body
    _expect(provenance["total"] == 4, f"Provenance search found {provenance['total']}, expected 4")
    search_iteration(client, pid, oid, patient)
    client.call("delete Patient", "DELETE", f"/fhir/Patient/{pid}", expect=204)
    document = client.call("create DocumentReference (1 MB)", "POST", "/fhir/DocumentReference",
                           large_document_body(pid), 201).body
    read = client.call("read DocumentReference (1 MB)", "GET", f"/fhir/DocumentReference/{document['id']}").body
    _expect(read["content"] == document["content"], "the 1 MB DocumentReference read back differs")


def search_iteration(client: Client, pid: str, oid: str, patient: dict[str, Any]) -> None:
    """Searches over the patient's observations, decoy patients (same name, nearby birth dates) and theirs."""
    for _ in range(1, OBSERVATIONS_PER_PATIENT):
        client.call("create Observation", "POST", "/fhir/Observation", observation_body(pid), 201)
    for birth_date in DECOY_BIRTH_DATES:
        decoy = revised(patient, birthDate=birth_date)
        decoy.pop("id", None)
        decoy.pop("telecom", None)
        did = client.call("create Patient", "POST", "/fhir/Patient", decoy, 201).body["id"]
        client.call("create Observation", "POST", "/fhir/Observation", observation_body(did), 201)
    mine = client.call("search Observation?patient=X", "GET", f"/fhir/Observation?patient={pid}").body
    _expect(ids(mine) >= {oid} and mine["total"] == OBSERVATIONS_PER_PATIENT,
            f"Observation?patient found {mine['total']}, expected {OBSERVATIONS_PER_PATIENT}")
    client.returned(len(ids(mine)))
    family = patient["name"][0]["family"]
    found = client.call("search Patient?name=...&birthdate=...", "GET",
                        f"/fhir/Patient?name={family[:4].lower()}&birthdate={patient['birthDate']}").body
    _expect(ids(found) == {pid}, f"name+birthdate found {sorted(ids(found))}, expected only {pid}")
    client.returned(1)
    listing = client.call("list Observation (type listing)", "GET", "/fhir/Observation").body
    total = OBSERVATIONS_PER_PATIENT + len(DECOY_BIRTH_DATES)  # more in warm-up iterations (no table reset)
    _expect(listing["total"] >= total and len(ids(listing)) == min(listing["total"], 10),
            f"Observation listing has {listing['total']} ({len(ids(listing))} on its page), expected {total}")
    client.returned(len(ids(listing)))
    counted = client.call("search Observation?patient=X&_summary=count", "GET",
                          f"/fhir/Observation?patient={pid}&_summary=count").body
    _expect(counted["total"] == OBSERVATIONS_PER_PATIENT and not counted.get("entry"), "_summary=count")
    client.returned(counted["total"])  # no entries: per counted result


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)
