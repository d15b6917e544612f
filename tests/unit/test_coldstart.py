"""esus.coldstart: in Lambda the cyclic garbage collector is paused from the first esus import until the first
request has returned, and what init built is frozen; elsewhere nothing changes. (Its effect on cold init is
measured by the benchmark, docs/BENCH.md section 3, not here.)"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from esus.coldstart import collect_after_first_call, in_lambda
from tests.conftest import REPO
from tests.unit.test_cold_imports import LAMBDA_VARIABLES


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in LAMBDA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    gc.unfreeze()
    gc.enable()


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, False),
    ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
    ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
    ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_CHALICE_CLI_MODE": "true"}, False),
])
def test_outside_lambda_the_handler_and_the_collector_are_left_alone(
    collector: None, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: bool
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert in_lambda() is expected

    def handler(event: Any, context: Any) -> str:
        return "answer"

    wrapped = collect_after_first_call(handler)
    assert (wrapped is handler) is not expected
    assert gc.isenabled() is not expected
    assert (gc.get_freeze_count() > 0) is expected


def test_in_lambda_the_collector_resumes_after_the_first_request_and_its_objects_are_frozen(
    collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    kept: list[Any] = []

    def handler(event: Any, context: Any) -> str:
        assert not gc.isenabled()  # paused during the first request
        kept.extend([n] for n in range(5_000))  # what a first request builds to keep (clients, models)
        return f"answer {event}"

    wrapped = collect_after_first_call(handler)
    frozen_at_import = gc.get_freeze_count()
    assert frozen_at_import > 0 and not gc.isenabled()
    assert wrapped(1, None) == "answer 1"
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_at_import + 5_000

    gc.disable()  # later requests leave the collector as they find it
    frozen = gc.get_freeze_count()
    assert wrapped(2, None) == "answer 2" and not gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_a_large_first_call_has_its_garbage_collected_before_the_freeze(
    collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage cycles of a first call that built far more than usual are freed, not frozen for good; those of a
    usual one are frozen (collecting them would cost more than they weigh)."""
    from esus import coldstart

    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")

    def handler(event: Any, context: Any) -> None:
        for _ in range(event):
            cycle: list[Any] = []
            cycle.append(cycle)

    def kept_after_first_call(garbage: int) -> int:
        gc.unfreeze()
        gc.collect()
        collect_after_first_call(handler)(garbage, None)
        gc.unfreeze()
        return gc.collect()

    monkeypatch.setattr(coldstart, "LARGE_FIRST_CALL", 10_000)
    assert kept_after_first_call(2_000) >= 2_000
    assert kept_after_first_call(20_000) < 1_000


def test_a_first_request_that_raises_still_resumes_the_collector(collector: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")

    def handler(event: Any, context: Any) -> str:
        raise RuntimeError("boom")

    wrapped = collect_after_first_call(handler)
    with pytest.raises(RuntimeError):
        wrapped({}, None)
    assert gc.isenabled()


PROBE = """
import gc, importlib.util, json, sys
collections = [0]
# Passes once esus is loaded (compiling the module's own source, if not cached, comes before it).
gc.callbacks.append(lambda phase, info: collections.__setitem__(
    0, collections[0] + (phase == "start" and "esus" in sys.modules)))
from esus_dev.localstack.lambda_runtime import LambdaContext
name = sys.argv[1]
spec = importlib.util.spec_from_file_location(f"fn_{name}", f"functions/{name}/app.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
after_import = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(), "collections": collections[0]}
if name == "authorizer":
    event = {"type": "TOKEN", "authorizationToken": "Bearer not-a-token", "methodArn": "arn:x"}
else:
    event = {"httpMethod": "GET", "path": "/fhir/metadata", "resource": "/fhir/metadata", "headers": {},
             "requestContext": {"stage": "v1", "domainName": "api.example.org"}, "body": None}
try:
    status = module.handler(event, LambdaContext(name))["statusCode"]
except Exception as exc:  # the authorizer refuses the token by raising, as API Gateway's contract wants
    status = str(exc)
after_request = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
gc.collect()
gc.unfreeze()
print(json.dumps({"import": after_import, "request": after_request, "status": status, "kept": gc.collect()}))
"""
FUNCTIONS = sorted(p.parent.name for p in (REPO / "functions").glob("*/app.py"))


def _child_env(task_root: str | None) -> dict[str, str]:
    """A child process's environment: the layer and the tools on the path, no tracing; in Lambda iff task_root."""
    env = {k: v for k, v in os.environ.items() if k not in LAMBDA_VARIABLES}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO / "infra")]),
                "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true"})
    if task_root is not None:
        env["LAMBDA_TASK_ROOT"] = task_root
    return env


