"""The cold-start baseline: a bare boto3 + Powertools REST resolver whose one route makes one GetItem (the
client built lazily, on the first request, as the product does). Loaded from its file like a route function,
both by the cold phase (import + first request) and by `esus_dev.bench.importcheck` (`import app` alone)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayRestResolver

app = APIGatewayRestResolver()
clients: dict[str, Any] = {}


@app.get("/fhir/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> dict[str, Any]:
    ddb = clients.get("ddb") or clients.setdefault("ddb", boto3.client("dynamodb"))
    key = {"pk": {"S": f"bare|{resource_type}|{resource_id}"}}
    item = ddb.get_item(TableName=os.environ["ESUS_RESOURCES_TABLE"], Key=key, ConsistentRead=True)
    return {"found": "Item" in item}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return dict(app.resolve(event, context))
