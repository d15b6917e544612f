"""template.yaml as AWS would see it: transformed by aws-sam-translator (the same library `sam deploy` and
CloudFormation use) with code locations replaced by S3 URIs, and, for the tests that need running resources,
created as a stack in moto's CloudFormation."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

TEMPLATE = REPO / "template.yaml"
ARTIFACT_BUCKET = "esus-artifacts"
REGION = "us-east-1"

# The functions that only read: their roles may grant no write (test_template.py) and their handlers make none
# (test_moto_stack.py). Everything else (create, update, patch, delete and the conditional ones) writes.
READ_ONLY_FUNCTIONS = ("ReadFunction", "VreadFunction", "HistoryFunction", "TypeHistoryFunction",
                       "SystemHistoryFunction", "SearchFunction", "MetadataFunction", "OpenApiFunction",
                       "AuthorizerFunction", "CompartmentSearchFunction", "EverythingFunction",
                       "SmartConfigurationFunction")

# Values for the parameters without a default (the issuer/audience are the local stack's, so tokens minted by
# esus_dev.localstack.devkeys verify against the deployed authorizer's configuration).
REQUIRED_PARAMETERS = {
    "JwtIssuer": "https://esus.local/issuer",
    "JwtAudience": "esus-fhir",
    "JwksUrl": "https://idp.example/.well-known/jwks.json",
}

# Resource types moto's CloudFormation cannot create, removed before create_stack. Everything they configure is
# asserted on the translated template instead (test_template.py); every other resource must be created by moto.
NOT_CREATED_BY_MOTO = {
    # No moto CloudFormation model: the test creates the secret through the Secrets Manager API with the
    # template's own GenerateSecretString settings and substitutes its ARN for !Ref RootKeySecret.
    "AWS::SecretsManager::Secret": "no moto CloudFormation model",
    "AWS::CloudWatch::Alarm": "no moto CloudFormation model",
    "AWS::S3::BucketPolicy": "no moto CloudFormation model",
    # moto does not import an OpenAPI Body into a RestApi, so the Deployment fails with "The REST API doesn't
    # contain any methods"; Stage and Account have no moto model.
    "AWS::ApiGateway::RestApi": "moto ignores the OpenAPI Body",
    "AWS::ApiGateway::Deployment": "moto ignores the OpenAPI Body of the RestApi",
    "AWS::ApiGateway::Stage": "no moto CloudFormation model",
    "AWS::ApiGateway::Account": "no moto CloudFormation model",
    # A no-op in moto (it creates nothing); in the template it only orders the API after the logging setting.
    "AWS::CloudFormation::WaitConditionHandle": "no-op in moto",
    # No moto CloudFormation model (AutoPublishAlias `live`): what references the alias gets the function itself.
    "AWS::Lambda::Alias": "no moto CloudFormation model",
}


def load_raw_template() -> dict[str, Any]:
    """template.yaml as read (a fresh copy each call: the file is parsed once per session)."""
    return copy.deepcopy(_parsed_template())


@lru_cache(maxsize=1)
def _parsed_template() -> dict[str, Any]:
    from esus_dev.localstack.template import load_template

    return load_template(TEMPLATE)


class _NoManagedPolicyLookup:
    """The translator asks IAM for managed-policy ARNs only for names it does not bundle; we use none."""

    def load(self) -> dict[str, str]:
        return {}


def artifact_key(logical_id: str) -> str:
    return f"{logical_id}.zip"


@lru_cache(maxsize=1)
def _translated_json(parameters_json: str) -> str:
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    template = copy.deepcopy(load_raw_template())
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://{ARTIFACT_BUCKET}/{artifact_key(logical_id)}"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = f"s3://{ARTIFACT_BUCKET}/{artifact_key(logical_id)}"
    return json.dumps(transform(template, json.loads(parameters_json), _NoManagedPolicyLookup()))


def translate(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """The plain CloudFormation template SAM deploys (a fresh copy each call)."""
    return dict(json.loads(_translated_json(json.dumps({**REQUIRED_PARAMETERS, **(parameters or {})}))))


@pytest.fixture(scope="session")
def raw_template() -> dict[str, Any]:
    return load_raw_template()


@pytest.fixture(scope="session")
def translated() -> dict[str, Any]:
    return translate()


def of_type(template: dict[str, Any], cfn_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == cfn_type}


# ---------- the stack in moto ----------
def _references(value: Any, names: set[str]) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        if value.get("Ref") in names:
            found.add(value["Ref"])
        getatt = value.get("Fn::GetAtt")
        if isinstance(getatt, list) and getatt and getatt[0] in names:
            found.add(getatt[0])
        sub = value.get("Fn::Sub")
        if sub is not None:
            text = sub[0] if isinstance(sub, list) else sub
            found |= {m for m in re.findall(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}", text) if m in names}
        for item in value.values():
            found |= _references(item, names)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item, names)
    return found


def _substitute(value: Any, replacements: dict[str, Any]) -> Any:
    """Replace Ref/GetAtt/Sub references to removed resources with the given stand-in values."""
    if isinstance(value, dict):
        if value.get("Ref") in replacements:
            return replacements[value["Ref"]]
        getatt = value.get("Fn::GetAtt")
        if isinstance(getatt, list) and getatt and getatt[0] in replacements:
            return replacements[getatt[0]]
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            for name, stand_in in replacements.items():
                if isinstance(stand_in, dict):  # a Ref stand-in: ${Name} of what it refers to
                    stand_in = "${" + str(stand_in["Ref"]) + "}"
                text = re.sub(r"\$\{" + name + r"(?:\.[A-Za-z0-9.]+)?\}", stand_in, text)
            return {"Fn::Sub": [text, _substitute(variables, replacements)] if variables else text}
        return {k: _substitute(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, replacements) for v in value]
    return value


def strip_for_moto(template: dict[str, Any], stand_ins: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Remove the resources moto cannot create; returns (template, removed logical id -> type)."""
    template = copy.deepcopy(template)
    removed = {lid: r["Type"] for lid, r in template["Resources"].items() if r["Type"] in NOT_CREATED_BY_MOTO}
    replacements: dict[str, Any] = {lid: stand_ins.get(lid, f"not-created-in-moto-{lid}") for lid in removed}
    for lid, cfn_type in removed.items():
        if cfn_type == "AWS::Lambda::Alias":  # an alias stands for its (unqualified) function
            replacements[lid] = template["Resources"][lid]["Properties"]["FunctionName"]
    for lid in removed:
        del template["Resources"][lid]
    for resource in template["Resources"].values():
        depends = resource.get("DependsOn")
        if isinstance(depends, str):
            depends = [depends]
        if depends:
            kept = [d for d in depends if d not in removed]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
    template["Resources"] = _substitute(template["Resources"], replacements)
    template["Outputs"] = _substitute(template.get("Outputs", {}), replacements)
    leftover = _references({"Resources": template["Resources"], "Outputs": template["Outputs"]}, set(removed))
    assert not leftover, f"references to removed resources left: {leftover}"
    return template, removed


