"""Shared fixtures: the real local stack in a subprocess (end-to-end over HTTP) and an in-process
stack on moto.mock_aws (handler tests with fault injection); hypothesis profiles.

Under pytest-xdist every worker is its own session: it starts its own `stack` (PORT=0, its own ESUS_DEV_DIR),
and a test file runs whole on one worker (`--dist loadfile`), so module fixtures and module state stay in one
process."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from hypothesis import settings

from esus_dev.localstack import moto_patches

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared"))
EXAMPLES = SHARED_DATA / "fhir-examples" / "r4"
SYNTHEA = SHARED_DATA / "synthea"
FHIR_JSON = "application/fhir+json"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "esus-tests")

# In-process moto (handler and infra tests) sees ESUS's concurrent calls; moto is not thread-safe. And it runs
# with the local stack's patches (esus_dev.localstack.moto_patches), as fast as the stack's own moto: unpatched,
# each transaction deep-copied whole tables and each read went through moto's slow generic serializer.
moto_patches.serialise_in_process_mock()
moto_patches.install()

# Property tests run their full example counts in CI (CI=true) and a fifth of them in a developer's run;
# HYPOTHESIS_PROFILE=ci|dev chooses explicitly. Tests state their CI count through `examples()`.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev")
settings.load_profile(HYPOTHESIS_PROFILE)


def examples(ci_count: int) -> int:
    """max_examples for a property test: `ci_count` under the ci profile, a fifth (at least 10) under dev."""
    return ci_count if HYPOTHESIS_PROFILE == "ci" else max(10, ci_count // 5)


# The longest test files (seconds of one worker, CI=true, measured with --durations=0), started first: with -n 2
# and whole files per worker (--dist loadfile), a long file started last is a long tail with one worker idle.
# Every other file follows in collection order. Re-measure when a file's time changes a lot.
LONGEST_FILES_FIRST = (
    "tests/e2e/test_schemathesis.py",  # ~75 s
    "tests/e2e/test_import.py",  # ~55 s
    "tests/e2e/test_transactions.py",  # ~45 s
    "tests/unit/test_fast_validation.py",  # ~32 s
    "tests/handlers/test_transactions.py",  # ~27 s
    "tests/handlers/test_verify.py",  # ~19 s
    "tests/e2e/test_phi.py",  # ~18 s
    "tests/infra/test_moto_stack.py",  # ~18 s
    "tests/handlers/test_search_crashes.py",  # ~16 s
    "tests/e2e/test_all_types.py",  # ~15 s
    "tests/e2e/test_cli.py",  # ~13 s
    "tests/handlers/test_fuzz_bundles.py",  # ~13 s
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below (not by test count)
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _longest_files_first(items)
    _unique_node_ids(items)


def _longest_files_first(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(LONGEST_FILES_FIRST)}
    position = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split("::", 1)[0], len(rank)), position[id(item)]))


def _unique_node_ids(items: list[pytest.Item]) -> None:
    """schemathesis names each operation's item `test[GET /x]`, but pytest 9.2 builds node ids from the original
    name and a callspec it does not have, so all operations share one id, and pytest-xdist, which schedules by
    id, would run one operation sixteen times. Give them ids from their names (pytest's private `_id`; a
    pytest that changes it fails here loudly, not silently)."""
    counts = Counter(item.nodeid for item in items)
    for item in items:
        if counts[item.nodeid] > 1 and item.parent is not None:
            unique = f"{item.parent.nodeid}::{item.name}"
            item._id = type(item._id).parse(unique)  # type: ignore[attr-defined]
            if item.nodeid != unique:
                raise pytest.UsageError(f"cannot give {item.name} a unique node id ({item.nodeid})")
    duplicates = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if duplicates:
        raise pytest.UsageError(f"tests share node ids (pytest-xdist would run only one of each): {duplicates}")


def nested_resources(value: Any) -> Iterator[dict[str, Any]]:
    """A resource and every resource inside it (Bundle entries, contained, Parameters): every object with a
    string resourceType, outermost first."""
    if isinstance(value, dict):
        if isinstance(value.get("resourceType"), str):
            yield value
        for item in value.values():
            yield from nested_resources(item)
    elif isinstance(value, list):
        for item in value:
            yield from nested_resources(item)


def new_tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def created(client: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """POST a resource to its type's endpoint (an e2e client's base URL ends in /fhir); 201 or the test fails."""
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return dict(response.json())


@dataclass
class RunningStack:
    base_url: str
    dev_dir: Path
    state: dict[str, str]
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def token(self, tenant: str, scope: str = "user/*.*", fhir_user: str | None = "Practitioner/123", **kw: Any) -> str:
        from esus_dev.localstack.devkeys import mint_token

        return mint_token(tenant, scope, fhir_user, directory=self.dev_dir, **kw)

    def client(self, tenant: str | None = None, scope: str = "user/*.*",
               fhir_user: str | None = "Practitioner/123") -> httpx.Client:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if tenant is not None:
            headers["Authorization"] = f"Bearer {self.token(tenant, scope, fhir_user)}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def dynamodb(self) -> Any:
        return boto3.client("dynamodb", endpoint_url=self.state["aws_endpoint"])

    def table(self, logical_id: str) -> str:
        return self.state[logical_id]

    def scan(self, logical_id: str) -> list[dict[str, Any]]:
        ddb, items, kwargs = self.dynamodb(), [], {"TableName": self.table(logical_id)}
        while True:
            page = ddb.scan(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def tenant_items(self, tenant: str) -> dict[str, list[dict[str, Any]]]:
        """Every stored item of a tenant, per table (keys start with the tenant)."""
        tables = ("ResourcesTable", "HistoryTable", "ProvenanceTable", "IndexTable")
        return {t: [i for i in self.scan(t) if i["pk"]["S"].startswith(f"{tenant}|")] for t in tables}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    yield from start_stack(tmp_path_factory)


def start_stack(tmp_path_factory: pytest.TempPathFactory, **env_overrides: str) -> Iterator[RunningStack]:
    """A fresh local stack in a subprocess (modules that load a lot of data, or change its settings through
    `env_overrides`, use their own)."""
    dev_dir = tmp_path_factory.mktemp("esus-dev")
    env = {**os.environ, "ESUS_DEV_DIR": str(dev_dir), "PORT": "0", "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1",
           **env_overrides}
    env.pop("AWS_ENDPOINT_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "esus_dev.cli", "run"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    base_url = None
    while base_url is None:
        try:
            line = lines.get(timeout=90)
        except queue.Empty:
            process.kill()
            pytest.fail("the local stack did not start:\n" + "".join(output))
        found = re.search(r"ESUS local API: (\S+)", line)
        base_url = found.group(1) if found else None
    state = json.loads(next(dev_dir.glob("local-stack-*.json")).read_text())  # one stack per dev dir
    running = RunningStack(base_url, dev_dir, state, process, output)
    yield running
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:  # a loaded machine: don't fail a passed run on the way out
        process.kill()
        process.wait()


def references_in(node: Any) -> list[str]:
    """Every `reference` string anywhere in a resource."""
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for value in node.values() for r in references_in(value)]
    if isinstance(node, list):
        return [r for value in node for r in references_in(value)]
    return []


def load_example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def strip_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}
