"""Cold phase: import + first request of each function in a fresh subprocess, against a bare handler.

The child runs `python -m esus_dev.bench --cold-child ...`: every module it imports before timing the
handler's import keeps stdlib-only top-level imports, so the timing is not flattered."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esus_dev.bench import BARE_CODE_DIR, REPO
from esus_dev.bench.gateway import Client, TableJanitor
from esus_dev.bench.profile import package_self_times
from esus_dev.bench.recorder import call_counts, install_default_session_recorder, waiting_seconds
from esus_dev.bench.report import BARE, ColdRow, Report
from esus_dev.bench.scenario import observation_body, patient_body, revised
from esus_dev.localstack.lambda_runtime import LambdaContext, load_handler

if TYPE_CHECKING:
    from esus_dev.localstack.stack import LocalStack

FIRST_REQUEST_MARK = "esus-bench: first request"  # on the child's stderr, between import and first request
# Every route function's cold first request (the template's functions; a test holds the two equal).
COLD_REQUESTS: dict[str, tuple[str, str]] = {
    "MetadataFunction": ("GET", "/fhir/metadata"),
    "OpenApiFunction": ("GET", "/fhir/openapi.json"),
    "SmartConfigurationFunction": ("GET", "/fhir/.well-known/smart-configuration"),
    "AuthorizerFunction": ("GET", "/fhir/Patient/{pid}"),
    "CreateFunction": ("POST", "/fhir/Patient"),
    "ReadFunction": ("GET", "/fhir/Patient/{pid}"),
    "VreadFunction": ("GET", "/fhir/Patient/{pid}/_history/1"),
    "UpdateFunction": ("PUT", "/fhir/Patient/{pid}"),
    "PatchFunction": ("PATCH", "/fhir/Patient/{pid}"),
    "DeleteFunction": ("DELETE", "/fhir/Patient/{pid}"),
    "ConditionalUpdateFunction": ("PUT", "/fhir/Patient?phone={phone}"),
    "ConditionalDeleteFunction": ("DELETE", "/fhir/Patient?phone={phone}"),
    "HistoryFunction": ("GET", "/fhir/Patient/{pid}/_history"),
    "TypeHistoryFunction": ("GET", "/fhir/Patient/_history"),
    "SystemHistoryFunction": ("GET", "/fhir/_history"),
    "SearchFunction": ("GET", "/fhir/Patient?phone={phone}"),
    "CompartmentSearchFunction": ("GET", "/fhir/Patient/{pid}/Observation"),
    "EverythingFunction": ("GET", "/fhir/Patient/{pid}/$everything"),
    "BundleFunction": ("POST", "/fhir"),
}
JSON_PATCH = "application/json-patch+json"


def cold_event(client: Client, function: str, n: int) -> dict[str, Any]:
    """A fresh first request for `function` (a new Patient, with an Observation, each time, so that every route
    does real work)."""
    phone = f"+1 666 {n // 10000 % 1000:03d} {n % 10000:04d}"
    patient = client.call("cold setup", "POST", "/fhir/Patient", patient_body(phone, f"cold{n}@example.org"),
                          201).body
    client.call("cold setup", "POST", "/fhir/Observation", observation_body(patient["id"]), 201)
    method, template = COLD_REQUESTS[function]
    path = template.format(pid=patient["id"], phone=phone.replace(" ", ""))
    body: Any = None
    headers: dict[str, str] = {}
    if method == "POST" and path == "/fhir":
        body = transaction_body(phone, n)
    elif method == "POST":
        body = patient_body(phone, f"cold{n}@example.org")
    elif method == "PUT":
        body = revised(patient, gender="other")
    elif method == "PATCH":
        body, headers = [{"op": "replace", "path": "/gender", "value": "other"}], {"Content-Type": JSON_PATCH}
    events = client.capture(method, path, body, headers)
    return events["authorizer" if function == "AuthorizerFunction" else function]


def transaction_body(phone: str, n: int) -> dict[str, Any]:
    """A transaction Bundle of a new Patient and an Observation that references it (urn:uuid)."""
    patient_ref = f"urn:uuid:{uuid.UUID(int=n)}"
    observation = observation_body("placeholder")
    observation["subject"] = {"reference": patient_ref}
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient_ref, "resource": patient_body(phone, f"cold-tx{n}@example.org"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
    ]}


def cold_environment(workdir: Path, code_dir: Path | None = None) -> dict[str, str]:
    """The stack's environment, with bytecode caching on, into a private cache (never into the repo); with
    `code_dir`, Lambda's LAMBDA_TASK_ROOT too, as in a deployed function (tracing stays off: the stack sets
    POWERTOOLS_TRACE_DISABLED)."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if code_dir is not None:
        env["LAMBDA_TASK_ROOT"] = str(code_dir)
    return env


