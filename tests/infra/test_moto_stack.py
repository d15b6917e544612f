"""The translated template created as a stack in moto's CloudFormation: the tables are exactly those the code
expects, and each function's IAM policy (as created) allows exactly the AWS calls its handler makes."""

from __future__ import annotations

import ast
import base64
import fnmatch
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from esus_dev.localstack.lambda_runtime import LambdaContext, load_handler
from esus_dev.localstack.template import TemplateModel
from tests.conftest import REPO
from tests.infra.conftest import NOT_CREATED_BY_MOTO, READ_ONLY_FUNCTIONS, REGION, MotoStack, load_raw_template, of_type

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

LARGE_PHOTO = [{"contentType": "image/png", "data": base64.b64encode(os.urandom(400_000)).decode()}]
FUNCTIONS = sorted(k for k, v in load_raw_template()["Resources"].items() if v["Type"] == "AWS::Serverless::Function")


def test_every_resource_is_created_except_the_documented_types(moto_stack: MotoStack) -> None:
    assert set(moto_stack.removed.values()) <= set(NOT_CREATED_BY_MOTO)
    template = moto_stack.template
    expected = {lid for lid, r in template["Resources"].items()
                if "Condition" not in r or _condition(template, r["Condition"], moto_stack.parameters)}
    missing = expected - set(moto_stack.physical)
    assert not missing, f"moto's CloudFormation did not create: {missing}"
    assert not (set(moto_stack.physical) - {""}) - expected, "created a resource whose condition is false"
    created_types = {r["Type"] for r in moto_stack.template["Resources"].values()}
    assert {"AWS::DynamoDB::Table", "AWS::Lambda::Function", "AWS::IAM::Role", "AWS::KMS::Key",
            "AWS::Logs::LogGroup", "AWS::Lambda::LayerVersion"} <= created_types


def _condition(template: dict[str, Any], name: str, parameters: dict[str, str]) -> bool:
    def evaluate(node: Any) -> Any:
        if isinstance(node, dict) and "Ref" in node:
            return parameters[node["Ref"]]
        if isinstance(node, dict) and "Condition" in node:
            return evaluate(template["Conditions"][node["Condition"]])
        if isinstance(node, dict) and len(node) == 1:
            (function, args), = node.items()
            values = [evaluate(a) for a in args]
            return {"Fn::Equals": lambda: values[0] == values[1], "Fn::Not": lambda: not values[0],
                    "Fn::And": lambda: all(values), "Fn::Or": lambda: any(values)}[function]()
        return str(node)

    return bool(evaluate(template["Conditions"][name]))


