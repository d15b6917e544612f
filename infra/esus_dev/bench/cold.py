"""Cold phase: import + first request of each function in a fresh subprocess, against a bare handler.

The child runs `python -m esus_dev.bench --cold-child ...`: every module it imports before timing the
handler's import keeps stdlib-only top-level imports, so the timing is not flattered."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esus_dev.bench import REPO
from esus_dev.bench.gateway import Client, TableJanitor
from esus_dev.bench.recorder import call_counts, install_default_session_recorder
from esus_dev.bench.report import BARE, ColdRow, Report
from esus_dev.bench.scenario import patient_body, revised
from esus_dev.localstack.lambda_runtime import LambdaContext, load_handler

if TYPE_CHECKING:
    from esus_dev.localstack.stack import LocalStack

COLD_REQUESTS: dict[str, tuple[str, str]] = {
    "MetadataFunction": ("GET", "/fhir/metadata"),
    "AuthorizerFunction": ("GET", "/fhir/Patient/{pid}"),
    "CreateFunction": ("POST", "/fhir/Patient"),
    "ReadFunction": ("GET", "/fhir/Patient/{pid}"),
    "VreadFunction": ("GET", "/fhir/Patient/{pid}/_history/1"),
    "UpdateFunction": ("PUT", "/fhir/Patient/{pid}"),
    "DeleteFunction": ("DELETE", "/fhir/Patient/{pid}"),
    "HistoryFunction": ("GET", "/fhir/Patient/{pid}/_history"),
    "SearchFunction": ("GET", "/fhir/Patient?phone={phone}"),
}


def cold_event(client: Client, function: str, n: int) -> dict[str, Any]:
    """A fresh first request for `function` (a new Patient each time, so delete/update do real work)."""
    phone = f"+1 666 {n // 10000 % 1000:03d} {n % 10000:04d}"
    patient = client.call("cold setup", "POST", "/fhir/Patient", patient_body(phone, f"cold{n}@example.org"),
                          201).body
    method, template = COLD_REQUESTS[function]
    path = template.format(pid=patient["id"], phone=phone.replace(" ", ""))
    body = None
    if method == "POST":
        body = patient_body(phone, f"cold{n}@example.org")
    elif method == "PUT":
        body = revised(patient, gender="other")
    events = client.capture(method, path, body)
    return events["authorizer" if function == "AuthorizerFunction" else function]


def cold_environment(workdir: Path) -> dict[str, str]:
    """The stack's environment, with bytecode caching on, into a private cache (never into the repo)."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_cold_child(stack: LocalStack, function: str, event: dict[str, Any], workdir: Path,
                   python_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    event_file = workdir / f"event-{uuid.uuid4().hex}.json"
    event_file.write_text(json.dumps(event))
    command = [sys.executable, *python_flags, "-m", "esus_dev.bench", "--cold-child", function,
               "--event", str(event_file)]
    if function != BARE:
        spec = next(s for s in stack.template.functions() if s.logical_id == function)
        command += ["--code-dir", str(REPO / spec.code_uri), "--handler", spec.handler]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=cold_environment(workdir),  # noqa: S603
                               cwd=REPO, timeout=120, check=False)
    process_s = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"cold child {function} failed:\n{completed.stderr[-2000:]}")
    result = dict(json.loads(completed.stdout.strip().splitlines()[-1]))
    if int(result["status"]) >= 400:
        raise RuntimeError(f"cold child {function}: first request answered {result['status']}")
    result["process_s"] = process_s
    result["stderr"] = completed.stderr
    return result


def import_breakdown(importtime_log: str, top: int = 8) -> list[tuple[str, float]]:
    """`python -X importtime` output -> self time per top-level package, largest first (ms)."""
    totals: Counter[str] = Counter()
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        totals[name.split(".")[0]] += int(self_us)
    return [(name, us / 1000) for name, us in totals.most_common(top)]


def cold_phase(client: Client, report: Report, repeats: int) -> None:
    """Round 0 fills the bytecode and disk caches and is discarded; rounds 1..repeats are measured.
    Every child starts from freshly recreated tables holding only the Patient its request needs."""
    import boto3

    janitor = TableJanitor(boto3.session.Session().client("dynamodb"), client.stack)
    functions = [*COLD_REQUESTS, BARE]
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in functions}
    with tempfile.TemporaryDirectory(prefix="esus-bench-cold-") as tmp:
        for r in range(repeats + 1):
            for n, function in enumerate(functions):
                source = "ReadFunction" if function == BARE else function
                janitor.reset()
                event = cold_event(client, source, r * len(functions) + n)
                result = run_cold_child(client.stack, function, event, Path(tmp))
                if r:
                    runs[function].append(result)
        event = cold_event(client, "CreateFunction", (repeats + 1) * len(functions))
        traced = run_cold_child(client.stack, "CreateFunction", event, Path(tmp), ("-X", "importtime"))
        report.import_breakdown = import_breakdown(traced["stderr"])
    client.samples.clear()
    for function in functions:
        results = runs[function]
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
        ))


def bare_handler() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The baseline: a Powertools REST resolver whose one route makes one GetItem (client built lazily,
    on first request, as the product does)."""
    import boto3
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    app = APIGatewayRestResolver()
    clients: dict[str, Any] = {}

    @app.get("/fhir/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str) -> dict[str, Any]:
        ddb = clients.get("ddb") or clients.setdefault("ddb", boto3.client("dynamodb"))
        key = {"pk": {"S": f"bare|{resource_type}|{resource_id}"}}
        item = ddb.get_item(TableName=os.environ["ESUS_RESOURCES_TABLE"], Key=key, ConsistentRead=True)
        return {"found": "Item" in item}

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return dict(app.resolve(event, context))

    return handler


def cold_child(function: str, event_file: str, code_dir: str | None, handler_setting: str | None) -> None:
    """Runs in the fresh subprocess: import (timed), then the first request (timed, AWS calls counted)."""
    event = json.loads(Path(event_file).read_text())
    started = time.perf_counter()
    if function == BARE:
        handler = bare_handler()
    else:
        assert code_dir and handler_setting
        handler = load_handler(Path(code_dir), handler_setting, f"esus_fn_{function}")
    imported = time.perf_counter()
    recorder = install_default_session_recorder()  # boto3 is imported by now; no client exists yet
    before_request = time.perf_counter()
    try:
        response = handler(event, LambdaContext("bench-cold"))
        status = int(response.get("statusCode", 200)) if isinstance(response, dict) else 200
    except Exception as exc:  # the authorizer raises "Unauthorized" by contract
        status = 401 if str(exc) == "Unauthorized" else 500
    done = time.perf_counter()
    calls = recorder.take()
    print(json.dumps({
        "import_s": imported - started, "first_request_s": done - before_request, "status": status,
        "calls": dict(call_counts(calls)), "aws_s": sum(c.seconds for c in calls),
    }))
