"""In-process stack on moto.mock_aws: the same template-driven gateway emulation, with injectable faults."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto import mock_aws

from esus.container import build_services, services, use_services
from esus.settings import get_settings
from esus_dev.localstack.devkeys import mint_token
from esus_dev.localstack.stack import GatewayResult, LocalStack
from tests.conftest import REPO


class FaultyClient:
    """Wraps a boto3 client; `faults[operation]` is called before the real call and may raise. Calls are
    serialised, as the local stack does: moto is not atomic across threads (DynamoDB is), and writes run
    concurrently (index items beside a transaction, the waves of a large transaction)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.faults: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if not callable(real) or name.startswith("_") or name in ("exceptions", "meta"):
            return real

        def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            fault = self.faults.get(name)
            if fault:
                fault(kwargs)
            with self._lock:
                return real(**kwargs)

        return call


class InProcessStack:
    def __init__(self, stack: LocalStack, dev_dir: str, ddb: FaultyClient, secrets: FaultyClient,
                 s3: FaultyClient) -> None:
        self.stack, self.dev_dir, self.ddb, self.secrets, self.s3 = stack, dev_dir, ddb, secrets, s3

    def request(self, method: str, path: str, body: Any = None, tenant: str = "acme",
                headers: dict[str, str] | None = None, scope: str = "user/*.*",
                patient: str | None = None) -> GatewayResult:
        from pathlib import Path

        token = mint_token(tenant, scope, "Practitioner/1", directory=Path(self.dev_dir), patient=patient)
        all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
                       "Host": "fhir.test", **(headers or {})}
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
        return self.stack.handle(method, f"/fhir{path}", all_headers, raw, "fhir.test")

    def json(self, result: GatewayResult) -> Any:
        return json.loads(result.body)

    def count(self, table_setting: str) -> int:
        table = getattr(get_settings(), table_setting)
        return int(self.ddb._client.scan(TableName=table, Select="COUNT")["Count"])


@pytest.fixture
def local(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessStack]:
    saved = dict(os.environ)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("ESUS_DEV_DIR", str(tmp_path))
    # boto3's default session survives between tests (moto resets it by default): a fresh one re-reads botocore's
    # service models for every client, most of this fixture's time. Credentials and data are moto's either way.
    with mock_aws(config={"core": {"reset_boto3_session": False}}):
        import boto3

        stack = LocalStack(REPO, prefix=f"h{os.getpid()}")
        stack.create_resources()
        stack.configure_environment()
        ddb = FaultyClient(boto3.client("dynamodb"))
        secrets = FaultyClient(boto3.client("secretsmanager"))
        s3 = FaultyClient(boto3.client("s3"))
        use_services(build_services(get_settings(), ddb, secrets, s3))
        try:
            yield InProcessStack(stack, str(tmp_path), ddb, secrets, s3)
        finally:
            use_services(None)
            get_settings.cache_clear()
            os.environ.clear()
            os.environ.update(saved)


__all__ = ["FaultyClient", "InProcessStack", "services"]
