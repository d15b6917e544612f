"""A real FHIR client against the local stack (issue 12): fhirpy's search API, unmodified, with the
bearer token. `fetch_all` follows the server's absolute `next` links across pages."""

from __future__ import annotations

from typing import Any

from fhirpy import SyncFHIRClient

from tests.conftest import RunningStack, new_tenant

LOINC = "http://loinc.org"


def _observation(pid: str, n: int, code: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": f"2024-03-{1 + n:02d}",
            "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def test_fhirpy_search_fetch_all_pages_through_a_patients_observations(stack: RunningStack) -> None:
    tenant = new_tenant()
    client = SyncFHIRClient(stack.base_url, authorization=f"Bearer {stack.token(tenant)}")
    patient = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Paula"]}], birthDate="1980-02-03")
    patient.save()
    other = client.resource("Patient", name=[{"family": "Other"}])
    other.save()
    created = []
    for n in range(23):  # three pages at the server's default page size of 10
        observation = client.resource("Observation", **_observation(patient.id, n, "8867-4" if n % 2 else "8310-5"))
        observation.save()
        created.append(observation.id)
    client.resource("Observation", **_observation(other.id, 0, "8867-4")).save()

    found = client.resources("Observation").search(patient=patient.id).fetch_all()
    assert sorted(o.id for o in found) == sorted(created)
    assert all(o["subject"]["reference"] == f"Patient/{patient.id}" for o in found)
    # More of the search API, as a client app uses it.
    heart = client.resources("Observation").search(subject=f"Patient/{patient.id}", code=f"{LOINC}|8867-4")
    assert sorted(o.id for o in heart.fetch_all()) == sorted(created[1::2])
    newest = client.resources("Observation").search(patient=patient.id).sort("-date").limit(5).fetch()
    assert [o["effectiveDateTime"] for o in newest] == [f"2024-03-{23 - n:02d}" for n in range(5)]
    assert client.resources("Patient").search(name="fhirp", birthdate="1980").first().id == patient.id
    recent = client.resources("Observation").search(patient=patient.id, date__ge="2024-03-20").fetch_all()
    assert sorted(o.id for o in recent) == sorted(created[19:])
    # Tenants stay apart through the client too.
    stranger = SyncFHIRClient(client.url, authorization=f"Bearer {stack.token(new_tenant())}")
    assert stranger.resources("Observation").search(patient=patient.id).fetch_all() == []
