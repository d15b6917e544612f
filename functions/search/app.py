"""GET /fhir/{type}?… and POST /fhir/{type}/_search: searchset Bundles."""

from aws_lambda_powertools.event_handler import Response

from esus.container import services
from esus.http.api import FhirRequest, create_app, lambda_entry, page_response
from esus.http.bundle_render import searchset_bundle

app = create_app()


@app.get("/fhir/<resource_type>")
@app.post("/fhir/<resource_type>/_search")
def search(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "search-type")
    params = request.search_params()
    page = services().search.search(principal, resource_type, params, request.lenient)
    shown = dict(page.applied if page.applied is not None else params)  # what was applied, not what was sent
    if params.get("_cursor"):
        shown["_cursor"] = params["_cursor"]
    bundle = searchset_bundle(
        request.base_url, resource_type, shown, page.resources, page.total, page.next_cursor, page.last_cursor,
        page.previous_cursor,
    )
    return page_response(bundle)


handler = lambda_entry(app)
