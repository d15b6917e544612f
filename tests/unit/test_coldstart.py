"""esus.coldstart: in Lambda the cyclic garbage collector is paused from the end of import until the first request has
returned, and what init built is frozen; elsewhere nothing changes. (Its effect on cold init is measured by the
benchmark, docs/BENCH.md section 3, not here.)"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
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
from esus_dev.localstack.lambda_runtime import LambdaContext
spec = importlib.util.spec_from_file_location("fn_metadata", "functions/metadata/app.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
after_import = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
event = {"httpMethod": "GET", "path": "/fhir/metadata", "resource": "/fhir/metadata", "headers": {},
         "requestContext": {"stage": "v1", "domainName": "api.example.org"}, "body": None}
status = module.handler(event, LambdaContext("metadata"))["statusCode"]
after_request = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
gc.collect()
gc.unfreeze()
print(json.dumps({"import": after_import, "request": after_request, "status": status, "kept": gc.collect()}))
"""


@pytest.mark.parametrize("in_a_lambda", [True, False])
def test_a_route_function_pauses_the_collector_only_in_lambda(in_a_lambda: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in LAMBDA_VARIABLES}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO / "infra")]),
                "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true"})
    if in_a_lambda:
        env["LAMBDA_TASK_ROOT"] = str(REPO / "functions" / "metadata")
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 200
    assert found["import"]["enabled"] is not in_a_lambda and (found["import"]["frozen"] > 0) is in_a_lambda
    assert found["request"]["enabled"] is True
    assert (found["request"]["frozen"] > found["import"]["frozen"]) is in_a_lambda
    assert found["kept"] < 1_000  # garbage in cycles the freezes kept for good: a few objects, not a leak