def _key_schema(table: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    return tuple((k["AttributeName"], types[k["AttributeName"]], k["KeyType"]) for k in table["KeySchema"])


def test_tables_are_exactly_those_the_code_expects(moto_stack: MotoStack) -> None:
    from esus.storage.store import TABLE_KEYS

    ddb = boto3.client("dynamodb", region_name=REGION)
    referenced: set[str] = set()
    for logical_id, config in moto_stack.functions.items():
        env = config["Environment"]["Variables"]
        for field, expected in TABLE_KEYS.items():
            variable = f"ESUS_{field.upper()}"
            assert variable in env, f"{logical_id} lacks {variable}"
            table = ddb.describe_table(TableName=env[variable])["Table"]
            assert _key_schema(table) == expected, f"{variable} -> {table['TableName']}"
            # AttributeDefinitions may only name key attributes (DynamoDB rejects others anyway).
            assert {a["AttributeName"] for a in table["AttributeDefinitions"]} == {k for k, _, _ in expected}
            assert not table.get("GlobalSecondaryIndexes") and not table.get("LocalSecondaryIndexes"), (
                f"{table['TableName']} has secondary indexes the code never queries")
            assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
            referenced.add(table["TableName"])
        assert len({env[f"ESUS_{f.upper()}"] for f in TABLE_KEYS}) == len(TABLE_KEYS), "two settings, one table"
    assert set(ddb.list_tables()["TableNames"]) == referenced, "tables the code does not use"
    assert len(referenced) == len(TABLE_KEYS)


def test_settings_read_the_stack_from_each_function_environment(moto_stack: MotoStack) -> None:
    from esus.settings import Settings
    from esus.storage.store import TABLE_KEYS

    for logical_id, config in moto_stack.functions.items():
        with function_environment(config["Environment"]["Variables"]):
            settings = Settings()
        for field in TABLE_KEYS:
            assert getattr(settings, field) == moto_stack.physical[_table_logical_id(field)], logical_id
        assert settings.root_key_secret_id == moto_stack.secret_arn, logical_id


def _table_logical_id(field: str) -> str:
    raw_env = load_raw_template()["Globals"]["Function"]["Environment"]["Variables"]
    return str(raw_env[f"ESUS_{field.upper()}"]["Ref"])


def test_log_group_with_retention_for_every_function(moto_stack: MotoStack) -> None:
    logs = boto3.client("logs", region_name=REGION)
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    default_retention = int(load_raw_template()["Parameters"]["LogRetentionDays"]["Default"])
    for config in moto_stack.functions.values():
        group = groups.get(f"/aws/lambda/{config['FunctionName']}")
        assert group is not None, f"no log group for {config['FunctionName']}"
        assert group["retentionInDays"] == default_retention


def test_generated_root_key_is_what_the_code_accepts(moto_stack: MotoStack) -> None:
    from esus.security.crypto import RootKeys

    secret = boto3.client("secretsmanager", region_name=REGION).get_secret_value(SecretId=moto_stack.secret_arn)
    keys = RootKeys.parse(secret["SecretString"])
    assert keys.current == "1" and len(keys.keys["1"]) >= 32


# ---------- IAM == the calls each handler makes ----------
def _iam_actions(operation: str, params: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """(IAM action, resource name) pairs one API call is authorised against."""
    if prefix == "dynamodb":
        if operation == "BatchGetItem":
            return [("dynamodb:BatchGetItem", t) for t in params["RequestItems"]]
        if operation == "BatchWriteItem":
            return [("dynamodb:BatchWriteItem", t) for t in params["RequestItems"]]
        if operation in ("TransactWriteItems", "TransactGetItems"):
            verbs = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
            pairs = []
            for item in params["TransactItems"]:
                for kind, body in item.items():
                    pairs.append((f"dynamodb:{verbs[kind]}", body["TableName"]))
            return pairs
        table = params.get("TableName", "?")
        if params.get("IndexName"):
            table = f"{table}/index/{params['IndexName']}"
        return [(f"dynamodb:{operation}", table)]
    if prefix == "secretsmanager":
        return [(f"secretsmanager:{operation}", str(params.get("SecretId", "?")))]
    if prefix == "s3":  # object actions are authorised on arn:aws:s3:::bucket/key, bucket actions on the bucket
        bucket = str(params.get("Bucket", "?"))
        if operation == "ListObjectsV2":
            return [("s3:ListBucket", f"arn:aws:s3:::{bucket}")]
        if operation == "DeleteObjects":
            return [("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{o['Key']}") for o in params["Delete"]["Objects"]]
        return [(f"s3:{operation}", f"arn:aws:s3:::{bucket}/{params.get('Key', '')}")]
    return [(f"{prefix}:{operation}", "*")]


class CallRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (prefix, operation, resource)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        prefix = model.service_model.metadata.get("signingName") or model.service_model.service_name
        for action, resource in _iam_actions(model.name, params, prefix):
            self.calls.append((prefix, action, resource))


@contextmanager
def function_environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Deployed:
    """Invokes the handlers as Lambda would: each with its own environment from the created function and a
    fresh container (module, settings, services), recording every AWS call per function."""

    def __init__(self, stack: MotoStack, dev_dir: Path) -> None:
        self.stack = stack
        self.dev_dir = dev_dir
        # One boto3 session for every invocation: a fresh one per call re-read botocore's service models (~0.2 s
        # a client, most of this module's time). Each invocation still builds its own clients, which carry only
        # that invocation's recorder.
        self.session = boto3.session.Session(region_name=REGION)
        self.calls: dict[str, list[tuple[str, str, str]]] = {lid: [] for lid in stack.functions}
        self.authorizer_context: dict[str, Any] = {}
        self.specs = {spec.logical_id: spec for spec in TemplateModel(load_raw_template()).functions()}

    def invoke(self, logical_id: str, event: dict[str, Any], overrides: dict[str, str] | None = None) -> Any:
        from esus.container import use_services
        from esus.settings import get_settings

        env = {**self.stack.functions[logical_id]["Environment"]["Variables"], **(overrides or {})}
        recorder = CallRecorder()
        previous_session = boto3.DEFAULT_SESSION
        boto3.DEFAULT_SESSION = self.session
        self.session.events.register("before-parameter-build", recorder)
        try:
            with function_environment(env):
                get_settings.cache_clear()
                use_services(None)
                spec = self.specs[logical_id]
                handler = load_handler(REPO / spec.code_uri, spec.handler)  # a fresh container each call
                context = LambdaContext(self.stack.functions[logical_id]["FunctionName"], region=REGION,
                                        account="123456789012")
                return handler(event, context)
        finally:
            self.session.events.unregister("before-parameter-build", recorder)
            self.calls[logical_id].extend(recorder.calls)
            boto3.DEFAULT_SESSION = previous_session
            get_settings.cache_clear()
            use_services(None)

    def request(self, logical_id: str, method: str, path: str, resource: str, path_params: dict[str, str] | None,
                query: dict[str, str] | None = None, body: Any = None, headers: dict[str, str] | None = None,
                authorized: bool = True) -> tuple[int, Any, dict[str, str]]:
        all_headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                       "Host": "fhir.example.org", **(headers or {})}
        text = body if isinstance(body, str) or body is None else json.dumps(body)
        event = {
            "resource": resource, "path": path, "httpMethod": method,
            "headers": all_headers, "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
            "pathParameters": path_params, "stageVariables": None,
            "requestContext": {
                "resourcePath": resource, "httpMethod": method, "path": f"/prod{path}", "stage": "prod",
                "requestId": str(uuid.uuid4()), "domainName": "fhir.example.org",
                "identity": {"sourceIp": "192.0.2.1"},
                "authorizer": self.authorizer_context if authorized else None,
            },
            "body": text, "isBase64Encoded": False,
        }
        response = self.invoke(logical_id, event)
        raw = response.get("body") or ""
        if response.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        return int(response["statusCode"]), json.loads(raw) if raw else None, dict(response.get("headers") or {})


DATA_SERVICES = ("dynamodb", "secretsmanager", "s3")


def _granted(stack: MotoStack, logical_id: str) -> set[tuple[str, str]]:
    """(action, resource ARN) pairs the function's role allows for DynamoDB, Secrets Manager and S3, as created."""
    iam = boto3.client("iam", region_name=REGION)
    role = stack.functions[logical_id]["Role"].rsplit("/", 1)[1]
    granted: set[tuple[str, str]] = set()
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):  # moto keeps CloudFormation-created inline policies as a Python repr
            document = ast.literal_eval(document)
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            granted |= {(a, r) for a in actions for r in resources
                        if a.split(":", 1)[0] in DATA_SERVICES}
    return granted


