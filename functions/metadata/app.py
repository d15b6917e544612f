"""GET /fhir/metadata: the CapabilityStatement (no authentication)."""

from esus.http.api import FhirRequest, Response, create_app, fhir_response, lambda_entry
from esus.http.capability import capability_statement
from esus.settings import get_settings

app = create_app()


@app.get("/fhir/metadata")
def metadata() -> Response[str]:
    return fhir_response(200, capability_statement(get_settings(), FhirRequest(app).base_url))


handler = lambda_entry(app)