def run_cold_child(stack: LocalStack, function: str, event: dict[str, Any], workdir: Path,
                   python_flags: tuple[str, ...] = (), prime: bool = False) -> dict[str, Any]:
    event_file = workdir / f"event-{uuid.uuid4().hex}.json"
    event_file.write_text(json.dumps(event))
    command = [sys.executable, *python_flags, "-m", "esus_dev.bench", "--cold-child", function,
               "--event", str(event_file), *(["--prime"] if prime else [])]
    if function == BARE:
        code_dir, handler = BARE_CODE_DIR, "app.handler"
    else:
        spec = next(s for s in stack.template.functions() if s.logical_id == function)
        code_dir, handler = REPO / spec.code_uri, spec.handler
    command += ["--code-dir", str(code_dir), "--handler", handler]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True,  # noqa: S603
                               env=cold_environment(workdir, code_dir), cwd=REPO, timeout=120, check=False)
    process_s = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"cold child {function} failed:\n{completed.stderr[-2000:]}")
    result = dict(json.loads(completed.stdout.strip().splitlines()[-1]))
    if int(result["status"]) >= 400:
        raise RuntimeError(f"cold child {function}: first request answered {result['status']}")
    result["process_s"] = process_s
    result["stderr"] = completed.stderr
    return result


def init_s(result: dict[str, Any]) -> float:
    return float(result["import_s"] + result["first_request_s"])


def own_init_s(result: dict[str, Any]) -> float:
    """Init without the wall time spent waiting on AWS (moto here): the function's own work."""
    return init_s(result) - float(result["aws_s"])


def cold_phase(client: Client, report: Report, repeats: int) -> None:
    """Round 0 fills the bytecode and disk caches and is discarded; rounds 1..repeats are measured. Each
    function's child runs right next to a bare handler's child (alternating which goes first), and the ratios
    are medians of these pairs, so the machine's drift hits both sides alike. A third child per function and
    round primes like a SnapStart snapshot before its (timed) first request. Every child starts from freshly
    recreated tables holding only the Patient its request needs."""
    import boto3

    janitor = TableJanitor(boto3.session.Session().client("dynamodb"), client.stack)
    functions = list(COLD_REQUESTS)
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {f: [] for f in functions}
    primed: dict[str, list[dict[str, Any]]] = {f: [] for f in functions}
    counter = iter(range(1_000_000))

    def child(function: str, prime: bool = False, flags: tuple[str, ...] = ()) -> dict[str, Any]:
        janitor.reset()
        source = "ReadFunction" if function == BARE else function
        event = cold_event(client, source, next(counter))
        return run_cold_child(client.stack, function, event, Path(tmp), flags, prime)

    with tempfile.TemporaryDirectory(prefix="esus-bench-cold-") as tmp:
        for r in range(repeats + 1):
            for n, function in enumerate(functions):
                if (r + n) % 2:
                    bare, measured = child(BARE), child(function)
                else:
                    measured, bare = child(function), child(BARE)
                after_priming = child(function, prime=True) if function != "AuthorizerFunction" else None
                if r:
                    runs[function].append((measured, bare))
                    if after_priming:
                        primed[function].append(after_priming)
        traced = child("CreateFunction", flags=("-X", "importtime"))
        report.first_request_imports = first_request_breakdown(traced["stderr"])
    client.samples.clear()
    bare_runs = [b for pairs in runs.values() for _, b in pairs]
    for function in [*functions, BARE]:
        pairs = runs.get(function) or [(b, b) for b in bare_runs]
        results = [m for m, _ in pairs]
        method, path = COLD_REQUESTS["ReadFunction" if function == BARE else function]
        report.cold.append(ColdRow(
            function=function,
            request="TOKEN (JWT verify)" if function == "AuthorizerFunction" else f"{method} {path}",
            import_ms=statistics.median(r["import_s"] for r in results) * 1000,
            first_request_ms=statistics.median(r["first_request_s"] for r in results) * 1000,
            first_request_aws_ms=statistics.median(r["aws_s"] for r in results) * 1000,
            process_ms=statistics.median(r["process_s"] for r in results) * 1000,
            aws_calls=", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(results[-1]["calls"].items())) or "-",
            status=int(results[-1]["status"]),
            ratio=statistics.median(init_s(m) / init_s(b) for m, b in pairs),
            own_ratio=statistics.median(own_init_s(m) / own_init_s(b) for m, b in pairs),
            import_ratio=statistics.median(m["import_s"] / b["import_s"] for m, b in pairs),
            primed_first_request_ms=(statistics.median(p["first_request_s"] + p["restore_s"] for p in primed[function])
                                     * 1000 if primed.get(function) else None),
            gc_import_ms=statistics.median(r["gc_import_s"] for r in results) * 1000,
            gc_first_request_ms=statistics.median(r["gc_first_request_s"] for r in results) * 1000,
            kept_garbage=max(int(r["kept_garbage"]) for r in results),
        ))


