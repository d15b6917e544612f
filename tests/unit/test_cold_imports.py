"""Cold start, held by behaviour rather than by a clock: importing a route function loads none of the heavy
libraries that only some requests need (they load on first use), and the X-Ray SDK loads only where Powertools
traces. The timings themselves live in the benchmark (`make bench`, docs/BENCH.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esus.http.api import tracing_active
from esus.snapstart import ON_DEMAND_SERVICES
from tests.conftest import REPO

FUNCTIONS = sorted(p.parent.name for p in (REPO / "functions").glob("*/app.py"))
# Deferred to the request that needs them; the comment at each import says why.
DEFERRED = ("aws_xray_sdk", "wrapt", "pydantic", "pydantic_core", "pydantic_settings", "fhir", "fhir_core",
            "yaml", "cryptography", "jwt", "fhirpathpy", "antlr4", "jsonpatch", "jsonpointer")
LAMBDA_VARIABLES = ("LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE", "POWERTOOLS_TRACE_DISABLED")

PROBE = """
import importlib.util, json, sys
deferred = set(sys.argv[2].split(","))
found = {}
for name in sys.argv[1].split(","):
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"fn_{name}", f"functions/{name}/app.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    found[name] = sorted({m.split(".")[0] for m in set(sys.modules) - before} & deferred)
print(json.dumps(found))
"""


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAMBDA_VARIABLES and not k.startswith("ESUS_")}
    return {**env, "PYTHONPATH": str(REPO / "shared"), "AWS_DEFAULT_REGION": "us-east-1", **extra}


def _probe(code: str, *args: str, env: dict[str, str]) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_a_route_function_loads_none_of_the_deferred_libraries() -> None:
    loaded = _probe(PROBE, ",".join(FUNCTIONS), ",".join(DEFERRED), env=_environment())
    assert set(loaded) == set(FUNCTIONS)
    assert {name: mods for name, mods in loaded.items() if mods} == {}


def test_the_probe_sees_a_deferred_library_when_one_is_loaded() -> None:
    """The guard above can fail: a function that imported fhir.resources at top level would be reported."""
    code = PROBE.replace("before = set(sys.modules)", "before = set(sys.modules); import fhir.resources.R4B")
    loaded = _probe(code, "read", ",".join(DEFERRED), env=_environment())
    assert {"fhir", "fhir_core", "pydantic"} <= set(loaded["read"])


TRACED_PROBE = """
import json, sys
sys.path.insert(0, "functions/create")
import app
import botocore.client
patched = getattr(botocore.client.BaseClient._make_api_call, "__wrapped__", None) is not None
from aws_xray_sdk.core import patcher
print(json.dumps({"xray": "aws_xray_sdk.core" in sys.modules, "botocore_patched": patched,
                  "patched": sorted(patcher._PATCHED_MODULES)}))
"""


def test_in_lambda_the_function_is_traced_and_only_botocore_is_patched() -> None:
    """Deployments keep X-Ray tracing: with Lambda's LAMBDA_TASK_ROOT set, the Tracer loads at import (before any
    client exists) and patches botocore, the only library ESUS calls out through."""
    env = _environment(LAMBDA_TASK_ROOT=str(REPO / "functions" / "create"), AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR")
    found = _probe(TRACED_PROBE, env=env)
    assert found == {"xray": True, "botocore_patched": True, "patched": ["botocore"]}


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, False),
    ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
    ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
    ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "0"}, True),
    ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
    ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_CHALICE_CLI_MODE": "true"}, False),
])
def test_tracing_is_active_exactly_where_powertools_traces(monkeypatch: pytest.MonkeyPatch,
                                                           variables: dict[str, str], expected: bool) -> None:
    for name in LAMBDA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert tracing_active() is expected
    from aws_lambda_powertools.tracing.tracer import Tracer

    assert (not Tracer._is_tracer_disabled()) is expected  # the rule Powertools applies itself


SERVICES_PROBE = """
import importlib.util, json, sys
found = {}
for name in sys.argv[1].split(","):
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"fn_{name}", f"functions/{name}/app.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    found[name] = sorted(m for m in set(sys.modules) - before if m.startswith("esus.domain."))
print(json.dumps(found))
"""


def test_a_read_update_or_delete_function_loads_no_search_or_bundle_service() -> None:
    """The composition root builds search, conditional, includes, Provenance, Bundle and $everything services on first
    use: the single-resource routes never import them (about 7 ms of each cold start)."""
    loaded = _probe(SERVICES_PROBE, "read,vread,update,delete,history", env=_environment())
    assert {name: sorted(set(mods) & set(ON_DEMAND_SERVICES)) for name, mods in loaded.items()} == {
        name: [] for name in ("read", "vread", "update", "delete", "history")}
    assert "esus.domain.resources" in loaded["read"]  # the probe sees the domain modules a function does load


VALIDATION_PROBE = """
import json, sys
from esus.domain.fhir import validate_resource
from esus.errors import InvalidRequest
from esus_dev.bench.scenario import patient_body

def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & {"fhir", "fhir_core", "pydantic"})

validate_resource("Patient", {**patient_body("+1 555 0100", "a@example.org"), "id": "p1"})
proved = heavy()
try:
    validate_resource("Patient", {"resourceType": "Patient", "birthDate": "1970", "_birthDate": {}})
except InvalidRequest:
    pass
print(json.dumps({"proved": proved, "fallback": heavy()}))
"""


def test_a_common_valid_body_is_validated_without_building_the_fhir_models() -> None:
    """The bench's Patient (the specification's example) is proved valid by the fast check: no pydantic, no
    fhir.resources (~160 ms of a cold write). A body it cannot prove loads them (so the probe can fail)."""
    env = _environment(PYTHONPATH=os.pathsep.join([str(REPO / "shared"), str(REPO / "infra")]))
    assert _probe(VALIDATION_PROBE, env=env) == {"proved": [], "fallback": ["fhir", "fhir_core", "pydantic"]}


ALL_SERVICES_PROBE = """
import json, sys
from functools import cached_property
from esus.container import Services, build_services
from esus.settings import get_settings
services = build_services(get_settings())
before = {m for m in sys.modules if m.startswith("esus.domain.")}
for name, member in vars(Services).items():
    if isinstance(member, cached_property):
        getattr(services, name)
print(json.dumps(sorted({m for m in sys.modules if m.startswith("esus.domain.")} - before)))
"""


def test_snapstart_primes_every_service_built_on_first_use() -> None:
    """ON_DEMAND_SERVICES (what esus.snapstart.prime loads before the snapshot) is exactly what building every lazy
    service of esus.container.Services imports: a service added there without it would load after each restore."""
    done = subprocess.run([sys.executable, "-c", ALL_SERVICES_PROBE], capture_output=True, text=True, cwd=REPO,
                          env=_environment(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads(done.stdout.strip().splitlines()[-1])) == set(ON_DEMAND_SERVICES)
