"""GET /fhir/_history: every change in the tenant, newest first, paged (needs search on all types)."""

from esus.container import services
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, page_response
from esus.http.bundle_render import history_bundle
from esus.security.auth import ALL_TYPES

app = create_app()


@app.get("/fhir/_history")
def system_history() -> Response[str]:
    request = FhirRequest(app)
    principal = request.authorize(ALL_TYPES, "history-system")
    within = principal.confinement(ALL_TYPES, "history-system")
    page = services().resources.changes(principal.tenant, None, request.query(), within=within)
    next_url = request.url_with(_cursor=page.next_cursor) if page.next_cursor else None
    return page_response(history_bundle(request.base_url, request.url, page.versions, next_url))


handler = lambda_entry(app)
