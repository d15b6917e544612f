"""GET /fhir/Patient/{id}/{type}?…: a search of `type` within the patient's compartment (FHIR compartment search)."""

from esus.container import services
from esus.domain.compartment import PATIENT
from esus.domain.fhir import require_id
from esus.errors import NotFound
from esus.http.api import FhirRequest, Response, create_app, lambda_entry
from esus.http.searchset import search_response

app = create_app()


@app.get("/fhir/<compartment>/<patient_id>/<resource_type>")
def compartment_search(compartment: str, patient_id: str, resource_type: str) -> Response[str]:
    if compartment != PATIENT:
        raise NotFound("No such FHIR endpoint (the Patient compartment is the only one offered)")
    request = FhirRequest(app)
    return search_response(request, services().search, services().includes, resource_type, require_id(patient_id))


handler = lambda_entry(app)
