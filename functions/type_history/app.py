"""GET /fhir/{type}/_history: every change to resources of one type, newest first, paged."""

from esus.container import services
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, page_response
from esus.http.bundle_render import history_bundle

app = create_app()


@app.get("/fhir/<resource_type>/_history")
def type_history(resource_type: str) -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "history-type")
    within = principal.confinement(resource_type, "history-type")
    page = services().resources.changes(principal.tenant, resource_type, request.query(), within=within)
    next_url = request.url_with(_cursor=page.next_cursor) if page.next_cursor else None
    return page_response(history_bundle(request.base_url, request.url, page.versions, next_url))


handler = lambda_entry(app)
