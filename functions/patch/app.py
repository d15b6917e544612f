"""PATCH /fhir/{type}/{id}: JSON Patch (application/json-patch+json), If-Match honoured."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, write_response

app = create_app()
JSON_PATCH = ("application/json-patch+json",)


@app.patch("/fhir/<resource_type>/<resource_id>")
def patch(resource_type: str, resource_id: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "patch")
    if_match = request.if_match()
    operations = request.json_body(JSON_PATCH)
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    outcome = services().resources.patch(principal, resource_type, resource_id, operations, if_match, x_provenance)
    return write_response(request, outcome.version, 200)


handler = lambda_entry(app)
