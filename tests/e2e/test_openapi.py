"""The published OpenAPI description: valid OpenAPI 3, served without auth, in the repo, and covering
exactly the routes the template deploys."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from esus.http.openapi import openapi_document
from esus_dev.localstack.template import TemplateModel, load_template
from tests.conftest import REPO, RunningStack

DOCUMENTED = REPO / "docs" / "openapi.json"
PUBLISHED_BASE = "https://api.esus.health/fhir"


def test_served_document_is_valid_and_matches_the_routes(stack: RunningStack) -> None:
    with stack.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["servers"] == [{"url": stack.base_url}]
    documented = {(method.upper(), "/fhir" + (path if path != "/" else ""))
                  for path, operations in document["paths"].items() for method in operations}
    routes = {(r.method, r.path.replace("{vid}", "{vid}")) for r in TemplateModel(
        load_template(REPO / "template.yaml")).routes()}
    assert documented == routes


def test_repository_copy_is_current() -> None:
    expected = json.dumps(openapi_document(PUBLISHED_BASE), indent=2, sort_keys=True) + "\n"
    assert DOCUMENTED.read_text(encoding="utf-8") == expected, "regenerate: esus openapi > docs/openapi.json"