def _arn(prefix: str, resource: str) -> str:
    if prefix == "dynamodb":
        table, _, index = resource.partition("/index/")
        arn = str(boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)["Table"]["TableArn"])
        return f"{arn}/index/{index}" if index else arn
    if prefix == "secretsmanager":
        return str(boto3.client("secretsmanager", region_name=REGION).describe_secret(SecretId=resource)["ARN"])
    return resource


@pytest.fixture(scope="module")
def exercised(moto_stack: MotoStack, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """Every route's AWS-touching paths: create, read, vread, the three history levels, update and patch (index
    entries replaced), search by hashed PHI and Provenance by target, conditional create/update/delete, delete,
    transaction and batch Bundles, metadata, and the authorizer with a real token."""
    from esus_dev.localstack.devkeys import mint_token, public_key_pem

    deployed = Deployed(moto_stack, tmp_path_factory.mktemp("infra-dev-keys"))
    token = mint_token("infratest", "user/*.*", "Practitioner/1", directory=deployed.dev_dir)
    policy = deployed.invoke("AuthorizerFunction", {
        "type": "TOKEN", "authorizationToken": f"Bearer {token}",
        "methodArn": f"arn:aws:execute-api:{REGION}:123456789012:api1234/prod/GET/fhir/Patient",
    }, overrides={"ESUS_JWKS_URL": "", "ESUS_JWT_PUBLIC_KEYS_PEM": public_key_pem(deployed.dev_dir)})
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    deployed.authorizer_context = {**policy["context"], "principalId": policy["principalId"]}

    status, _, _ = deployed.request("MetadataFunction", "GET", "/fhir/metadata", "/fhir/metadata", None,
                                    authorized=False)
    assert status == 200
    status, _, _ = deployed.request("OpenApiFunction", "GET", "/fhir/openapi.json", "/fhir/openapi.json", None,
                                    authorized=False)
    assert status == 200
    status, body, _ = deployed.request("SmartConfigurationFunction", "GET", "/fhir/.well-known/smart-configuration",
                                       "/fhir/.well-known/smart-configuration", None, authorized=False)
    assert status == 200 and "permission-patient" in body["capabilities"], body

    # Sixty more phones: more search index items than one transaction holds, so the writes also put index
    # items beside the transaction (BatchWriteItem), as large resources do. And a photo too large for a DynamoDB
    # item: each version's sealed body is an object, so every route that writes or decodes a version also puts or
    # gets objects.
    many_phones = [{"system": "phone", "value": f"+1 555 7{n:03d}"} for n in range(60)]
    patient = {"resourceType": "Patient", "name": [{"family": "Chalmers"}],
               "telecom": [{"system": "phone", "value": "+1 555 0100"},
                           {"system": "email", "value": "peter@example.org"}, *many_phones],
               "identifier": [{"system": "urn:mrn", "value": "MRN-1"}], "photo": LARGE_PHOTO}
    status, created, _ = deployed.request("CreateFunction", "POST", "/fhir/Patient", "/fhir/{type}",
                                          {"type": "Patient"}, body=patient)
    assert status == 201, created
    pid = created["id"]
    item = {"type": "Patient", "id": pid}

    status, body, _ = deployed.request("ReadFunction", "GET", f"/fhir/Patient/{pid}", "/fhir/{type}/{id}", item)
    assert status == 200, body
    status, body, _ = deployed.request("VreadFunction", "GET", f"/fhir/Patient/{pid}/_history/1",
                                       "/fhir/{type}/{id}/_history/{vid}", {**item, "vid": "1"})
    assert status == 200, body
    status, body, _ = deployed.request("HistoryFunction", "GET", f"/fhir/Patient/{pid}/_history",
                                       "/fhir/{type}/{id}/_history", item)
    assert status == 200, body
    # A patient-scoped token (SMART launch context): a vread also reads the current version (membership).
    patient_token = mint_token("infratest", "patient/*.read", None, directory=deployed.dev_dir, patient=pid)
    patient_policy = deployed.invoke("AuthorizerFunction", {
        "type": "TOKEN", "authorizationToken": f"Bearer {patient_token}",
        "methodArn": f"arn:aws:execute-api:{REGION}:123456789012:api1234/prod/GET/fhir/Patient",
    }, overrides={"ESUS_JWKS_URL": "", "ESUS_JWT_PUBLIC_KEYS_PEM": public_key_pem(deployed.dev_dir)})
    assert patient_policy["context"]["patient"] == pid
    user_context = deployed.authorizer_context
    deployed.authorizer_context = {**patient_policy["context"], "principalId": patient_policy["principalId"]}
    status, body, _ = deployed.request("VreadFunction", "GET", f"/fhir/Patient/{pid}/_history/1",
                                       "/fhir/{type}/{id}/_history/{vid}", {**item, "vid": "1"})
    assert status == 200, body
    status, body, _ = deployed.request("VreadFunction", "GET", "/fhir/Patient/other/_history/1",
                                       "/fhir/{type}/{id}/_history/{vid}", {**item, "id": "other", "vid": "1"})
    assert status == 404, body
    deployed.authorizer_context = user_context
    status, body, _ = deployed.request("HistoryFunction", "GET", "/fhir/Patient/unknown/_history",
                                       "/fhir/{type}/{id}/_history", {"type": "Patient", "id": "unknown"})
    assert status == 404, body

    status, body, _ = deployed.request("TypeHistoryFunction", "GET", "/fhir/Patient/_history",
                                       "/fhir/{type}/_history", {"type": "Patient"})
    assert status == 200 and body["entry"], body
    status, body, _ = deployed.request("SystemHistoryFunction", "GET", "/fhir/_history", "/fhir/_history", None)
    assert status == 200 and body["entry"], body

    changed = {**patient, "id": pid, "telecom": [{"system": "phone", "value": "+1 555 0199"}, *many_phones]}
    status, body, _ = deployed.request("UpdateFunction", "PUT", f"/fhir/Patient/{pid}", "/fhir/{type}/{id}", item,
                                       body=changed)
    assert status == 200, body
    operations = [{"op": "replace", "path": "/telecom/0/value", "value": "+1 555 0142"}]
    status, body, _ = deployed.request("PatchFunction", "PATCH", f"/fhir/Patient/{pid}", "/fhir/{type}/{id}", item,
                                       body=operations, headers={"Content-Type": "application/json-patch+json"})
    assert status == 200, body

    status, body, _ = deployed.request("SearchFunction", "GET", "/fhir/Patient", "/fhir/{type}",
                                       {"type": "Patient"}, query={"phone": "+1 555 0142"})
    assert status == 200 and body["total"] == 1, body
    status, body, _ = deployed.request(
        "SearchFunction", "POST", "/fhir/Patient/_search", "/fhir/{type}/_search", {"type": "Patient"},
        body=urlencode({"identifier": "urn:mrn|MRN-1"}),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["total"] == 1, body
    status, body, _ = deployed.request("SearchFunction", "GET", "/fhir/Provenance", "/fhir/{type}",
                                       {"type": "Provenance"}, query={"target": f"Patient/{pid}"})
    assert status == 200 and body["total"] >= 2, body
    provenance_id = body["entry"][0]["resource"]["id"]
    prov = {"type": "Provenance", "id": provenance_id}
    status, body, _ = deployed.request("ReadFunction", "GET", f"/fhir/Provenance/{provenance_id}",
                                       "/fhir/{type}/{id}", prov)
    assert status == 200, body
    status, body, _ = deployed.request("VreadFunction", "GET", f"/fhir/Provenance/{provenance_id}/_history/1",
                                       "/fhir/{type}/{id}/_history/{vid}", {**prov, "vid": "1"})
    assert status == 200, body
    # A posted Provenance about a resource and a Provenance: both targets are read to check they exist.
    posted = {"resourceType": "Provenance", "agent": [{"who": {"reference": "Organization/1"}}],
              "target": [{"reference": f"Patient/{pid}"}, {"reference": f"Provenance/{provenance_id}"}]}
    status, body, _ = deployed.request("CreateFunction", "POST", "/fhir/Provenance", "/fhir/{type}",
                                       {"type": "Provenance"}, body=posted)
    assert status == 201, body

    # The patient's compartment: a compartment search with an _include, _revinclude of Provenance, $everything.
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                   "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": "Practitioner/1"}]}
    status, body, _ = deployed.request("CreateFunction", "POST", "/fhir/Observation", "/fhir/{type}",
                                       {"type": "Observation"}, body=observation)
    assert status == 201, body
    status, body, _ = deployed.request(
        "CompartmentSearchFunction", "GET", f"/fhir/Patient/{pid}/Observation", "/fhir/{type}/{id}/{member_type}",
        {"type": "Patient", "id": pid, "member_type": "Observation"}, query={"_include": "Observation:subject"})
    assert status == 200 and body["total"] == 1 and len(body["entry"]) == 2, body
    status, body, _ = deployed.request("SearchFunction", "GET", "/fhir/Patient", "/fhir/{type}", {"type": "Patient"},
                                       query={"_id": pid, "_revinclude": "Provenance:target"})
    assert status == 200 and len(body["entry"]) >= 3, body
    status, body, _ = deployed.request(
        "EverythingFunction", "GET", f"/fhir/Patient/{pid}/$everything", "/fhir/{type}/{id}/$everything",
        {"type": "Patient", "id": pid}, query={"_count": "2"})
    assert status == 200 and len(body["entry"]) == 2 and body["link"][-1]["relation"] == "next", body
    status, body, _ = deployed.request(
        "EverythingFunction", "GET", f"/fhir/Patient/{pid}/$everything", "/fhir/{type}/{id}/$everything",
        {"type": "Patient", "id": pid}, query={"_type": "Provenance"})
    assert status == 200 and {e["resource"]["resourceType"] for e in body["entry"]} == {"Provenance"}, body
    status, body, _ = deployed.request(
        "CompartmentSearchFunction", "GET", f"/fhir/Patient/{pid}/Provenance", "/fhir/{type}/{id}/{member_type}",
        {"type": "Patient", "id": pid, "member_type": "Provenance"})
    assert status == 200 and body["total"] >= 2, body

    # Conditional create, update and delete of a second Patient, chosen by identifier.
    second = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "MRN-2"}],
              "telecom": [{"system": "phone", "value": "+1 555 0200"}], "photo": LARGE_PHOTO}
    condition = "identifier=urn:mrn|MRN-2"
    for expected in (201, 200):  # none matches: created; then the existing one is returned
        status, body, _ = deployed.request("CreateFunction", "POST", "/fhir/Patient", "/fhir/{type}",
                                           {"type": "Patient"}, body=second, headers={"If-None-Exist": condition})
        assert status == expected, body
    second_changed = {**second, "telecom": [{"system": "phone", "value": "+1 555 0201"}, *many_phones]}
    status, body, _ = deployed.request("ConditionalUpdateFunction", "PUT", "/fhir/Patient", "/fhir/{type}",
                                       {"type": "Patient"}, query={"identifier": "urn:mrn|MRN-2"},
                                       body=second_changed)
    assert status == 200, body
    status, body, _ = deployed.request("ConditionalDeleteFunction", "DELETE", "/fhir/Patient", "/fhir/{type}",
                                       {"type": "Patient"}, query={"identifier": "urn:mrn|MRN-2"})
    assert status == 204, body

    # Bundles: a transaction with a conditional create, then a batch that finds it again, changes and deletes it.
    third = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "MRN-3"}],
             "telecom": [{"system": "phone", "value": "+1 555 0300"}], "photo": LARGE_PHOTO}
    condition = "identifier=urn:mrn|MRN-3"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": third, "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition}}]}
    status, body, _ = deployed.request("BundleFunction", "POST", "/fhir", "/fhir", None, body=transaction)
    assert status == 200 and body["entry"][0]["response"]["status"].startswith("201"), body
    third_id = body["entry"][0]["response"]["location"].split("/")[1]
    changed_third = {**third, "id": third_id, "telecom": [{"system": "phone", "value": "+1 555 0301"}]}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": third, "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition}},
        {"resource": changed_third, "request": {"method": "PUT", "url": f"Patient/{third_id}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{third_id}"}}]}
    status, body, _ = deployed.request("BundleFunction", "POST", "/fhir", "/fhir", None, body=batch)
    assert status == 200 and [e["response"]["status"][:3] for e in body["entry"]] == ["200", "200", "204"], body

    _exercise_large_transactions(deployed)

    status, body, _ = deployed.request("DeleteFunction", "DELETE", f"/fhir/Patient/{pid}", "/fhir/{type}/{id}",
                                       item)
    assert status == 204, body
    return deployed


