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
    Interaction("create Patient", "CreateFunction", 1),
    Interaction("create Observation", "CreateFunction", 1),
    Interaction("read Patient", "ReadFunction", 1),
    Interaction("vread Patient", "VreadFunction", 1),
    Interaction("update Patient, If-Match", "UpdateFunction", 1, design=(
        "by design: Patient has hashed (blind-index) search items, so the current version's index refs are "
        "read first and the stale ones deleted in the same transaction; types without hashed indexes "
        "(Observation) make the single conditional write")),
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
    Interaction("delete Patient", "DeleteFunction", 2, at_most=True),
    # Too large for a DynamoDB item: the sealed body is an S3 object (esus.storage.objects).
    Interaction("create DocumentReference (1 MB)", "CreateFunction", 2, design=(
        "the sealed body is written to S3 first (PutObject), then the version's TransactWriteItems commits its "
        "pointer and digest")),
    Interaction("read DocumentReference (1 MB)", "ReadFunction", 2, design=(
        "GetItem (the current item: pointer and digest) + GetObject (the sealed body)")),
)
LARGE_ATTACHMENT_BYTES = 750_000  # 1,000,000 characters of base64: a 1 MB JSON body


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
    client.call("delete Patient", "DELETE", f"/fhir/Patient/{pid}", expect=204)
    document = client.call("create DocumentReference (1 MB)", "POST", "/fhir/DocumentReference",
                           large_document_body(pid), 201).body
    read = client.call("read DocumentReference (1 MB)", "GET", f"/fhir/DocumentReference/{document['id']}").body
    _expect(read["content"] == document["content"], "the 1 MB DocumentReference read back differs")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)
