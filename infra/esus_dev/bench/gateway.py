"""The local stack in-process: requests through LocalStack.handle, the authorizer and the route handler timed
apart, and the tables reset between iterations."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esus_dev.bench import REPO
from esus_dev.bench.recorder import AwsRecorder, ParallelTracker, install_default_session_recorder
from esus_dev.bench.report import Sample

if TYPE_CHECKING:
    from esus_dev.localstack.stack import GatewayResult, LocalStack

FHIR_JSON = "application/fhir+json"
TOKEN_EVENT = "TOKEN"  # noqa: S105 (the authorizer event type, not a secret)


class TimedInvoke:
    """Wraps LocalStack.invoke: times the authorizer and the route handler separately; in capture mode
    it records the route's event instead of running the handler (to hand it to a cold subprocess)."""

    def __init__(self, invoke: Callable[[str, dict[str, Any]], Any]) -> None:
        self._invoke = invoke
        self.handler_s = 0.0
        self.authorizer_s = 0.0
        self.captured: list[tuple[str, dict[str, Any]]] | None = None

    def __call__(self, logical_id: str, event: dict[str, Any]) -> Any:
        is_authorizer = event.get("type") == TOKEN_EVENT
        if self.captured is not None:
            self.captured.append((logical_id, json.loads(json.dumps(event))))
            if not is_authorizer:
                return {"statusCode": 200, "headers": {}, "body": ""}
        started = time.perf_counter()
        try:
            return self._invoke(logical_id, event)
        finally:
            elapsed = time.perf_counter() - started
            if is_authorizer:
                self.authorizer_s = elapsed
            else:
                self.handler_s = elapsed


@dataclass
class Response:
    status: int
    body: Any


class Client:
    """Requests through LocalStack.handle with a bearer token; every call becomes a Sample."""

    def __init__(self, stack: LocalStack, recorder: AwsRecorder, tenant: str, token: str) -> None:
        self.stack = stack
        self.recorder = recorder
        self.tenant = tenant
        self.token = token
        self.parallel = ParallelTracker()  # which calls the handlers issue side by side
        self.parallel.install()
        self.timer = TimedInvoke(stack.invoke)
        stack.invoke = self.timer  # type: ignore[method-assign]
        self.samples: list[Sample] = []

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON,
                "Host": "bench.local", **(extra or {})}

    def call(self, interaction: str, method: str, path: str, body: Any = None, expect: int = 200,
             headers: dict[str, str] | None = None) -> Response:
        self.recorder.take()
        raw = json.dumps(body).encode() if body is not None else b""
        result = self.stack.handle(method, path, self.headers(headers), raw, "bench.local")
        calls = self.recorder.take()
        if result.status != expect:
            raise RuntimeError(f"{interaction}: {method} {path} answered {result.status}, expected {expect}: "
                               f"{result.body[:400]!r}")
        self.samples.append(Sample(interaction, self.timer.handler_s, self.timer.authorizer_s, calls))
        return Response(result.status, json.loads(result.body) if result.body else None)

    def returned(self, results: int) -> None:
        """The last request's number of returned (or, for _summary=count, counted) search results."""
        self.samples[-1].results = results

    def capture(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """The events API Gateway would hand the authorizer and the route, without running the route."""
        self.timer.captured = []
        try:
            raw = json.dumps(body).encode() if body is not None else b""
            result: GatewayResult = self.stack.handle(method, path, self.headers(headers), raw, "bench.local")
            if result.status != 200:
                raise RuntimeError(f"capture {method} {path}: {result.status} {result.body[:200]!r}")
            events = {"authorizer" if e.get("type") == TOKEN_EVENT else logical_id: e
                      for logical_id, e in self.timer.captured}
        finally:
            self.timer.captured = None
        return events


class TableJanitor:
    """Recreates the stack's tables, empty, and empties its object bucket, between iterations (untimed).

    moto's TransactWriteItems deep-copies every table it touches, once per transaction item, to roll
    back on failure, and moto keeps a (possibly empty) partition for every hash key ever written: a
    transaction's cost grows with everything stored before it. Fresh tables keep that cost the same for
    every iteration, and the same for the handler and for the raw replay.
    """

    def __init__(self, ddb: Any, stack: LocalStack) -> None:
        import boto3

        self._ddb = ddb
        self._s3 = boto3.session.Session().client("s3")  # not recorded
        self._stack = stack
        names = stack.physical_names()
        self._tables = [names[lid] for lid in stack.template.of_type("AWS::DynamoDB::Table")]
        self._buckets = [names[lid] for lid in stack.template.of_type("AWS::S3::Bucket")]

    def reset(self) -> None:
        for table in self._tables:
            self._ddb.delete_table(TableName=table)
        for bucket in self._buckets:  # every version (the bucket is versioned): moto holds them in memory
            for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                versions = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                if versions:
                    self._s3.delete_objects(Bucket=bucket, Delete={"Objects": [
                        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]})
        self._stack.create_resources()


def start_stack(dev_dir: Path) -> tuple[LocalStack, AwsRecorder]:
    os.environ["ESUS_DEV_DIR"] = str(dev_dir)
    os.environ.pop("AWS_ENDPOINT_URL", None)  # always our own embedded moto, never a shared endpoint
    os.environ["ESUS_ROOT_KEY_MAX_AGE_SECONDS"] = "300"  # the production default
    for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED"):
        os.environ[name] = "true"
    recorder = install_default_session_recorder()
    from esus_dev.localstack.stack import LocalStack

    stack = LocalStack(REPO, prefix="esus-bench")
    stack.start()
    recorder.take()
    return stack, recorder


def new_client(stack: LocalStack, recorder: AwsRecorder) -> Client:
    from esus_dev.localstack.devkeys import mint_token

    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    token = mint_token(tenant, "user/*.*", "Practitioner/bench", lifetime_seconds=3600)
    return Client(stack, recorder, tenant, token)