# ---------- large transactions (docs/TRANSACTIONS.md) ----------
@contextmanager
def _patched(target: Any, **replacements: Any) -> Iterator[None]:
    saved = {name: getattr(target, name) for name in replacements}
    for name, value in replacements.items():
        setattr(target, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(target, name, value)


def _large_bundle(tag: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    """12 new Patients (beyond one TransactWriteItems) plus `extra` entries."""
    entries = [{"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": f"{tag}{i}"}]}} for i in range(12)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries + extra}


def _stuck(deployed: Deployed, state: str, n: int, expired: bool) -> str:
    """A large transaction whose committer stopped: `pending` (before its commit) or `committed` (before its
    roll-forward), optionally past its lease. It updates a Patient `identifier=urn:stuck|n` (returned) and
    creates, under the If-None-Exist guard `identifier=urn:guard|n`, a Patient that does not match it."""
    from esus.storage.errors import TransactionAborted
    from esus.storage.transactions import TransactionStore

    status, target, _ = deployed.request("CreateFunction", "POST", "/fhir/Patient", "/fhir/{type}", {"type": "Patient"},
                                         body={"resourceType": "Patient",
                                               "identifier": [{"system": "urn:stuck", "value": str(n)}]})
    assert status == 201, target
    bundle = _large_bundle(f"stuck{n}-", [
        {"request": {"method": "PUT", "url": f"Patient/{target['id']}"}, "resource": {**target, "gender": "other"}},
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:guard|{n}"},
         "resource": {"resourceType": "Patient", "name": [{"family": "guarded"}]}},
    ])

    def stop(*_: Any, **__: Any) -> None:
        raise TransactionAborted("the committer stopped")

    if state == "pending":
        with _patched(TransactionStore, _commit_record=stop, _abandon=lambda *_: True):
            status, body, _ = deployed.request("BundleFunction", "POST", "/fhir", "/fhir", None, body=bundle)
        assert status == 409, body
    else:
        with _patched(TransactionStore, _roll_forward=stop):
            status, body, _ = deployed.request("BundleFunction", "POST", "/fhir", "/fhir", None, body=bundle)
        assert status == 200, body
    if expired:  # the lease ended: the next writer that meets it settles it
        ddb, table = boto3.client("dynamodb", region_name=REGION), deployed.stack.physical["IndexTable"]
        for record in ddb.query(TableName=table, KeyConditionExpression="pk = :pk",
                                ExpressionAttributeValues={":pk": {"S": "infratest|_txn"}})["Items"]:
            if "fin" not in record:
                ddb.update_item(TableName=table, Key={"pk": record["pk"], "sk": record["sk"]},
                                UpdateExpression="SET #e = :past", ExpressionAttributeNames={"#e": "exp"},
                                ExpressionAttributeValues={":past": {"N": "1000"}})
    return str(target["id"])


