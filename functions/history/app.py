"""GET /fhir/{type}/{id}/_history: the versions, newest first, paged."""

from esus.container import services
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, page_response
from esus.http.bundle_render import history_bundle

app = create_app()


@app.get("/fhir/<resource_type>/<resource_id>/_history")
def history(resource_type: str, resource_id: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "history-instance")
    params = request.query()
    within = principal.confinement(resource_type, "history-instance")
    page = services().resources.history(principal.tenant, resource_type, resource_id, params, within=within)
    next_url = None
    if page.next_cursor:
        next_url = request.url_with(_cursor=page.next_cursor)
    return page_response(history_bundle(request.base_url, request.url, page.versions, next_url))


handler = lambda_entry(app)