def first_request_breakdown(importtime_log: str, top: int = 8) -> list[tuple[str, float]]:
    """The modules the first request imports (the part of a `-X importtime` log after the child's mark): self
    time per top-level package, largest first (ms). Modules loaded with importlib.import_module (fhir.resources
    loads each model class that way) are not in the log."""
    _, _, after = importtime_log.partition(FIRST_REQUEST_MARK)
    return package_self_times(after)[:top]


def cold_child(function: str, event_file: str, code_dir: str | None, handler_setting: str | None,
               prime: bool = False) -> None:
    """Runs in the fresh subprocess: import (timed), then the first request (timed, AWS calls counted). With
    `prime`, what a SnapStart snapshot would hold comes in between, untimed (esus.snapstart.prime), and the
    after-restore hook is timed with the request (`restore_s`)."""
    event = json.loads(Path(event_file).read_text())
    assert code_dir and handler_setting
    pauses = CollectorPauses()
    started = time.perf_counter()
    handler = load_handler(Path(code_dir), handler_setting, f"esus_fn_{function}")
    imported = time.perf_counter()
    gc_import_s = pauses.take()
    restore_s = 0.0
    if prime:
        from esus import snapstart

        snapstart.prime()
        restoring = time.perf_counter()
        snapstart.after_restore()
        restore_s = time.perf_counter() - restoring
    recorder = install_default_session_recorder()  # boto3 is imported by now; no client exists yet
    print(FIRST_REQUEST_MARK, file=sys.stderr, flush=True)
    before_request = time.perf_counter()
    try:
        response = handler(event, LambdaContext("bench-cold"))
        status = int(response.get("statusCode", 200)) if isinstance(response, dict) else 200
    except Exception as exc:  # the authorizer raises "Unauthorized" by contract
        status = 401 if str(exc) == "Unauthorized" else 500
    done = time.perf_counter()
    gc_first_request_s = pauses.take()
    calls = recorder.take()
    # What esus.coldstart's freezes kept that a collection would have freed (garbage in reference cycles): what a
    # full collection finds once the frozen objects are back, beyond what it finds before.
    gc.collect()
    gc.unfreeze()
    kept_garbage = gc.collect()
    print(json.dumps({
        "import_s": imported - started, "first_request_s": done - before_request, "status": status,
        "calls": dict(call_counts(calls)), "aws_s": waiting_seconds(calls), "restore_s": restore_s,
        "gc_import_s": gc_import_s, "gc_first_request_s": gc_first_request_s, "kept_garbage": kept_garbage,
    }))


class CollectorPauses:
    """Wall time spent in CPython's cyclic garbage collector (gc.callbacks), taken phase by phase."""

    def __init__(self) -> None:
        self._started = 0.0
        self._total = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._total += time.perf_counter() - self._started

    def take(self) -> float:
        total, self._total = self._total, 0.0
        return total
