"""A real SMART client: fhirclient (SMART on FHIR client-py, unmodified) with a patient-scoped token reads its
patient and the patient's Observations from the local stack, exactly as stored, and cannot read another
patient. The app holds a token it obtained elsewhere (a SMART launch), as client-py's saved state."""

from __future__ import annotations

from typing import Any

import pytest
from fhirclient import client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException

from tests.conftest import RunningStack, created, new_tenant


def smart_app(stack: RunningStack, tenant: str, patient_id: str, scope: str) -> client.FHIRClient:
    token = stack.token(tenant, scope, None, patient=patient_id)
    state = {"app_id": "esus-e2e", "scope": f"launch/patient {scope}", "patient_id": patient_id,
             "server": {"base_uri": f"{stack.base_url}/", "auth_type": "oauth2",
                        "auth": {"app_id": "esus-e2e", "access_token": token}}}
    return client.FHIRClient(state=state)


@pytest.mark.parametrize("scope", ["patient/*.read", "patient/Patient.rs patient/Observation.rs"])
def test_fhirclient_reads_its_patient_and_observations(stack: RunningStack, scope: str) -> None:
    tenant = new_tenant()
    stored: dict[str, Any] = {}
    with stack.client(tenant) as admin:
        def post(resource: dict[str, Any]) -> dict[str, Any]:
            return created(admin, resource)

        me = post({"resourceType": "Patient", "name": [{"family": "Smart", "given": ["Sam"]}], "gender": "female",
                   "birthDate": "1980-02-29", "telecom": [{"system": "phone", "value": "+1 555 0111"}]})
        other = post({"resourceType": "Patient", "name": [{"family": "Other"}]})
        for who, count in ((me, 12), (other, 2)):
            for i in range(count):
                obs = post({"resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                            "subject": {"reference": f"Patient/{who['id']}"},
                            "effectiveDateTime": f"2024-01-{i + 1:02d}T08:00:00Z",
                            "valueQuantity": {"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org",
                                              "code": "/min"}})
                stored[obs["id"]] = obs

    smart = smart_app(stack, tenant, me["id"], scope)
    assert smart.ready and smart.patient_id == me["id"]
    patient = smart.patient
    assert isinstance(patient, Patient) and patient.as_json() == me  # unmodified
    search = Observation.where(struct={"patient": me["id"], "_count": "5"})
    observations = list(search.perform_resources_iter(smart.server))  # follows the next links
    assert len(observations) == 12
    assert all(isinstance(o, Observation) for o in observations)
    assert {o.id: o.as_json() for o in observations} == {
        k: v for k, v in stored.items() if v["subject"]["reference"] == f"Patient/{me['id']}"}
    with pytest.raises(FHIRNotFoundException):  # another patient: as if it did not exist
        Patient.read(other["id"], smart.server)