def _zip_directory(directory: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, prefix + path.relative_to(directory).as_posix())
    return buffer.getvalue()


def generated_secret_string(properties: dict[str, Any], secrets_client: Any) -> str:
    """What CloudFormation stores for a GenerateSecretString: the template JSON plus one generated key."""
    spec = properties["GenerateSecretString"]
    password = secrets_client.get_random_password(
        PasswordLength=int(spec.get("PasswordLength", 32)),
        ExcludePunctuation=bool(spec.get("ExcludePunctuation", False)),
        ExcludeCharacters=str(spec.get("ExcludeCharacters", "")),
        IncludeSpace=bool(spec.get("IncludeSpace", False)),
    )["RandomPassword"]
    content = json.loads(spec["SecretStringTemplate"])
    content[spec["GenerateStringKey"]] = password
    return json.dumps(content)


@dataclass
class MotoStack:
    name: str
    template: dict[str, Any]  # as created (after stripping)
    removed: dict[str, str]
    physical: dict[str, str]  # logical id -> physical id, for everything created
    outputs: dict[str, str]
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)  # logical id -> Lambda configuration
    secret_arn: str = ""
    parameters: dict[str, str] = field(default_factory=dict)  # every parameter's value, defaults included


@pytest.fixture(scope="module")
def moto_stack() -> Iterator[MotoStack]:
    import boto3
    from moto import mock_aws

    translated_template = translate()
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
        raw = load_raw_template()["Resources"]
        for logical_id, resource in raw.items():
            if resource["Type"] == "AWS::Serverless::Function":
                body = _zip_directory(REPO / resource["Properties"]["CodeUri"])
            elif resource["Type"] == "AWS::Serverless::LayerVersion":
                body = _zip_directory(REPO / resource["Properties"]["ContentUri"] / "esus", "python/esus/")
            else:
                continue
            s3.put_object(Bucket=ARTIFACT_BUCKET, Key=artifact_key(logical_id), Body=body)

        secrets = boto3.client("secretsmanager", region_name=REGION)
        stand_ins: dict[str, str] = {}
        secret_arn = ""
        for logical_id, resource in of_type(translated_template, "AWS::SecretsManager::Secret").items():
            secret_arn = secrets.create_secret(
                Name=f"esus-test-{logical_id}",
                SecretString=generated_secret_string(resource["Properties"], secrets),
            )["ARN"]
            stand_ins[logical_id] = secret_arn
        template, removed = strip_for_moto(translated_template, stand_ins)

        cloudformation = boto3.client("cloudformation", region_name=REGION)
        name = "esus-infra-test"
        cloudformation.create_stack(
            StackName=name, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in REQUIRED_PARAMETERS.items()],
        )
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        summaries = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
        physical = {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries}
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        lambda_client = boto3.client("lambda", region_name=REGION)
        functions = {
            lid: lambda_client.get_function_configuration(FunctionName=physical[lid])
            for lid in of_type(template, "AWS::Lambda::Function")
        }
        parameters = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
        parameters.update(REQUIRED_PARAMETERS)
        yield MotoStack(name, template, removed, physical, outputs, functions, secret_arn, parameters)
