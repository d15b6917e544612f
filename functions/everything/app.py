"""GET /fhir/Patient/{id}/$everything: the patient's record (its compartment and what it references), paged."""

from esus.container import services
from esus.domain.compartment import PATIENT
from esus.domain.fhir import require_id
from esus.errors import NotFound
from esus.http.api import FhirRequest, Response, create_app, fhir_response, lambda_entry
from esus.http.bundle_render import page_bundle

app = create_app()


@app.get("/fhir/<resource_type>/<resource_id>/<operation>")
def everything(resource_type: str, resource_id: str, operation: str) -> Response[str]:
    if resource_type != PATIENT or operation != "$everything":
        raise NotFound("No such FHIR endpoint ($everything is offered on Patient)")
    request = FhirRequest(app)
    principal = request.authorize(PATIENT, "read")
    page = services().everything.everything(principal, require_id(resource_id), request.query())
    next_url = request.url_with(_cursor=page.next_cursor) if page.next_cursor else None
    return fhir_response(200, page_bundle(request.base_url, request.url, next_url, page.resources, page.included))


handler = lambda_entry(app)
