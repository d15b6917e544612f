"""POST /fhir: a transaction Bundle (all or nothing: docs/TRANSACTIONS.md) or a batch Bundle."""

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, write_bundle_response
from esus.http.bundle_render import response_bundle

app = create_app()


@app.post("/fhir")
def bundle() -> Response[str]:
    request = FhirRequest(app)
    principal = request.principal
    body = request.json_body()
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    kind, results = services().bundles.process(principal, body, x_provenance)
    with_resources = request.prefer.get("return") == "representation"
    return write_bundle_response(response_bundle(kind, results, with_resources), response_bundle(kind, results, False))


handler = lambda_entry(app)
