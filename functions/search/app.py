"""GET /fhir/{type}?… and POST /fhir/{type}/_search: searchset Bundles (with _include/_revinclude)."""

from esus.container import services
from esus.http.api import FhirRequest, Response, create_app, lambda_entry
from esus.http.searchset import search_response

app = create_app()


@app.get("/fhir/<resource_type>")
@app.post("/fhir/<resource_type>/_search")
def search(resource_type: str) -> Response[str]:
    return search_response(FhirRequest(app), services().search, services().includes, resource_type)


handler = lambda_entry(app)
