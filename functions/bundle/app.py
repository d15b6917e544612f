"""POST /fhir: a transaction Bundle (all or nothing: docs/TRANSACTIONS.md) or a batch Bundle."""

from aws_lambda_powertools.event_handler import Response

from esus.container import services
from esus.domain.provenance import parse_x_provenance
from esus.http.api import FhirRequest, create_app, fhir_response, lambda_entry
from esus.http.bundle_render import response_bundle
from esus.limits import MAX_BUNDLE_BYTES

app = create_app()


@app.post("/fhir")
def bundle() -> Response[str]:
    request = FhirRequest(app)
    principal = request.principal
    body = request.json_body(max_bytes=MAX_BUNDLE_BYTES)
    x_provenance = parse_x_provenance(request.header("X-Provenance"))
    kind, results = services().bundles.process(principal, body, x_provenance)
    with_resources = request.prefer.get("return") == "representation"
    return fhir_response(200, response_bundle(kind, results, with_resources))


handler = lambda_entry(app)
