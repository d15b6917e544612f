"""PUT /fhir/{type}?<search>: conditional update (0 matches: create, 1: update, more: 412)."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, write_response

app = create_app()


@app.put("/fhir/<resource_type>")
def conditional_update(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "conditional-update")
    if_match = request.if_match()
    body = request.json_body()
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    outcome = services().conditional.update(principal, resource_type, request.query(), body, if_match, x_provenance)
    return write_response(request, outcome.version, 201 if outcome.created else 200)


handler = lambda_entry(app)
