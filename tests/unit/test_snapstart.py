"""SnapStart hooks (esus.snapstart): registered only in the init Lambda snapshots; priming loads libraries and
tables but makes no AWS call and holds no key; each restored environment gets its own random state and
rebuilds its services."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import types
from collections.abc import Callable
from typing import cast

import pytest

from esus import container, snapstart
from tests.conftest import REPO


def _run(code: str, **env: str) -> dict[str, object]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ESUS_", "AWS_", "LAMBDA_"))}
    environment.update({"PYTHONPATH": str(REPO / "shared"), "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused", **env})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environment,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_outside_a_snapshot_init_no_hook_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(snapstart.INITIALIZATION_TYPE, raising=False)
    registered: list[object] = []
    assert snapstart.install(lambda before, after: registered.append((before, after))) is False
    monkeypatch.setenv(snapstart.INITIALIZATION_TYPE, "on-demand")
    assert snapstart.install(lambda before, after: registered.append((before, after))) is False
    assert registered == []


def test_in_the_snapshot_init_the_hooks_go_to_lambdas_runtime_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot_restore_py ships with Lambda's Python runtimes; a stand-in records what is registered."""
    before: list[Callable[[], None]] = []
    after: list[Callable[[], None]] = []
    runtime_library = types.ModuleType("snapshot_restore_py")
    runtime_library.register_before_snapshot = before.append  # type: ignore[attr-defined]
    runtime_library.register_after_restore = after.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", runtime_library)
    monkeypatch.setenv(snapstart.INITIALIZATION_TYPE, "snap-start")
    assert snapstart.install() is True
    assert before == [snapstart.prime]
    assert after == [snapstart.after_restore]


def test_a_route_function_registers_the_hooks_when_imported_in_the_snapshot_init() -> None:
    code = """
import json, sys, types
calls = []
stub = types.ModuleType("snapshot_restore_py")
stub.register_before_snapshot = lambda f: calls.append(("before", f.__qualname__))
stub.register_after_restore = lambda f: calls.append(("after", f.__qualname__))
sys.modules["snapshot_restore_py"] = stub
sys.path.insert(0, "functions/create")
import app
print(json.dumps({"calls": calls}))
"""
    found = _run(code, AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    assert found == {"calls": [["before", "prime"], ["after", "after_restore"]]}


def test_prime_loads_what_a_first_request_needs_without_any_aws_call_or_key() -> None:
    code = """
import json, sys
import boto3
boto3.setup_default_session()
sent = []
boto3.DEFAULT_SESSION.events.register("before-send", lambda **kw: sent.append(kw.get("request")))
from esus import container, snapstart
snapstart.prime()
from fhir.resources.R4B import get_fhir_model_class
print(json.dumps({
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"fhir_core", "fhirpathpy", "cryptography", "pydantic"}),
    "provenance_model_built": get_fhir_model_class.cache_info().currsize >= 1,
    "aws_requests": len(sent),
    "services_built": container._services is not None,
    "on_demand_services_loaded": all(m in sys.modules for m in snapstart.ON_DEMAND_SERVICES),
    "credentials_resolved": boto3.DEFAULT_SESSION._session._credentials is not None,
}))
"""
    # Any request would go to a closed port and fail: prime must not make one.
    found = _run(code, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    # fhirpathpy stays unloaded: the primed types' search expressions all have generated plans.
    assert found == {"loaded": ["cryptography", "fhir_core", "pydantic"], "provenance_model_built": True,
                     "aws_requests": 0, "services_built": False, "on_demand_services_loaded": True,
                     "credentials_resolved": False}


def _restore_twice(*, with_hook: bool) -> list[tuple[float, bool]]:
    """Two environments resumed from one snapshot: the same memory (random's state, the services built so far),
    then the after-restore hook, then their first draw of retry jitter."""
    snapshot = random.getstate()
    results = []
    for _ in range(2):
        random.setstate(snapshot)
        container.use_services(cast(container.Services, object()))
        if with_hook:
            snapstart.after_restore()
        results.append((random.random(), container._services is None))
    container.use_services(None)
    return results


def test_each_restored_environment_gets_its_own_random_state_and_rebuilds_its_services() -> None:
    (first, first_reset), (second, second_reset) = _restore_twice(with_hook=True)
    assert first != second
    assert first_reset and second_reset


def test_without_the_hook_restored_environments_would_repeat_each_other() -> None:
    """What after_restore prevents: clones of one snapshot draw the same 'random' retry jitter."""
    (first, first_reset), (second, _) = _restore_twice(with_hook=False)
    assert first == second
    assert not first_reset
