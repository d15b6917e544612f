"""GET /fhir/openapi.json: the OpenAPI description of this API (no authentication)."""

import json

from esus.http.api import FhirRequest, Response, create_app, lambda_entry
from esus.http.openapi import openapi_document

app = create_app()


@app.get("/fhir/openapi.json")
def openapi() -> Response[str]:
    document = openapi_document(FhirRequest(app).base_url)
    return Response(status_code=200, content_type="application/json", body=json.dumps(document))


handler = lambda_entry(app)
