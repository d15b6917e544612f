"""POST /fhir/{type}: create a resource (version 1; conditional with If-None-Exist) or record a Provenance. A Binary
may also be sent as raw content in its own Content-Type (esus.http.binary)."""

from esus.container import services
from esus.domain.fhir import PROVENANCE
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, provenance_version, write_response
from esus.http.binary import request_body

app = create_app()


@app.post("/fhir/<resource_type>")
def create(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "create")
    body = request_body(request, resource_type)
    if resource_type == PROVENANCE:
        record = services().provenance.create(principal, body)
        return write_response(request, provenance_version(record), 201)
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    if_none_exist = request.header("If-None-Exist")
    if if_none_exist is not None:
        principal.require_interaction(resource_type, "conditional-create")
        version, created = services().conditional.create(principal, resource_type, body, if_none_exist, x_provenance)
        return write_response(request, version, 201 if created else 200)
    version = services().resources.create(principal, resource_type, body, x_provenance)
    return write_response(request, version, 201)


handler = lambda_entry(app)
