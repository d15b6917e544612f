"""DELETE /fhir/{type}?<search>: conditional delete of the single match (more than one: 412)."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, fhir_response, lambda_entry, version_headers

app = create_app()


@app.delete("/fhir/<resource_type>")
def conditional_delete(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "conditional-delete")
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    version = services().conditional.delete(principal, resource_type, request.query(), x_provenance)
    return fhir_response(204, None, version_headers(version) if version else {})


handler = lambda_entry(app)
