"""GET /fhir/.well-known/smart-configuration: SMART App Launch discovery (no authentication)."""

import json

from esus.http.api import Response, create_app, lambda_entry
from esus.http.capability import smart_configuration
from esus.settings import get_settings

app = create_app()


@app.get("/fhir/.well-known/smart-configuration")
def smart() -> Response[str]:
    document = smart_configuration(get_settings())
    return Response(status_code=200, content_type="application/json", body=json.dumps(document))


handler = lambda_entry(app)
