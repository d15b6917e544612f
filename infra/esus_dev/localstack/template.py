"""Reads template.yaml: the single source of truth for routes, functions, tables and environment."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from esus_dev.localstack.lambda_runtime import handler_path

# libyaml's parser when PyYAML has it (~5x faster: the template is read by every stack start and every in-process
# handler test); the constructors, and so the result, are the same.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_SafeLoader):  # type: ignore[misc,valid-type]  # PyYAML ships no type hints
    """YAML loader that understands CloudFormation short-form tags (!Ref, !GetAtt, !Sub, ...)."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    """The template as a fresh dict (parsed once per file version: in-process handler tests build a stack each)."""
    stat = path.stat()
    return copy.deepcopy(_parsed(path.resolve(), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        template: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return template


@dataclass(frozen=True)
class Route:
    function: str
    method: str
    path: str  # API Gateway resource path, e.g. /fhir/{type}/{id}
    authorized: bool

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\\{([A-Za-z0-9_]+)\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        return re.compile(f"^{regex}$")

    @property
    def specificity(self) -> tuple[int, int]:
        """API Gateway prefers static segments over {params}."""
        segments = self.path.strip("/").split("/")
        return (sum(1 for s in segments if not s.startswith("{")), len(segments))


@dataclass
class FunctionSpec:
    logical_id: str
    code_uri: str
    handler: str
    environment: dict[str, Any] = field(default_factory=dict)

    def handler_path(self, repo: Path) -> tuple[Path, str]:
        """(module file, function name) of this function's handler in a checkout at `repo`."""
        return handler_path(repo / self.code_uri, self.handler)


@dataclass
class TemplateModel:
    raw: dict[str, Any]

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.raw.get("Resources", {}))

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") == cfn_type}

    def functions(self) -> list[FunctionSpec]:
        globals_fn = self.raw.get("Globals", {}).get("Function", {})
        specs = []
        for logical_id, resource in self.of_type("AWS::Serverless::Function").items():
            props = resource.get("Properties", {})
            env = dict(globals_fn.get("Environment", {}).get("Variables", {}))
            env.update(props.get("Environment", {}).get("Variables", {}))
            specs.append(FunctionSpec(
                logical_id=logical_id,
                code_uri=str(props["CodeUri"]),
                handler=str(props.get("Handler") or globals_fn.get("Handler")),
                environment=env,
            ))
        return specs

    def routes(self) -> list[Route]:
        routes = []
        for logical_id, resource in self.of_type("AWS::Serverless::Function").items():
            for event in resource.get("Properties", {}).get("Events", {}).values():
                if event.get("Type") != "Api":
                    continue
                props = event["Properties"]
                auth = props.get("Auth", {}).get("Authorizer")
                routes.append(Route(logical_id, str(props["Method"]).upper(), str(props["Path"]), auth != "NONE"))
        return sorted(routes, key=lambda r: r.specificity, reverse=True)

    def authorizer_function(self) -> str:
        for api in self.of_type("AWS::Serverless::Api").values():
            auth = api.get("Properties", {}).get("Auth", {})
            default = auth.get("DefaultAuthorizer")
            arn = auth.get("Authorizers", {}).get(default, {}).get("FunctionArn", {})
            return str(arn["Fn::GetAtt"][0])
        raise ValueError("template.yaml declares no API authorizer")

    def gateway_responses(self) -> dict[str, dict[str, Any]]:
        for api in self.of_type("AWS::Serverless::Api").values():
            return dict(api.get("Properties", {}).get("GatewayResponses", {}))
        return {}

    def binary_media_types(self) -> list[str]:
        """The API's binary media types, "/" restored (SAM writes it "~1")."""
        for api in self.of_type("AWS::Serverless::Api").values():
            return [str(t).replace("~1", "/").lower() for t in api.get("Properties", {}).get("BinaryMediaTypes", [])]
        return []

    def parameter_defaults(self) -> dict[str, str]:
        return {k: str(v["Default"]) for k, v in self.raw.get("Parameters", {}).items() if "Default" in v}


def resolve(value: Any, refs: dict[str, str]) -> str:
    """Resolve the intrinsic functions the local stack needs (Ref to parameters and resources)."""
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict):
        raise ValueError(f"unsupported intrinsic in local environment: {list(value)}")
    return str(value)
