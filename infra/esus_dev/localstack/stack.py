"""The local stack: API Gateway + Lambda + AWS, on one machine, driven by template.yaml.

- AWS is an embedded moto server on a loopback port (or AWS_ENDPOINT_URL when set), with every
  request to it serialised by one lock: moto is not atomic across threads, DynamoDB is, and the lock
  restores DynamoDB's all-or-nothing TransactWriteItems under real concurrency.
- Tables come from the template's AWS::DynamoDB::Table resources, buckets from its AWS::S3::Bucket resources
  (with their versioning); the PHI root-key secret is created.
- Routes are the functions' Api events; requests pass through the template's authorizer first and
  gateway errors use the template's GatewayResponses, as in API Gateway.
- Payloads as AWS limits and encodes them: API Gateway's 10 MB request limit, Lambda's 6 MB limit on the whole
  request event and on the whole response, and the API's binary media types (request bodies of those types reach
  the function base64-encoded; a base64 response becomes bytes when the client's first Accept is one of them).
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3

from esus.limits import LAMBDA_REQUEST_BYTES, LAMBDA_RESPONSE_BYTES
from esus.security.crypto import RootKeys
from esus_dev.localstack import moto_patches
from esus_dev.localstack.devkeys import LOCAL_AUDIENCE, LOCAL_ISSUER, public_key_pem
from esus_dev.localstack.lambda_runtime import LambdaContext, load_module
from esus_dev.localstack.template import Route, TemplateModel, load_template, resolve

MAX_API_PAYLOAD = 10 * 1024 * 1024  # API Gateway's own limit
LOCAL_REGION = "us-east-1"
# API Gateway's status and $context.error.message per gateway response type (when the template sets none).
GATEWAY_DEFAULT_STATUS = {
    "UNAUTHORIZED": 401, "ACCESS_DENIED": 403, "MISSING_AUTHENTICATION_TOKEN": 403, "REQUEST_TOO_LARGE": 413,
    "AUTHORIZER_FAILURE": 500, "AUTHORIZER_CONFIGURATION_ERROR": 500, "DEFAULT_4XX": 400, "DEFAULT_5XX": 500,
}
GATEWAY_MESSAGES = {
    "UNAUTHORIZED": "Unauthorized", "ACCESS_DENIED": "User is not authorized to access this resource",
    "MISSING_AUTHENTICATION_TOKEN": "Missing Authentication Token", "REQUEST_TOO_LARGE": "Request Too Long",
}
CONTEXT_VARIABLE = re.compile(r"\$context\.([A-Za-z0-9_.]*[A-Za-z0-9_])|\$\{context\.([A-Za-z0-9_.]+)\}")


def _locked(app: Callable[..., Iterable[bytes]], lock: threading.RLock) -> Callable[..., Iterable[bytes]]:
    def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            body = [b"".join(app(environ, start_response))]
            moto_patches.forget_tracked_instances()
            return body

    return wrapper


class EmbeddedMoto:
    """moto's server on 127.0.0.1, one request at a time."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        moto_patches.install()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.lock = moto_patches.MOTO_LOCK
        app = _locked(DomainDispatcherApplication(create_backend_app), self.lock)
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="moto")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()


@dataclass
class GatewayResult:
    status: int
    headers: dict[str, str]
    body: bytes