def _probe(name: str, in_a_lambda: bool) -> dict[str, Any]:
    env = _child_env(str(REPO / "functions" / name) if in_a_lambda else None)
    done = subprocess.run([sys.executable, "-c", PROBE, name], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_every_function_pauses_the_collector_in_lambda_until_its_first_call_returns() -> None:
    """Each function, in a fresh process as Lambda runs it: the collector paused and the heap frozen by the end of
    import, running again after the first call (whatever it answered), and little garbage kept for good. A
    route function's import runs no collector pass at all."""
    with ThreadPoolExecutor(max_workers=4) as workers:
        found = dict(zip(FUNCTIONS, workers.map(lambda name: _probe(name, True), FUNCTIONS), strict=True))
    for name, probe in found.items():
        assert probe["import"]["enabled"] is False and probe["import"]["frozen"] > 0, name
        assert probe["request"]["enabled"] is True, name
        assert probe["request"]["frozen"] >= probe["import"]["frozen"], name
        assert probe["kept"] < 1_000, (name, probe["kept"])  # a few hundred objects in cycles, not a leak
        if name != "authorizer":  # it loads Powertools' Logger before esus: kept light, not paused for that
            assert probe["import"]["collections"] == 0, name
    assert found["metadata"]["status"] == 200


def test_outside_lambda_a_function_leaves_the_collector_running() -> None:
    probe = _probe("create", False)
    assert probe["import"]["enabled"] is True and probe["import"]["frozen"] == 0
    assert probe["import"]["collections"] > 0  # the passes the pause saves
    assert probe["request"] == {"enabled": True, "frozen": 0}


def test_the_lambda_variables_are_powertools_own() -> None:
    from aws_lambda_powertools.shared import constants

    from esus import coldstart

    assert (coldstart.LAMBDA_TASK_ROOT_ENV, coldstart.SAM_LOCAL_ENV, coldstart.CHALICE_LOCAL_ENV) == (
        constants.LAMBDA_TASK_ROOT_ENV, constants.SAM_LOCAL_ENV, constants.CHALICE_LOCAL_ENV)


def test_the_operator_cli_runs_with_the_collector_even_in_a_lambda_image() -> None:
    """`esus` imports esus (which pauses the collector where LAMBDA_TASK_ROOT is set) but serves no route: it
    resumes it."""
    env = _child_env("/var/task")
    probe = ("import contextlib, gc, io, sys; from esus_dev import cli; paused = not gc.isenabled(); "
             "out = io.StringIO()\nwith contextlib.redirect_stdout(out): cli.main(['openapi'])\n"
             "print(paused, gc.isenabled(), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "True True"


def test_what_snapstart_priming_builds_is_frozen_before_the_snapshot() -> None:
    """Priming loads what a first request would (esus.snapstart): in Lambda it is frozen with the rest of the init,
    so the first request after a restore neither walks it nor counts it towards a large first call."""
    env = _child_env(str(REPO / "functions" / "create"))
    probe = ("import gc, importlib.util, json\n"
             "spec = importlib.util.spec_from_file_location('fn_create', 'functions/create/app.py')\n"
             "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
             "frozen = gc.get_freeze_count()\n"
             "from esus import snapstart\n"
             "snapstart.prime()\n"
             "print(json.dumps([frozen, gc.get_freeze_count(), gc.get_count()[0], gc.isenabled()]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    frozen_at_import, frozen_after_prime, young, enabled = json.loads(done.stdout.strip().splitlines()[-1])
    assert frozen_after_prime > frozen_at_import + 10_000 and young < 1_000 and enabled is False