def _exercise_large_transactions(deployed: Deployed) -> None:
    """The protocol (BundleFunction), readers meeting a pending and a committed transaction's locks and
    pending items, and every writer settling a transaction past its lease, rolled back and rolled forward.
    The protocol's concurrent waves run one call at a time here: moto in-process is not thread-safe."""
    from concurrent.futures import ThreadPoolExecutor

    from esus.storage import transactions

    saved, transactions._pool = transactions._pool, ThreadPoolExecutor(max_workers=1)
    try:
        _exercise_protocol(deployed)
    finally:
        transactions._pool.shutdown()
        transactions._pool = saved


def _exercise_protocol(deployed: Deployed) -> None:
    status, body, _ = deployed.request("BundleFunction", "POST", "/fhir", "/fhir", None,
                                       body=_large_bundle("large", []))
    assert status == 200 and len(body["entry"]) == 12, body

    pending, committed = _stuck(deployed, "pending", 1, False), _stuck(deployed, "committed", 2, False)
    for target in (pending, committed):
        path = {"type": "Patient", "id": target}
        status, body, _ = deployed.request("ReadFunction", "GET", f"/fhir/Patient/{target}", "/fhir/{type}/{id}", path)
        assert status == 200 and body["meta"]["versionId"] == ("1" if target == pending else "2"), body
    version = {"type": "Patient", "id": pending, "vid": "2"}
    status, body, _ = deployed.request("VreadFunction", "GET", f"/fhir/Patient/{pending}/_history/2",
                                       "/fhir/{type}/{id}/_history/{vid}", version)
    assert status == 404, body  # a pending version is not a version yet
    status, body, _ = deployed.request("HistoryFunction", "GET", f"/fhir/Patient/{pending}/_history",
                                       "/fhir/{type}/{id}/_history", {"type": "Patient", "id": pending})
    assert status == 200 and len(body["entry"]) == 1, body
    for logical_id, path, resource, params in (
            ("TypeHistoryFunction", "/fhir/Patient/_history", "/fhir/{type}/_history", {"type": "Patient"}),
            ("SystemHistoryFunction", "/fhir/_history", "/fhir/_history", None)):
        status, body, _ = deployed.request(logical_id, "GET", path, resource, params)
        assert status == 200, body
    status, body, _ = deployed.request("SearchFunction", "GET", "/fhir/Patient", "/fhir/{type}", {"type": "Patient"},
                                       query={"identifier": "urn:stuck|2"})
    assert status == 200 and body["total"] == 1 and body["entry"][0]["resource"]["gender"] == "other", body
    for target in (pending, committed):  # the compartment routes meet the locked Patient too
        status, body, _ = deployed.request("EverythingFunction", "GET", f"/fhir/Patient/{target}/$everything",
                                           "/fhir/{type}/{id}/$everything", {"type": "Patient", "id": target})
        assert status == 200 and body["entry"][0]["resource"]["id"] == target, body
        status, body, _ = deployed.request(
            "CompartmentSearchFunction", "GET", f"/fhir/Patient/{target}/Patient", "/fhir/{type}/{id}/{member_type}",
            {"type": "Patient", "id": target, "member_type": "Patient"})
        assert status == 200, body

    writers = (
        ("UpdateFunction", "PUT", "/fhir/Patient/{id}", "/fhir/{type}/{id}", None, 200),
        ("PatchFunction", "PATCH", "/fhir/Patient/{id}", "/fhir/{type}/{id}", None, 200),
        ("DeleteFunction", "DELETE", "/fhir/Patient/{id}", "/fhir/{type}/{id}", None, 204),
        ("ConditionalUpdateFunction", "PUT", "/fhir/Patient", "/fhir/{type}", "identifier=urn:stuck|{n}", 200),
        ("ConditionalDeleteFunction", "DELETE", "/fhir/Patient", "/fhir/{type}", "identifier=urn:stuck|{n}", 204),
        ("CreateFunction", "POST", "/fhir/Patient", "/fhir/{type}", None, 201),
        ("BundleFunction", "POST", "/fhir", "/fhir", None, 200),
    )
    n = 10
    for logical_id, method, path, resource, query, expected in writers:
        for state in ("pending", "committed"):
            n += 1
            target = _stuck(deployed, state, n, True)
            params = {"type": "Patient", "id": target} if "{id}" in resource else (
                {"type": "Patient"} if "{type}" in resource else None)
            body: Any = {"resourceType": "Patient", "id": target, "active": True,
                         "identifier": [{"system": "urn:stuck", "value": str(n)}]}
            headers: dict[str, str] | None = None
            if method == "PATCH":
                body, headers = [{"op": "add", "path": "/active", "value": True}], {
                    "Content-Type": "application/json-patch+json"}
            elif method == "DELETE":
                body = None
            elif logical_id == "CreateFunction":  # the guard of the stuck transaction
                body, headers = {"resourceType": "Patient"}, {"If-None-Exist": f"identifier=urn:guard|{n}"}
            elif logical_id == "BundleFunction":
                body = {"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "PUT", "url": f"Patient/{target}"}, "resource": body}]}
            status, answer, _ = deployed.request(
                logical_id, method, path.format(id=target), resource, params,
                query={"identifier": f"urn:stuck|{n}"} if query else None, body=body, headers=headers)
            assert status == expected, (logical_id, state, answer)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_iam_allows_exactly_the_calls_the_handler_makes(
    moto_stack: MotoStack, exercised: Deployed, logical_id: str
) -> None:
    calls = set(exercised.calls[logical_id])  # each distinct call once: its ARN is looked up below
    direct = sorted({action for prefix, action, _ in calls if prefix not in DATA_SERVICES})
    # KMS is only granted through DynamoDB, Secrets Manager and S3 (kms:ViaService): a direct call would be denied.
    assert not direct, f"{logical_id} calls AWS APIs its role does not grant: {direct}"
    observed = {(action, _arn(prefix, resource)) for prefix, action, resource in calls}
    granted = _granted(moto_stack, logical_id)
    denied = {c for c in observed if not any(fnmatch.fnmatchcase(c[1], r) and c[0] == a for a, r in granted)}
    assert not denied, (
        f"{logical_id} makes calls its IAM policy would deny (grant them in infra/esus_dev/codegen/routes.py, then "
        f"`make template`): {sorted(denied)}")
    unused = {g for g in granted if not any(o[0] == g[0] and fnmatch.fnmatchcase(o[1], g[1]) for o in observed)}
    assert not unused, (
        f"{logical_id} is granted more than its handler uses (least privilege): {sorted(unused)}; drop them from "
        "esus_dev/codegen/routes.py (then `make template`), or exercise the path that needs them in the `exercised` "
        "fixture")


def test_read_only_functions_make_no_writes(exercised: Deployed) -> None:
    writes = ("Put", "Update", "Delete", "BatchWrite", "TransactWrite", "PartiQL", "Create", "Restore")
    for logical_id in READ_ONLY_FUNCTIONS:
        made = [a for _, a, _ in exercised.calls[logical_id] if a.split(":", 1)[1].startswith(writes)]
        assert not made, f"{logical_id} writes: {made}"


def test_every_function_is_exercised(moto_stack: MotoStack, exercised: Deployed) -> None:
    functions = set(of_type(moto_stack.template, "AWS::Lambda::Function"))
    assert set(exercised.calls) == functions