class LocalStack:
    def __init__(self, repo: Path, prefix: str = "esus-local", parameters: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.template = TemplateModel(load_template(repo / "template.yaml"))
        self.prefix = prefix
        self.parameters = {
            **self.template.parameter_defaults(),
            "Stage": "local", "JwtIssuer": LOCAL_ISSUER, "JwtAudience": LOCAL_AUDIENCE, "JwksUrl": "",
            "DeletionProtection": "false",
            **(parameters or {}),
        }
        self.moto: EmbeddedMoto | None = None
        self.aws_endpoint = ""  # where other processes reach this stack's AWS (the CLI, the tests' scans)
        self._in_process_aws: Any = None
        self.routes: list[Route] = self.template.routes()
        self._modules: dict[str, ModuleType] = {}
        self._authorizer = self.template.authorizer_function()
        self.binary_media_types = self.template.binary_media_types()

    # ---------- AWS ----------
    def physical_names(self) -> dict[str, str]:
        tables = {lid: f"{self.prefix}-{_kebab(lid)}" for lid in self.template.of_type("AWS::DynamoDB::Table")}
        secrets = {lid: f"{self.prefix}/{_kebab(lid)}" for lid in self.template.of_type("AWS::SecretsManager::Secret")}
        buckets = {lid: f"{self.prefix}-{_kebab(lid)}".lower() for lid in self.template.of_type("AWS::S3::Bucket")}
        return {**tables, **secrets, **buckets}

    def start_aws(self, in_process: bool = False) -> None:
        """The embedded moto server (unless AWS_ENDPOINT_URL names another endpoint). `in_process`: this process's
        own calls (the functions') go straight to the same moto backends, in-process, instead of over HTTP to the
        server, which still answers other processes: the same moto, the same lock, without an HTTP round trip per
        call (about a third of a request's time)."""
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        os.environ.setdefault("AWS_DEFAULT_REGION", LOCAL_REGION)
        if os.environ.get("AWS_ENDPOINT_URL"):
            self.aws_endpoint = os.environ["AWS_ENDPOINT_URL"]
        else:
            self.moto = EmbeddedMoto()
            self.aws_endpoint = self.moto.endpoint
            if in_process:
                from moto import mock_aws

                moto_patches.serialise_in_process_mock()
                self._in_process_aws = mock_aws()
                self._in_process_aws.start()
            else:
                os.environ["AWS_ENDPOINT_URL"] = self.moto.endpoint
            self.moto.start()
        self.create_resources()

    def create_resources(self) -> None:
        """Create whatever the template declares that is missing at the endpoint."""
        ddb = boto3.client("dynamodb")
        names = self.physical_names()
        existing = set(ddb.list_tables().get("TableNames", []))
        for lid, resource in self.template.of_type("AWS::DynamoDB::Table").items():
            if names[lid] in existing:
                continue
            props = resource["Properties"]
            kwargs: dict[str, Any] = {
                "TableName": names[lid],
                "AttributeDefinitions": props["AttributeDefinitions"],
                "KeySchema": props["KeySchema"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            ddb.create_table(**kwargs)
        s3 = boto3.client("s3")
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for lid, resource in self.template.of_type("AWS::S3::Bucket").items():
            if names[lid] in existing:
                continue
            region = s3.meta.region_name
            s3.create_bucket(Bucket=names[lid], **({} if region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}))
            versioning = resource.get("Properties", {}).get("VersioningConfiguration")
            if versioning:
                s3.put_bucket_versioning(Bucket=names[lid], VersioningConfiguration={"Status": versioning["Status"]})
        secrets = boto3.client("secretsmanager")
        for lid in self.template.of_type("AWS::SecretsManager::Secret"):
            try:
                secrets.describe_secret(SecretId=names[lid])
            except secrets.exceptions.ResourceNotFoundException:
                secrets.create_secret(Name=names[lid], SecretString=RootKeys.generate().serialize())

    # ---------- functions ----------
    def configure_environment(self) -> None:
        refs = {**self.parameters, **self.physical_names()}
        for spec in self.template.functions():
            for key, value in spec.environment.items():
                if key != "POWERTOOLS_SERVICE_NAME":
                    os.environ[key] = resolve(value, refs)
        os.environ["ESUS_JWT_PUBLIC_KEYS_PEM"] = public_key_pem()
        os.environ.setdefault("ESUS_AWS_READ_TIMEOUT_SECONDS", "60")  # moto serialises calls (see above)
        os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "esus-local")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        warnings.filterwarnings("ignore", message=".*No application metrics to publish.*")
        from esus.container import use_services
        from esus.settings import get_settings

        get_settings.cache_clear()
        use_services(None)

    def module(self, logical_id: str) -> ModuleType:
        if logical_id not in self._modules:
            spec = next(s for s in self.template.functions() if s.logical_id == logical_id)
            path, _ = spec.handler_path(self.repo)
            self._modules[logical_id] = load_module(path, f"esus_fn_{logical_id}")
        return self._modules[logical_id]

    def invoke(self, logical_id: str, event: dict[str, Any]) -> Any:
        spec = next(s for s in self.template.functions() if s.logical_id == logical_id)
        function = getattr(self.module(logical_id), spec.handler.split(".", 1)[1])
        return function(event, LambdaContext(logical_id, region=LOCAL_REGION))

    def start(self, in_process_aws: bool = False) -> None:
        self.start_aws(in_process_aws)
        self.configure_environment()

    # ---------- API Gateway ----------
    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self.routes:
            found = route.pattern.match(path)
            if found and route.method == method:
                return route, found.groupdict()
        return None, {}

    def gateway_error(self, kind: str, status: int | None = None, request_id: str | None = None) -> GatewayResult:
        """A gateway response as API Gateway renders it: the template's own response for `kind`, else
        DEFAULT_4XX/5XX by the kind's status, with `$context` variables filled in."""
        responses = self.template.gateway_responses()
        status = status or GATEWAY_DEFAULT_STATUS.get(kind, 500 if kind.endswith("5XX") else 400)
        response = responses.get(kind) or responses.get("DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX") or {}
        status = int(response.get("StatusCode") or status)
        request_id = request_id or str(uuid.uuid4())
        variables = {
            "requestId": request_id, "extendedRequestId": request_id, "stage": "local",
            "error.responseType": kind,
            "error.message": GATEWAY_MESSAGES.get(kind, "Internal server error" if status >= 500 else "Bad request"),
        }
        variables["error.messageString"] = json.dumps(variables["error.message"])
        headers = {k: _render(v.strip("'"), variables)
                   for k, v in response.get("ResponseParameters", {}).get("Headers", {}).items()}
        headers.setdefault("x-amzn-RequestId", request_id)
        body = _render(response.get("ResponseTemplates", {}).get("application/json", ""), variables)
        return GatewayResult(status, headers, body.encode())

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes, host: str) -> GatewayResult:
        try:
            return self._handle(method, raw_path, headers, body, host)
        finally:
            if self._in_process_aws is not None:  # as the server does after each of its requests
                with moto_patches.MOTO_LOCK:
                    moto_patches.forget_tracked_instances()

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes, host: str) -> GatewayResult:
        url = urlsplit(raw_path)
        request_id = str(uuid.uuid4())
        route, path_params = self.match(method, url.path)
        if route is None:  # API Gateway answers an unknown path or method with MISSING_AUTHENTICATION_TOKEN
            return self.gateway_error("MISSING_AUTHENTICATION_TOKEN", request_id=request_id)
        if len(body) > MAX_API_PAYLOAD:
            return self.gateway_error("REQUEST_TOO_LARGE", request_id=request_id)
        authorizer_context: dict[str, Any] = {}
        if route.authorized:
            token = _header(headers, "Authorization")
            if not token:
                return self.gateway_error("UNAUTHORIZED", request_id=request_id)
            method_arn = f"arn:aws:execute-api:{LOCAL_REGION}:000000000000:local/local/{method}{url.path}"
            try:
                policy = self.invoke(self._authorizer, {
                    "type": "TOKEN", "authorizationToken": token, "methodArn": method_arn})
            except Exception as exc:  # "Unauthorized" is the 401 contract; any other error is a failure (500)
                kind = "UNAUTHORIZED" if str(exc) == "Unauthorized" else "AUTHORIZER_FAILURE"
                return self.gateway_error(kind, request_id=request_id)
            statements = policy.get("policyDocument", {}).get("Statement", [])
            if not any(s.get("Effect") == "Allow" for s in statements):
                return self.gateway_error("ACCESS_DENIED", request_id=request_id)
            authorizer_context = {**policy.get("context", {}), "principalId": policy.get("principalId")}
        multi_query = {k: v for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        event = {
            "resource": route.path,
            "path": url.path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.path, "httpMethod": method, "path": url.path, "stage": "local",
                "requestId": request_id, "domainName": host, "identity": {"sourceIp": "127.0.0.1"},
                "authorizer": authorizer_context or None,
            },
            "body": None,
            "isBase64Encoded": False,
        }
        if body and self.is_binary(_header(headers, "Content-Type")):
            event.update(body=base64.b64encode(body).decode("ascii"), isBase64Encoded=True)
        elif body:
            event["body"] = body.decode("utf-8", errors="replace")
        if len(json.dumps(event)) > LAMBDA_REQUEST_BYTES:
            # Lambda refuses the invocation; API Gateway answers with an error of its own (no function runs).
            return self.gateway_error("INTEGRATION_FAILURE", 502, request_id)
        try:
            response = self.invoke(route.function, event)
        except Exception:  # a crashed Lambda: API Gateway answers 502 with its own body
            return self.gateway_error("DEFAULT_5XX", 502, request_id)
        if len(json.dumps(response)) > LAMBDA_RESPONSE_BYTES:  # Lambda fails the invocation after the handler
            return self.gateway_error("INTEGRATION_FAILURE", 502, request_id)
        out_headers = dict(response.get("headers") or {})
        for key, values in (response.get("multiValueHeaders") or {}).items():
            out_headers[key] = ", ".join(values)
        out_body = (response.get("body") or "").encode()
        accept = (_header(headers, "Accept") or "").split(",", 1)[0]
        if response.get("isBase64Encoded") and self.is_binary(accept):
            out_body = base64.b64decode(out_body)  # else the client gets the base64 text, as from API Gateway
        return GatewayResult(int(response["statusCode"]), out_headers, out_body)

    def is_binary(self, media_type: str | None) -> bool:
        """API Gateway's test: the type (parameters dropped) is one of the binary media types, `type/*` included."""
        kind = (media_type or "").split(";", 1)[0].strip().lower()
        return bool(kind) and any(kind == t or (t.endswith("/*") and kind.split("/", 1)[0] == t[:-2])
                                  for t in self.binary_media_types)

    # ---------- HTTP ----------
    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        stack = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK stall

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_API_PAYLOAD:
                    result = stack.gateway_error("REQUEST_TOO_LARGE")
                    self.close_connection = True
                else:
                    body = self.rfile.read(length) if length else b""
                    headers = {k: v for k, v in self.headers.items()}
                    headers.setdefault("X-Forwarded-Proto", "http")
                    result = stack.handle(self.command, self.path, headers, body, self.headers.get("Host", host))
                self.send_response(result.status)
                for key, value in result.headers.items():
                    if key.lower() not in ("content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(result.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(result.body)

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):  # every method reaches the gateway, which answers unknown ones
                    return self._dispatch
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                if os.environ.get("ESUS_ACCESS_LOG"):
                    # Method, path without query (queries can carry phone/email) and status only.
                    print(f"{self.command} {self.path.split('?', 1)[0]} -> {args[1] if len(args) > 1 else ''}")

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ServeError(_bind_problem(host, port, exc)) from None
        server.daemon_threads = True
        return server


def _render(template: str, variables: dict[str, str]) -> str:
    """`$context.x` / `${context.x}` as API Gateway fills them; unknown variables render empty, as there."""
    return CONTEXT_VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), template)


class ServeError(Exception):
    """The API cannot listen where asked (port taken, not allowed, unknown host): one line for the operator."""


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    other = 3001 if port == 3000 else 3000
    choose = f"choose another with `PORT={other} make run` or `esus run --port {other}`"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another `esus run`, or another program): {choose}"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need privileges): {choose}"
    return (f"cannot listen on {host}:{port} ({exc.strerror or exc}): check HOST (`HOST=127.0.0.1 make run` "
            f"or `esus run --host 127.0.0.1`) and PORT")


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()

