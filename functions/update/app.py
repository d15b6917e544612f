"""PUT /fhir/{type}/{id}: update (If-Match honoured), update-as-create, revive after delete. A Binary may also be
sent as raw content in its own Content-Type (esus.http.binary)."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, write_response
from esus.http.binary import request_body

app = create_app()


@app.put("/fhir/<resource_type>/<resource_id>")
def update(resource_type: str, resource_id: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "update")
    if_match = request.if_match()
    body = request_body(request, resource_type, resource_id)
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    outcome = services().resources.update(principal, resource_type, resource_id, body, if_match, x_provenance)
    return write_response(request, outcome.version, 201 if outcome.created else 200)


handler = lambda_entry(app)
