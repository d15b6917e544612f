"""DELETE /fhir/{type}/{id}: soft delete recorded as a new version; idempotent."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, fhir_response, lambda_entry, version_headers

app = create_app()


@app.delete("/fhir/<resource_type>/<resource_id>")
def delete(resource_type: str, resource_id: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "delete")
    if_match = request.if_match()
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    version = services().resources.delete(principal, resource_type, resource_id, if_match, x_provenance)
    return fhir_response(204, None, version_headers(version) if version else {})


handler = lambda_entry(app)
