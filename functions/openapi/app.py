"""GET /fhir/openapi.json: the OpenAPI description of this API (no authentication)."""

import json

from aws_lambda_powertools.event_handler import Response

from esus.http.api import FhirRequest, create_app, lambda_entry
from esus.http.openapi import openapi_document

app = create_app()


@app.get("/fhir/openapi.json")
def openapi() -> Response[str]:
    document = openapi_document(FhirRequest(app).base_url)
    return Response(status_code=200, content_type="application/json", body=json.dumps(document))


handler = lambda_entry(app)
