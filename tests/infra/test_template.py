"""template.yaml, raw and as SAM translates it: lint-clean, and held to the code (handlers, routes, tables,
IAM, gateway errors, logs, alarms) so the deployment cannot drift from what the code expects."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from esus_dev.localstack.lambda_runtime import load_handler
from esus_dev.localstack.template import TemplateModel
from tests.conftest import REPO
from tests.infra.conftest import READ_ONLY_FUNCTIONS, TEMPLATE, of_type

LINT_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "ca-central-1"]
WRITE_VERBS = ("Put", "Update", "Delete", "BatchWrite", "TransactWrite", "PartiQLInsert", "PartiQLUpdate",
               "PartiQLDelete", "Create", "Restore", "Import", "Tag", "Untag", "Rotate", "Cancel", "Encrypt",
               "GenerateDataKey", "ReEncrypt", "Schedule", "Replicate", "Stop", "Remove", "Validate", "Enable",
               "Disable", "Revoke", "Retire")
DATA_SERVICES = ("dynamodb", "secretsmanager", "kms", "s3")
# AWS managed policies SAM attaches: CloudWatch Logs writes (AWSLambdaBasicExecutionRole) and X-Ray segments
# (Tracing: Active). Neither grants any DynamoDB, Secrets Manager or KMS action.
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
}


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _functions(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return of_type(translated, "AWS::Lambda::Function")


# ---------- lint ----------
def test_cfn_lint_reports_no_errors_or_warnings() -> None:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=LINT_REGIONS))
    problems = [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches if m.rule.id[0] in "EW"]
    assert not problems, "\n".join(problems)


def test_lint_suppressions_carry_a_reason(raw_template: dict[str, Any]) -> None:
    """A check may only be switched off in the template Metadata with a reason next to it."""
    reasons = raw_template.get("Metadata", {}).get("LintSuppressionReasons", {})
    suppressed = list(raw_template.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks", []))
    for resource in raw_template["Resources"].values():
        suppressed += resource.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
    assert all(str(reasons.get(check, "")).strip() for check in suppressed), (
        f"suppressed without a reason in Metadata.LintSuppressionReasons: {suppressed}")


def test_lint_detects_a_broken_template(tmp_path: Path) -> None:
    """The lint test can fail: an unused condition and a wrong reference are reported."""
    from cfnlint.api import ManualArgs, lint_file

    broken = TEMPLATE.read_text().replace("KMSMasterKeyId: !Ref DataKey", "KMSMasterKeyId: !Ref NoSuchKey", 1)
    broken = broken.replace("Conditions:\n", "Conditions:\n  Unused: !Equals [!Ref Stage, prod]\n", 1)
    (tmp_path / "template.yaml").write_text(broken)
    ids = {m.rule.id for m in lint_file(tmp_path / "template.yaml", config=ManualArgs(regions=["us-east-1"]))}
    assert {"E1020", "W8001"} & ids, ids


# ---------- the generated block ----------
def test_template_is_current_with_the_route_table() -> None:
    from esus_dev.codegen.template_gen import render

    text = TEMPLATE.read_text(encoding="utf-8")
    assert render(text) == text, "template.yaml is not current with esus_dev/codegen/routes.py: run `make template`"


def test_every_function_comes_from_the_route_table(raw_template: dict[str, Any]) -> None:
    from esus_dev.codegen.routes import FUNCTIONS

    assert set(of_type(raw_template, "AWS::Serverless::Function")) == {f.logical_id for f in FUNCTIONS}
    assert len({f.logical_id for f in FUNCTIONS}) == len(FUNCTIONS)


def test_a_table_change_changes_the_template() -> None:
    """The current-check can fail: a grant dropped from the table, or an environment value the local stack could
    not resolve, shows up when the block is rendered."""
    import dataclasses

    from esus_dev.codegen.routes import FUNCTIONS
    from esus_dev.codegen.template_gen import render

    text = TEMPLATE.read_text(encoding="utf-8")
    read = next(f for f in FUNCTIONS if f.name == "Read")
    narrowed = dataclasses.replace(read, grants=read.grants[:1])
    changed = render(text, [narrowed if f is read else f for f in FUNCTIONS])
    assert changed != text and "ReadProvenance" in text and changed.count("ReadProvenance") == text.count(
        "ReadProvenance") - 1
    with pytest.raises(ValueError, match="plain strings or '!Ref Name'"):
        render(text, [dataclasses.replace(read, env={"ESUS_X": "!GetAtt DataKey.Arn"})])
    with pytest.raises(ValueError, match="exactly one generated block"):
        render(text.replace("# <<<<<<<<<< end of the generated block", "# the end"))


# ---------- parameters and outputs ----------
def test_parameters_and_outputs(raw_template: dict[str, Any]) -> None:
    parameters = raw_template["Parameters"]
    assert {"Stage", "JwtIssuer", "JwtAudience", "JwksUrl", "LogLevel", "ThrottlingRateLimit",
            "ThrottlingBurstLimit", "DeletionProtection", "LogRetentionDays"} <= set(parameters)
    outputs = raw_template["Outputs"]
    assert "ApiUrl" in outputs
    refs = [o["Value"].get("Ref") for o in outputs.values() if isinstance(o["Value"], dict)]
    for logical_id in [*of_type(raw_template, "AWS::DynamoDB::Table"), *of_type(raw_template, "AWS::S3::Bucket"),
                       *of_type(raw_template, "AWS::SecretsManager::Secret")]:
        assert logical_id in refs, f"no output for {logical_id}"


def test_environment_values_are_plain_or_ref(raw_template: dict[str, Any]) -> None:
    """The local stack resolves only !Ref to parameters, tables, buckets and secrets in function environments."""
    resolvable = {*raw_template["Parameters"], *of_type(raw_template, "AWS::DynamoDB::Table"),
                  *of_type(raw_template, "AWS::SecretsManager::Secret"), *of_type(raw_template, "AWS::S3::Bucket")}
    environments = [raw_template["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in of_type(raw_template, "AWS::Serverless::Function").values():
        environments.append(resource["Properties"].get("Environment", {}).get("Variables", {}))
    for variables in environments:
        for key, value in variables.items():
            assert isinstance(value, str) or (isinstance(value, dict) and set(value) == {"Ref"}
                                              and value["Ref"] in resolvable), f"{key}: {value}"


# ---------- handlers and routes ----------
def _handler_path(raw_template: dict[str, Any], logical_id: str) -> tuple[Path, str]:
    (spec,) = [s for s in TemplateModel(raw_template).functions() if s.logical_id == logical_id]
    path, function = spec.handler_path(REPO)
    return path.resolve(), function


def test_every_function_handler_exists_and_imports(raw_template: dict[str, Any]) -> None:
    for spec in TemplateModel(raw_template).functions():
        path, _ = spec.handler_path(REPO)
        assert path.is_file(), f"{spec.logical_id}: {path} is missing"
        assert callable(load_handler(REPO / spec.code_uri, spec.handler)), spec.logical_id


def test_every_handler_module_is_deployed(raw_template: dict[str, Any]) -> None:
    deployed = {_handler_path(raw_template, lid)[0] for lid in of_type(raw_template, "AWS::Serverless::Function")}
    on_disk = {p.resolve() for p in (REPO / "functions").glob("*/*.py") if p.name != "__init__.py"}
    assert on_disk - deployed == set(), f"handler modules not in template.yaml: {sorted(on_disk - deployed)}"
    code_dirs = {str(r["Properties"]["CodeUri"]).rstrip("/")
                 for r in of_type(raw_template, "AWS::Serverless::Function").values()}
    assert {f"functions/{d.name}" for d in (REPO / "functions").iterdir() if d.is_dir()
            and d.name != "__pycache__"} <= code_dirs


# AutoPublishAlias (Globals): the API invokes each route function's alias `live` (SAM names it <Function>Aliaslive).
ALIAS = "live"


def _function_of_alias(logical_id: str) -> str:
    return logical_id.removesuffix(f"Alias{ALIAS}")


def _translated_routes(translated: dict[str, Any]) -> set[tuple[str, str, str, bool]]:
    (api,) = of_type(translated, "AWS::ApiGateway::RestApi").values()
    routes = set()
    for path, methods in api["Properties"]["Body"]["paths"].items():
        for method, operation in methods.items():
            uri = operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            function = re.search(rf"\$\{{([A-Za-z0-9]+)Alias{ALIAS}\}}", uri)
            assert function, uri
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            routes.add((function.group(1), method.upper(), path, bool(schemes - {"NONE"})))
    return routes


def test_local_stack_serves_exactly_the_deployed_routes(raw_template: dict[str, Any],
                                                        translated: dict[str, Any]) -> None:
    model = TemplateModel(raw_template)
    local = {(r.function, r.method, r.path, r.authorized) for r in model.routes()}
    assert local == _translated_routes(translated)
    public = {("MetadataFunction", "GET", "/fhir/metadata", False),
              ("OpenApiFunction", "GET", "/fhir/openapi.json", False),
              ("SmartConfigurationFunction", "GET", "/fhir/.well-known/smart-configuration", False)}
    assert public <= local
    assert all(authorized for function, _, _, authorized in local if (function, "GET") not in {
        (f, m) for f, m, _, _ in public})


def test_authorizer_and_invoke_permissions(raw_template: dict[str, Any], translated: dict[str, Any]) -> None:
    (api,) = of_type(translated, "AWS::ApiGateway::RestApi").values()
    schemes = api["Properties"]["Body"]["components"]["securitySchemes"]
    (scheme,) = [s for s in schemes.values() if "x-amazon-apigateway-authorizer" in s]
    authorizer = scheme["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "token" and scheme["name"] == "Authorization"
    uri = authorizer["authorizerUri"]["Fn::Sub"][1]["__FunctionArn__"]["Fn::GetAtt"][0]
    assert uri == TemplateModel(raw_template).authorizer_function()
    permitted = set()
    for permission in of_type(translated, "AWS::Lambda::Permission").values():
        target = permission["Properties"]["FunctionName"]
        permitted.add(target["Fn::GetAtt"][0] if "Fn::GetAtt" in target else _function_of_alias(target["Ref"]))
        assert permission["Properties"]["Principal"] == "apigateway.amazonaws.com"
    assert permitted == set(_functions(translated)), "every function must be invocable by API Gateway"


# ---------- API Gateway ----------
def test_stage_tracing_throttling_and_logging(translated: dict[str, Any]) -> None:
    (stage,) = of_type(translated, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    assert props["StageName"] == {"Ref": "Stage"}
    assert props["TracingEnabled"] is True
    (settings,) = props["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert settings["LoggingLevel"] == "OFF" and settings["DataTraceEnabled"] is False  # bodies are PHI
    log_group = props["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"][0]
    group = translated["Resources"][log_group]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    access_format = props["AccessLogSetting"]["Format"]
    fields = json.loads(access_format)
    assert {"requestId", "status", "resource"} <= set(fields)
    used = set(re.findall(r"\$context\.[A-Za-z.]+", access_format))
    phi_prone = {"$context.path", "$context.identity.sourceIp", "$context.authorizer.fhirUser",
                 "$context.authorizer.principalId", "$context.authorizer.sub", "$context.identity.userAgent",
                 "$context.authorizer.claims", "$context.identity.caller", "$context.identity.user"}
    assert not used & phi_prone, used & phi_prone
    assert "$input" not in access_format and "$method.request" not in access_format


def test_every_gateway_error_is_a_fhir_operation_outcome(translated: dict[str, Any]) -> None:
    from fhir.resources.operationoutcome import OperationOutcome

    (api,) = of_type(translated, "AWS::ApiGateway::RestApi").values()
    responses = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    expected_status = {
        "UNAUTHORIZED": "401", "ACCESS_DENIED": "403", "THROTTLED": "429", "QUOTA_EXCEEDED": "429",
        "REQUEST_TOO_LARGE": "413", "BAD_REQUEST_BODY": "400", "BAD_REQUEST_PARAMETERS": "400",
        "INTEGRATION_TIMEOUT": "504", "INTEGRATION_FAILURE": "502", "AUTHORIZER_FAILURE": "500",
        "AUTHORIZER_CONFIGURATION_ERROR": "500", "MISSING_AUTHENTICATION_TOKEN": "404",
        "UNSUPPORTED_MEDIA_TYPE": "415",
    }
    for kind, status in expected_status.items():
        assert responses.get(kind, {}).get("statusCode") == status, kind
    assert {"DEFAULT_4XX", "DEFAULT_5XX"} <= set(responses)  # every other 4xx/5xx type
    for kind, response in responses.items():
        headers = response["responseParameters"]
        assert headers["gatewayresponse.header.Content-Type"] == "'application/fhir+json'", kind
        templates = response["responseTemplates"]
        assert "application/json" in templates, kind  # the template API Gateway falls back to
        for body in templates.values():
            outcome = json.loads(body)
            OperationOutcome.model_validate(outcome)
            assert outcome["issue"] and all(i["severity"] == "error" for i in outcome["issue"]), kind
    assert "WWW-Authenticate" in " ".join(responses["UNAUTHORIZED"]["responseParameters"])


# ---------- tables, key, secret ----------
def test_tables_match_the_code_and_are_protected(raw_template: dict[str, Any], translated: dict[str, Any]) -> None:
    from esus.storage.store import TABLE_KEYS

    env = raw_template["Globals"]["Function"]["Environment"]["Variables"]
    tables = of_type(translated, "AWS::DynamoDB::Table")
    wired = {str(env[f"ESUS_{field.upper()}"]["Ref"]): keys for field, keys in TABLE_KEYS.items()}
    assert set(tables) == set(wired), "tables the code does not use, or settings without a table"
    for logical_id, table in tables.items():
        props = table["Properties"]
        types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
        schema = tuple((k["AttributeName"], types[k["AttributeName"]], k["KeyType"]) for k in props["KeySchema"])
        assert schema == wired[logical_id], logical_id
        assert len(types) == len(schema) and "GlobalSecondaryIndexes" not in props, logical_id
        assert "LocalSecondaryIndexes" not in props and "TableName" not in props, logical_id
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, logical_id
        assert props["DeletionProtectionEnabled"] == {"Ref": "DeletionProtection"}, logical_id
        sse = props["SSESpecification"]
        assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS", logical_id
        assert sse["KMSMasterKeyId"] == {"Ref": "DataKey"}, logical_id
    assert translated["Parameters"]["DeletionProtection"]["Default"] == "true"


def test_object_bucket_is_encrypted_private_versioned_and_tls_only(raw_template: dict[str, Any],
                                                                   translated: dict[str, Any]) -> None:
    (bucket_id, bucket), = of_type(translated, "AWS::S3::Bucket").items()
    assert raw_template["Globals"]["Function"]["Environment"]["Variables"]["ESUS_OBJECT_BUCKET"] == {"Ref": bucket_id}
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain" and "BucketName" not in props
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms",
                                                     "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]}}
    assert rule["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True)
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    lifecycle = props["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
               for r in lifecycle if "NoncurrentVersionExpiration" in r)
    (policy,) = of_type(translated, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [{"Fn::GetAtt": [bucket_id, "Arn"]}, {"Fn::Sub": f"${{{bucket_id}.Arn}}/*"}]


def test_binary_media_types_are_the_codes_and_never_catch_fhir_json(translated: dict[str, Any]) -> None:
    from esus.http.binary import BINARY_MEDIA_TYPES, FHIR_TYPES, matches

    (api,) = of_type(translated, "AWS::ApiGateway::RestApi").values()
    declared = [t.replace("~1", "/") for t in api["Properties"]["Body"]["x-amazon-apigateway-binary-media-types"]]
    assert declared == list(BINARY_MEDIA_TYPES)
    assert not any(matches(t, BINARY_MEDIA_TYPES) for t in (*FHIR_TYPES, "application/json-patch+json",
                                                           "application/x-www-form-urlencoded"))
    assert "*/*" not in declared and "application/*" not in declared


def test_key_and_root_key_secret(translated: dict[str, Any]) -> None:
    from esus.security.crypto import RootKeys

    (key_id, key), = of_type(translated, "AWS::KMS::Key").items()
    assert key["Properties"]["EnableKeyRotation"] is True
    (secret,) = of_type(translated, "AWS::SecretsManager::Secret").values()
    assert secret["Properties"]["KmsKeyId"] == {"Ref": key_id}
    for resource in (key, secret):  # losing either makes every table and backup unreadable
        assert resource["DeletionPolicy"] == "Retain" and resource["UpdateReplacePolicy"] == "Retain"
    spec = secret["Properties"]["GenerateSecretString"]
    assert "SecretString" not in secret["Properties"], "the root key must be generated at deploy time"
    assert spec["PasswordLength"] >= 32
    sample = json.loads(spec["SecretStringTemplate"]) | {spec["GenerateStringKey"]: "x" * spec["PasswordLength"]}
    assert RootKeys.parse(json.dumps(sample)).current == "1"


# ---------- IAM ----------
def _role_statements(translated: dict[str, Any], function: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    role = translated["Resources"][function["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
    statements = [s for p in role.get("Policies", []) for s in _listify(p["PolicyDocument"]["Statement"])]
    return statements, role.get("ManagedPolicyArns", [])


def _actions(statement: dict[str, Any]) -> list[str]:
    return [str(a) for a in _listify(statement["Action"])]


def test_read_only_functions_cannot_write(translated: dict[str, Any]) -> None:
    for logical_id in READ_ONLY_FUNCTIONS:
        statements, _ = _role_statements(translated, translated["Resources"][logical_id])
        writes = [a for s in statements for a in _actions(s) if a.split(":", 1)[1].startswith(WRITE_VERBS)]
        assert not writes, f"{logical_id} may write: {writes}"


def test_no_data_action_on_any_resource_and_only_this_stacks_resources(translated: dict[str, Any]) -> None:
    own = {**of_type(translated, "AWS::DynamoDB::Table"), **of_type(translated, "AWS::KMS::Key")}
    secrets = set(of_type(translated, "AWS::SecretsManager::Secret"))
    buckets = set(of_type(translated, "AWS::S3::Bucket"))
    for logical_id, function in _functions(translated).items():
        statements, managed = _role_statements(translated, function)
        assert set(managed) <= ALLOWED_MANAGED_POLICIES, f"{logical_id}: {managed}"
        for statement in statements:
            assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
            actions = _actions(statement)
            assert all("*" not in a for a in actions), f"{logical_id}: wildcard action {actions}"
            assert {a.split(":", 1)[0] for a in actions} <= set(DATA_SERVICES), f"{logical_id}: {actions}"
            for resource in _listify(statement["Resource"]):
                assert resource != "*" and not (isinstance(resource, str) and "*" in resource), (
                    f"{logical_id}: {actions} on {resource}")
                if "Fn::Sub" in resource:  # the one pattern allowed: the objects of this stack's bucket
                    bucket = re.fullmatch(r"\$\{([A-Za-z0-9]+)\.Arn\}/\*", resource["Fn::Sub"])
                    assert bucket and bucket.group(1) in buckets, f"{logical_id}: {resource}"
                    assert all(a in ("s3:GetObject", "s3:PutObject") for a in actions), f"{logical_id}: {actions}"
                elif "Ref" in resource:
                    assert resource["Ref"] in secrets, f"{logical_id}: {resource}"
                else:
                    target, attribute = resource["Fn::GetAtt"]
                    assert target in own and attribute == "Arn", f"{logical_id}: {resource}"
                    kind = own[target]["Type"]
                    service = {"AWS::DynamoDB::Table": "dynamodb", "AWS::KMS::Key": "kms"}[kind]
                    assert all(a.startswith(f"{service}:") for a in actions), f"{logical_id}: {actions} on {target}"
            if any(a.startswith("kms:") for a in actions):
                via = statement["Condition"]["StringEquals"]["kms:ViaService"]
                services = {v["Fn::Sub"].split(".", 1)[0] for v in via}
                # Through S3 only for roles that use the (SSE-KMS) object bucket.
                uses_s3 = any(a.startswith("s3:") for s in statements for a in _actions(s))
                allowed = {"dynamodb", "secretsmanager"} | ({"s3"} if uses_s3 else set())
                assert services <= allowed, f"{logical_id}: kms usable via {services}"


def test_routes_that_store_nothing_have_no_data_access(translated: dict[str, Any]) -> None:
    for logical_id in ("AuthorizerFunction", "MetadataFunction", "SmartConfigurationFunction"):
        statements, _ = _role_statements(translated, translated["Resources"][logical_id])
        assert statements == [], f"{logical_id} needs no data access: {statements}"


# ---------- functions, layer, logs ----------
def test_functions_use_the_layer_on_its_runtime_and_architecture(raw_template: dict[str, Any],
                                                                translated: dict[str, Any]) -> None:
    (layer_id, layer), = of_type(raw_template, "AWS::Serverless::LayerVersion").items()
    assert layer["Properties"]["ContentUri"].rstrip("/") == "shared"
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert (REPO / "shared" / "Makefile").read_text().count(f"build-{layer_id}:") == 1
    (translated_layer_id,) = of_type(translated, "AWS::Lambda::LayerVersion")
    for logical_id, function in _functions(translated).items():
        props = function["Properties"]
        assert props["Runtime"] in layer["Properties"]["CompatibleRuntimes"] and props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["arm64"] == layer["Properties"]["CompatibleArchitectures"]
        assert props["Layers"] == [{"Ref": translated_layer_id}], logical_id
        assert props["TracingConfig"] == {"Mode": "Active"}, logical_id
        assert props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"].startswith("esus-"), logical_id


def test_snapstart_is_an_option_on_the_published_versions_the_api_invokes(raw_template: dict[str, Any],
                                                                          translated: dict[str, Any]) -> None:
    """Off by default; when on, it applies to the version behind alias `live`, the one API Gateway invokes."""
    parameter = raw_template["Parameters"]["SnapStart"]
    assert parameter["Default"] == "None"
    assert set(parameter["AllowedValues"]) == {"None", "PublishedVersions"}
    aliases = {_function_of_alias(logical_id): alias["Properties"]["Name"]
               for logical_id, alias in of_type(translated, "AWS::Lambda::Alias").items()}
    for logical_id, function in _functions(translated).items():
        assert function["Properties"]["SnapStart"] == {"ApplyOn": {"Ref": "SnapStart"}}, logical_id
        assert aliases.get(logical_id) == ALIAS, logical_id


def test_every_function_has_a_log_group_with_retention(translated: dict[str, Any]) -> None:
    log_groups = of_type(translated, "AWS::Logs::LogGroup").values()
    groups = {json.dumps(g["Properties"]["LogGroupName"]): g for g in log_groups}
    for logical_id in _functions(translated):
        group = groups.get(json.dumps({"Fn::Sub": f"/aws/lambda/${{{logical_id}}}"}))
        assert group is not None, f"no /aws/lambda log group for {logical_id}"
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# ---------- alarms ----------
def _alarms(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    alarms = of_type(translated, "AWS::CloudWatch::Alarm")
    assert alarms
    for logical_id, alarm in alarms.items():
        props = alarm["Properties"]
        for actions in ("AlarmActions", "OKActions"):
            assert props[actions] == {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}],
                                                 {"Ref": "AWS::NoValue"}]}, logical_id
        if "Metrics" in props:
            queries = props["Metrics"]
            assert sum(1 for q in queries if q.get("ReturnData")) == 1, logical_id
            assert sum(1 for q in queries if "MetricStat" in q) <= 10, logical_id  # CloudWatch's limit
    return alarms


def _watched(translated: dict[str, Any], namespace: str, name: str) -> list[dict[str, Any]]:
    """The dimensions of every (namespace, metric) an alarm watches, in either alarm form."""
    found = []
    for alarm in _alarms(translated).values():
        props = alarm["Properties"]
        metrics = [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        if "MetricName" in props:
            metrics.append(props)
        found += [{d["Name"]: d["Value"] for d in m.get("Dimensions", [])} for m in metrics
                  if m["Namespace"] == namespace and m["MetricName"] == name]
    return found


def test_alarms_cover_the_api_every_function_and_every_table(translated: dict[str, Any]) -> None:
    functions = set(_functions(translated))
    (api,) = of_type(translated, "AWS::ApiGateway::RestApi").values()
    expected_api = {"ApiName": api["Properties"]["Name"], "Stage": {"Ref": "Stage"}}
    assert _watched(translated, "AWS/ApiGateway", "5XXError") == [expected_api]
    assert _watched(translated, "AWS/ApiGateway", "Count") == [expected_api]

    def by_function(name: str) -> list[str]:
        return [d["FunctionName"]["Ref"] for d in _watched(translated, "AWS/Lambda", name)]

    # The authorizer signals every rejected token as a function error, so only the routes' Errors are watched.
    assert sorted(by_function("Errors")) == sorted(functions - {"AuthorizerFunction"})
    assert sorted(by_function("Throttles")) == sorted(functions)

    tables = sorted(of_type(translated, "AWS::DynamoDB::Table"))
    for metric_name in ("ReadThrottleEvents", "WriteThrottleEvents"):
        watched = sorted(d["TableName"]["Ref"] for d in _watched(translated, "AWS/DynamoDB", metric_name))
        assert watched == tables, metric_name


def test_integrity_failures_alarm_watches_every_service(raw_template: dict[str, Any],
                                                        translated: dict[str, Any]) -> None:
    import esus.http.api

    source = Path(esus.http.api.__file__).read_text()
    namespace = esus.http.api.metrics.namespace
    assert 'name="IntegrityFailures"' in source and namespace == "ESUS"
    assert raw_template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == namespace
    queries = [q["Expression"] for a in _alarms(translated).values() for q in a["Properties"].get("Metrics", [])
               if "IntegrityFailures" in q.get("Expression", "")]
    # A Metrics Insights query without WHERE: every service, including functions added later.
    assert queries == ['SELECT SUM(IntegrityFailures) FROM SCHEMA("ESUS", service)']
    for logical_id, function in _functions(translated).items():
        path, _ = _handler_path(raw_template, logical_id)
        if "esus.http.api" in path.read_text():  # handlers built on esus.http.api emit the metric, dimension service
            assert function["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"], logical_id


# ---------- samconfig, docs ----------
def test_samconfig_defaults() -> None:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    deploy = config["default"]["deploy"]["parameters"]
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    assert config["default"]["global"]["parameters"]["stack_name"]
    assert deploy.get("confirm_changeset") is True and deploy.get("resolve_s3") is True


@pytest.mark.parametrize("section", ["sam build", "sam deploy --guided", "mermaid", "DeletionProtection"])
def test_deploy_guide_covers(section: str) -> None:
    assert section in (REPO / "docs" / "DEPLOY.md").read_text()


def test_deploy_guide_explains_every_parameter(raw_template: dict[str, Any]) -> None:
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    missing = [p for p in raw_template["Parameters"] if f"`{p}`" not in guide]
    assert not missing, f"docs/DEPLOY.md does not explain: {missing}"
