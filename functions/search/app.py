"""GET /fhir/{type}?… and POST /fhir/{type}/_search: searchset Bundles."""

from aws_lambda_powertools.event_handler import Response

from esus.api import FhirRequest, create_app, fhir_response, lambda_entry
from esus.bundles import searchset_bundle
from esus.container import services

app = create_app()


@app.get("/fhir/<resource_type>")
@app.post("/fhir/<resource_type>/_search")
def search(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "search-type")
    params = request.search_params()
    page = services().search.search(principal, resource_type, params, request.lenient)
    shown = {k: v for k, v in params.items() if k not in page.ignored}
    bundle = searchset_bundle(
        request.base_url, resource_type, shown, page.resources, page.total, page.next_cursor, page.last_cursor
    )
    return fhir_response(200, bundle)


handler = lambda_entry(app)
