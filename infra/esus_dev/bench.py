"""`make bench`: what one ESUS request costs, measured in-process against the local stack.

    python -m esus_dev.bench [--iterations N] [--cold-repeats R] [--write docs/BENCH.md]

Everything runs on this machine: the local stack (template.yaml routes, the real authorizer and route
functions) on an embedded moto server, driven through LocalStack.handle without an HTTP socket.

1. DynamoDB round trips per interaction, counted with botocore events on boto3's default session (every
   client the product builds comes from it), plus Secrets Manager / KMS calls on warm requests.
2. Warm handler time per interaction (median, p95) and its ratio to the raw boto3 calls the handler
   made: after each iteration the tables are recreated and the iteration's DynamoDB calls are replayed,
   in order, with a plain client on the same moto endpoint under a replay tenant, so every read and
   conditional write meets the same state as the handler's did.
3. Cold init per function in a fresh subprocess: import + first request, as a ratio to a bare handler
   that imports only boto3 and aws_lambda_powertools and makes one GetItem.
4. Crypto throughput: field encryption/decryption, blind-index tokens, and the PHI codec's cost per
   resource next to plain json.dumps/loads.

moto on loopback is not DynamoDB: absolute milliseconds only describe this machine; round-trip counts
and the ratios measured within one run are what carry over.

Top-level imports are stdlib only: the same module is the cold-start child process, whose import
timing must not be flattered by modules the parent already loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esus_dev.localstack import GatewayResult, LocalStack

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared"))
EXAMPLES = SHARED_DATA / "fhir-examples" / "r4"
FHIR_JSON = "application/fhir+json"
TOKEN_EVENT = "TOKEN"  # noqa: S105 (the authorizer event type, not a secret)
BARE = "bare"
_CALL_KEY = "esus_bench_call"

DEFAULT_ITERATIONS = 50
DEFAULT_WARMUP = 3
DEFAULT_COLD_REPEATS = 3
DEFAULT_CRYPTO_SECONDS = 0.4


# ====================================================================================== result rows
@dataclass(frozen=True)
class Machine:
    cpu: str
    logical_cpus: int
    usable_cpus: int
    memory: str
    python: str
    system: str
    packages: str


@dataclass
class AwsCall:
    service: str
    operation: str
    params: dict[str, Any]
    seconds: float = 0.0
    attempts: int = 0

    @property
    def label(self) -> str:
        if self.operation == "TransactWriteItems":
            return f"TransactWriteItems[{len(self.params.get('TransactItems', []))}]"
        if self.operation == "BatchGetItem":
            keys = sum(len(t.get("Keys", [])) for t in self.params.get("RequestItems", {}).values())
            return f"BatchGetItem[{keys}]"
        return self.operation


@dataclass(frozen=True)
class Interaction:
    name: str
    function: str
    target: int | None = None
    at_most: bool = False
    design: str = ""  # why the count is what it is, shown when it differs from the target


@dataclass
class Sample:
    """One warm request: route handler time, authorizer time and the AWS calls the handler made."""

    interaction: str
    handler_s: float
    authorizer_s: float
    calls: list[AwsCall]
    raw_s: float = 0.0

    @property
    def aws_s(self) -> float:
        return sum(c.seconds for c in self.calls)


@dataclass(frozen=True)
class RoundTripRow:
    interaction: Interaction
    counts: tuple[int, ...]  # DynamoDB calls per request, over every warm request
    http_attempts: tuple[int, ...]
    ops: str
    other_services: int

    @property
    def measured(self) -> str:
        low, high = min(self.counts), max(self.counts)
        return str(low) if low == high else f"{low}-{high}"

    @property
    def verdict(self) -> str:
        target = self.interaction.target
        if target is None:
            return "no target"
        worst = max(self.counts)
        return "meets target" if worst <= target else f"ABOVE target (+{worst - target})"

    @property
    def target_text(self) -> str:
        target = self.interaction.target
        if target is None:
            return "-"
        return f"<= {target}" if self.interaction.at_most else str(target)


@dataclass(frozen=True)
class TimingRow:
    interaction: str
    function: str
    n: int
    handler_median_ms: float
    handler_p95_ms: float
    in_request_aws_ms: float
    raw_median_ms: float
    raw_p95_ms: float
    ratio: float  # median over requests of handler / raw (paired: same request, measured back to back)
    outside_aws_ms: float  # median over requests of handler time minus the time inside its boto3 calls


@dataclass(frozen=True)
class ColdRow:
    function: str
    request: str
    import_ms: float
    first_request_ms: float
    first_request_aws_ms: float
    process_ms: float
    aws_calls: str
    status: int

    @property
    def init_ms(self) -> float:
        return self.import_ms + self.first_request_ms


@dataclass(frozen=True)
class CryptoRow:
    operation: str
    detail: str
    per_second: float

    @property
    def micros(self) -> float:
        return 1e6 / self.per_second


@dataclass
class Report:
    machine: Machine
    settings: dict[str, str]
    round_trips: list[RoundTripRow] = field(default_factory=list)
    warm_requests: int = 0
    warm_secret_calls: Counter[str] = field(default_factory=Counter)
    first_request_calls: Counter[str] = field(default_factory=Counter)
    timings: list[TimingRow] = field(default_factory=list)
    authorizer_ms: tuple[float, float] = (0.0, 0.0)
    cold: list[ColdRow] = field(default_factory=list)
    import_breakdown: list[tuple[str, float]] = field(default_factory=list)  # (top-level package, ms self time)
    crypto: list[CryptoRow] = field(default_factory=list)
    codec_overhead_us: float = 0.0
    codec_detail: str = ""
    elapsed_s: float = 0.0
    load_start: str = field(default_factory=lambda: load_average())
    load_end: str = ""


INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("create Patient", "CreateFunction", 1),
    Interaction("create Observation", "CreateFunction", 1),
    Interaction("read Patient", "ReadFunction", 1),
    Interaction("vread Patient", "VreadFunction", 1),
    Interaction("update Patient, If-Match", "UpdateFunction", 1, design=(
        "by design: Patient has hashed (blind-index) search items, so the current version's index refs are "
        "read first and the stale ones deleted in the same transaction; types without hashed indexes "
        "(Observation) make the single conditional write")),
    Interaction("update Observation, If-Match", "UpdateFunction", 1),
    Interaction("update Patient, no If-Match", "UpdateFunction", 2),
    Interaction("update Observation, no If-Match", "UpdateFunction", 2),
    Interaction("history page (3 versions)", "HistoryFunction", 1),
    Interaction("search Patient by phone", "SearchFunction", design=(
        "one keys-only Query per blind token (per live root-key version) + one BatchGetItem for the page")),
    Interaction("create Provenance", "CreateFunction", design="one TransactWriteItems (record + its index items)"),
    Interaction("search Provenance by target", "SearchFunction", design=(
        "one keys-only Query per reference value + one BatchGetItem for the page")),
    Interaction("delete Patient", "DeleteFunction", 2, at_most=True),
)


# ====================================================================================== machine
def describe_machine() -> Machine:
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = info.get("model name", platform.processor() or "unknown")
    if info.get("cpu cores"):
        cpu += f" ({info['cpu cores']} cores per socket reported)"
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    names = ("boto3", "botocore", "moto", "aws-lambda-powertools", "cryptography", "fhir.resources", "pydantic")
    packages = ", ".join(f"{n} {_version(n)}" for n in names)
    return Machine(
        cpu=cpu, logical_cpus=os.cpu_count() or 0, usable_cpus=usable, memory=memory,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        system=f"{platform.system()} {platform.release()} {platform.machine()}", packages=packages,
    )


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


# ====================================================================================== AWS call recording
class AwsRecorder:
    """Every AWS API call made through clients of one botocore event emitter.

    provide-client-params (the first event of an API call) opens a call, before-send counts its HTTP
    attempts (retries included), after-call / after-call-error closes it. Handlers return None, as
    botocore requires for these events to leave the call untouched. Params are kept by reference
    (not copied) so recording costs the handler next to nothing.
    """

    def __init__(self) -> None:
        self.calls: list[AwsCall] = []

    def install(self, events: Any) -> None:
        events.register("provide-client-params", self._start)
        events.register("before-send", self._send)
        events.register("after-call", self._end)
        events.register("after-call-error", self._end)

    def take(self) -> list[AwsCall]:
        calls, self.calls = self.calls, []
        return calls

    def _start(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        call = AwsCall(model.service_model.service_name, model.name, params)
        context[_CALL_KEY] = (call, time.perf_counter())
        self.calls.append(call)

    def _send(self, request: Any, **_: Any) -> None:
        entry = (getattr(request, "context", None) or {}).get(_CALL_KEY)
        if entry:
            entry[0].attempts += 1

    def _end(self, context: dict[str, Any], **_: Any) -> None:
        entry = context.pop(_CALL_KEY, None)
        if entry:
            call, started = entry
            call.seconds = time.perf_counter() - started


def install_default_session_recorder() -> AwsRecorder:
    """Hook boto3's default session before any client exists: clients copy the session's handlers."""
    import boto3

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    recorder = AwsRecorder()
    recorder.install(boto3.DEFAULT_SESSION.events)
    return recorder


def call_counts(calls: Iterable[AwsCall]) -> Counter[str]:
    return Counter(f"{c.service}:{c.operation}" for c in calls)


# ====================================================================================== the in-process gateway
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

    def capture(self, method: str, path: str, body: Any = None) -> dict[str, dict[str, Any]]:
        """The events API Gateway would hand the authorizer and the route, without running the route."""
        self.timer.captured = []
        try:
            raw = json.dumps(body).encode() if body is not None else b""
            result: GatewayResult = self.stack.handle(method, path, self.headers(), raw, "bench.local")
            if result.status != 200:
                raise RuntimeError(f"capture {method} {path}: {result.status} {result.body[:200]!r}")
            events = {"authorizer" if e.get("type") == TOKEN_EVENT else logical_id: e
                      for logical_id, e in self.timer.captured}
        finally:
            self.timer.captured = None
        return events


# ====================================================================================== request bodies
def load_example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / name).read_text(encoding="utf-8")))


def patient_body(phone: str, email: str) -> dict[str, Any]:
    """The specification's Patient example with a unique phone (so a phone search finds exactly one)."""
    patient = load_example("Patient-example.json")
    patient.pop("id", None)
    patient["telecom"] = [
        {"system": "phone", "value": phone, "use": "mobile"},
        {"system": "email", "value": email, "use": "home"},
    ]
    return patient


def observation_body(patient_id: str) -> dict[str, Any]:
    observation = load_example("Observation-example.json")
    observation.pop("id", None)
    observation["subject"] = {"reference": f"Patient/{patient_id}"}
    return observation


def provenance_body(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"Patient/{patient_id}"}],
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": "UPDATE"}]},
        "agent": [{"who": {"reference": "Practitioner/bench"}, "onBehalfOf": {"reference": "Organization/bench"}}],
    }


def revised(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**{k: v for k, v in resource.items() if k != "meta"}, **changes}


# ====================================================================================== one scenario iteration
def run_iteration(client: Client, i: int) -> None:
    """Every measured interaction once, on fresh resources. Interaction names match INTERACTIONS."""
    phone = f"+1 555 {i // 10000 % 1000:03d} {i % 10000:04d}"
    patient = client.call("create Patient", "POST", "/fhir/Patient",
                          patient_body(phone, f"bench{i}@example.org"), 201).body
    pid = patient["id"]
    observation = client.call("create Observation", "POST", "/fhir/Observation", observation_body(pid), 201).body
    oid = observation["id"]
    client.call("read Patient", "GET", f"/fhir/Patient/{pid}")
    client.call("vread Patient", "GET", f"/fhir/Patient/{pid}/_history/1")
    patient = client.call("update Patient, If-Match", "PUT", f"/fhir/Patient/{pid}",
                          revised(patient, gender="female"), headers={"If-Match": 'W/"1"'}).body
    observation = client.call("update Observation, If-Match", "PUT", f"/fhir/Observation/{oid}",
                              revised(observation, status="amended"), headers={"If-Match": 'W/"1"'}).body
    client.call("update Patient, no If-Match", "PUT", f"/fhir/Patient/{pid}", revised(patient, gender="other"))
    client.call("update Observation, no If-Match", "PUT", f"/fhir/Observation/{oid}",
                revised(observation, status="corrected"))
    history = client.call("history page (3 versions)", "GET", f"/fhir/Patient/{pid}/_history").body
    _expect(len(history["entry"]) == 3, f"history of {pid} has {len(history['entry'])} entries, expected 3")
    found = client.call("search Patient by phone", "GET", f"/fhir/Patient?phone={phone.replace(' ', '')}").body
    _expect(found["total"] == 1, f"phone search found {found['total']} patients, expected 1")
    client.call("create Provenance", "POST", "/fhir/Provenance", provenance_body(pid), 201)
    provenance = client.call("search Provenance by target", "GET", f"/fhir/Provenance?target=Patient/{pid}").body
    _expect(provenance["total"] == 4, f"Provenance search found {provenance['total']}, expected 4")
    client.call("delete Patient", "DELETE", f"/fhir/Patient/{pid}", expect=204)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


# ====================================================================================== raw boto3 replay
def rewrite_tenant(value: Any, old: str, new: str) -> Any:
    """The same call under another tenant: every key begins with `tenant|`, nothing else does."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, dict):
        return {k: rewrite_tenant(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_tenant(v, old, new) for v in value]
    return value


class Replayer:
    """Re-issues an iteration's DynamoDB calls, in order, with a plain client (not recorded), under a
    replay tenant, on tables reset to the state the handlers started from: every conditional write and
    every read meets the same state (and moto the same amount of data) as the handler's did."""

    def __init__(self, ddb: Any, tenant: str) -> None:
        from botocore import xform_name

        self._ddb = ddb
        self._xform = xform_name
        self._prefix = f"{tenant}|"

    def replay(self, samples: list[Sample], iteration: int) -> None:
        """Sets Sample.raw_s: the time of that request's calls, issued directly."""
        replay_prefix = f"{self._prefix[:-1]}-r{iteration}|"
        for sample in samples:
            prepared = []
            for call in sample.calls:
                if call.service != "dynamodb":
                    continue
                params = rewrite_tenant(call.params, self._prefix, replay_prefix)
                if "ClientRequestToken" in params:
                    params["ClientRequestToken"] = str(uuid.uuid4())
                prepared.append((getattr(self._ddb, self._xform(call.operation)), params))
            started = time.perf_counter()
            for method, params in prepared:
                method(**params)
            sample.raw_s = time.perf_counter() - started


class TableJanitor:
    """Recreates the stack's tables, empty, between iterations (untimed).

    moto's TransactWriteItems deep-copies every table it touches, once per transaction item, to roll
    back on failure, and moto keeps a (possibly empty) partition for every hash key ever written: a
    transaction's cost grows with everything stored before it. Fresh tables keep that cost the same for
    every iteration, and the same for the handler and for the raw replay.
    """

    def __init__(self, ddb: Any, stack: LocalStack) -> None:
        self._ddb = ddb
        self._stack = stack
        names = stack.physical_names()
        self._tables = [names[lid] for lid in stack.template.of_type("AWS::DynamoDB::Table")]

    def reset(self) -> None:
        for table in self._tables:
            self._ddb.delete_table(TableName=table)
        self._stack.create_resources()


# ====================================================================================== summaries
def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else math.nan


def p95_ms(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] * 1000


def round_trip_rows(samples: list[Sample]) -> list[RoundTripRow]:
    rows = []
    for interaction in INTERACTIONS:
        mine = [s for s in samples if s.interaction == interaction.name]
        dynamo = [[c for c in s.calls if c.service == "dynamodb"] for s in mine]
        ops = Counter(" + ".join(c.label for c in calls) for calls in dynamo).most_common(1)[0][0]
        rows.append(RoundTripRow(
            interaction=interaction,
            counts=tuple(len(calls) for calls in dynamo),
            http_attempts=tuple(sum(c.attempts for c in calls) for calls in dynamo),
            ops=ops,
            other_services=sum(1 for s in mine for c in s.calls if c.service != "dynamodb"),
        ))
    return rows


def timing_rows(samples: list[Sample]) -> list[TimingRow]:
    rows = []
    for interaction in INTERACTIONS:
        mine = [s for s in samples if s.interaction == interaction.name]
        rows.append(TimingRow(
            interaction=interaction.name, function=interaction.function, n=len(mine),
            handler_median_ms=median_ms([s.handler_s for s in mine]),
            handler_p95_ms=p95_ms([s.handler_s for s in mine]),
            in_request_aws_ms=median_ms([s.aws_s for s in mine]),
            raw_median_ms=median_ms([s.raw_s for s in mine]),
            raw_p95_ms=p95_ms([s.raw_s for s in mine]),
            ratio=statistics.median(s.handler_s / s.raw_s for s in mine if s.raw_s) if mine else math.nan,
            outside_aws_ms=median_ms([s.handler_s - s.aws_s for s in mine]),
        ))
    return rows


# ====================================================================================== warm phase
def start_stack(dev_dir: Path) -> tuple[LocalStack, AwsRecorder]:
    os.environ["ESUS_DEV_DIR"] = str(dev_dir)
    os.environ.pop("AWS_ENDPOINT_URL", None)  # always our own embedded moto, never a shared endpoint
    os.environ["ESUS_ROOT_KEY_MAX_AGE_SECONDS"] = "300"  # the production default
    for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED"):
        os.environ[name] = "true"
    recorder = install_default_session_recorder()
    from esus_dev.localstack import LocalStack

    stack = LocalStack(REPO, prefix="esus-bench")
    stack.start()
    recorder.take()
    return stack, recorder


def new_client(stack: LocalStack, recorder: AwsRecorder) -> Client:
    from esus_dev.devkeys import mint_token

    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    token = mint_token(tenant, "user/*.*", "Practitioner/bench", lifetime_seconds=3600)
    return Client(stack, recorder, tenant, token)


def warm_phase(client: Client, report: Report, iterations: int, warmup: int) -> None:
    import boto3

    from esus.container import AWS_CONFIG

    run_iteration(client, 0)  # the process's first requests: imports, wiring, root key
    report.first_request_calls = call_counts(c for s in client.samples for c in s.calls
                                             if c.service != "dynamodb")
    raw_ddb = boto3.session.Session().client("dynamodb", config=AWS_CONFIG)  # not recorded
    janitor = TableJanitor(raw_ddb, client.stack)
    replayer = Replayer(raw_ddb, client.tenant)
    for i in range(1, warmup):
        run_iteration(client, i)
    client.samples.clear()
    measured: list[Sample] = []
    for i in range(warmup, warmup + iterations):
        janitor.reset()
        run_iteration(client, i)
        janitor.reset()
        replayer.replay(client.samples, i)
        measured.extend(client.samples)
        client.samples.clear()
    janitor.reset()
    report.round_trips = round_trip_rows(measured)
    report.timings = timing_rows(measured)
    report.warm_requests = len(measured)
    report.warm_secret_calls = call_counts(c for s in measured for c in s.calls if c.service != "dynamodb")
    auth = [s.authorizer_s for s in measured]
    report.authorizer_ms = (median_ms(auth), p95_ms(auth))


# ====================================================================================== cold phase
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
    from esus_dev.lambda_runtime import LambdaContext, load_handler  # stdlib only

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


# ====================================================================================== crypto phase
def rate(operation: Callable[[], Any], seconds: float) -> float:
    """Operations per second: batches until `seconds` have passed (after a short warm-up)."""
    for _ in range(50):
        operation()
    count, batch = 0, 200
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def crypto_phase(report: Report, seconds: float) -> None:
    from esus.crypto import BlindIndex, FieldCipher, FieldContext, KeyRing, RootKeys
    from esus.phi import ResourceCodec

    secret = RootKeys.generate().serialize()
    keyring = KeyRing(lambda: secret, 3600)
    cipher = FieldCipher(keyring)
    blind = BlindIndex(keyring, {"phone": 16})
    codec = ResourceCodec(cipher)
    ctx = FieldContext("bench", "Patient", "0f8c7a5e-7a40-4d3c-9a8e-1b2c3d4e5f60", 1)
    field_plain = json.dumps([{"system": "phone", "value": "(03) 5555 6473", "use": "work"}]).encode()
    envelope = cipher.encrypt(ctx, "telecom", field_plain)
    patient = load_example("Patient-example.json")
    patient = {**patient, "id": ctx.resource_id, "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000Z"}}
    doc, sealed = codec.encode(ctx, patient)
    plain_json = json.dumps(patient, ensure_ascii=False, separators=(",", ":"))

    def codec_roundtrip() -> None:
        codec.decode(ctx, *codec.encode(ctx, patient))

    def json_roundtrip() -> None:
        json.loads(json.dumps(patient, ensure_ascii=False, separators=(",", ":")))

    field_detail = f"{len(field_plain)} B plaintext, AES-256-GCM envelope {len(envelope)} B"
    patient_detail = f"Patient-example.json, {len(plain_json)} B JSON, {len(sealed)} sealed elements"
    rows = [
        CryptoRow("FieldCipher.encrypt", field_detail, rate(lambda: cipher.encrypt(ctx, "telecom", field_plain),
                                                            seconds)),
        CryptoRow("FieldCipher.decrypt", field_detail, rate(lambda: cipher.decrypt(ctx, "telecom", envelope),
                                                            seconds)),
        CryptoRow("BlindIndex.token", "phone, HMAC-SHA256 truncated to 16 bits",
                  rate(lambda: blind.token("bench", "phone", "0355556473"), seconds)),
        CryptoRow("ResourceCodec.encode", patient_detail, rate(lambda: codec.encode(ctx, patient), seconds)),
        CryptoRow("ResourceCodec.decode", patient_detail, rate(lambda: codec.decode(ctx, doc, sealed), seconds)),
        CryptoRow("ResourceCodec.encode + decode", patient_detail, rate(codec_roundtrip, seconds)),
        CryptoRow("json.dumps + json.loads (no encryption)", patient_detail, rate(json_roundtrip, seconds)),
    ]
    report.crypto = rows
    report.codec_overhead_us = rows[5].micros - rows[6].micros
    report.codec_detail = patient_detail


# ====================================================================================== rendering
def render(report: Report) -> str:
    return "\n".join([
        *render_header(report),
        *render_round_trips(report),
        *render_timings(report),
        *render_cold(report),
        *render_crypto(report),
        *render_findings(report),
    ]) + "\n"


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |", *(f"| {' | '.join(r)} |" for r in rows)]


def render_header(report: Report) -> list[str]:
    m = report.machine
    return [
        "# ESUS benchmark",
        "",
        f"Generated by `{report.settings['command']}` on {report.settings['date']} "
        f"in {report.elapsed_s:.0f} s. Regenerate with `make bench` "
        "(`.venv/bin/python -m esus_dev.bench --write docs/BENCH.md`).",
        "",
        "Everything is measured in-process on this machine: the local stack (routes, authorizer and the real "
        "route functions from template.yaml) against an embedded moto server on loopback, driven through "
        "`LocalStack.handle` without an HTTP socket. moto is not DynamoDB: absolute milliseconds describe "
        "this machine and moto only. The round-trip counts carry over to AWS unchanged, and the ratios "
        "(measured side by side in one run) are the meaningful timing numbers.",
        "",
        "## Machine",
        "",
        *table(["", ""], [
            ["CPU", m.cpu],
            ["Cores", f"{m.logical_cpus} logical, {m.usable_cpus} usable by this process"],
            ["Memory", m.memory],
            ["Python", m.python],
            ["System", m.system],
            ["Packages", m.packages],
            ["Load average (1/5/15 min)", f"{report.load_start} at start, {report.load_end} at the end"],
            ["Settings", report.settings["summary"]],
        ]),
        "",
    ]


def render_round_trips(report: Report) -> list[str]:
    rows = [[r.interaction.name, r.target_text, r.measured, r.verdict, f"`{r.ops}`"] for r in report.round_trips]
    secrets = sum(report.warm_secret_calls.values())
    first = ", ".join(f"{k} x{v}" for k, v in sorted(report.first_request_calls.items())) or "none"
    warm = ", ".join(f"{k} x{v}" for k, v in sorted(report.warm_secret_calls.items())) or "none"
    attempts_equal = all(r.http_attempts == r.counts for r in report.round_trips)
    return [
        "## 1. DynamoDB round trips per interaction",
        "",
        "Counted with botocore events (`provide-client-params` / `before-send` / `after-call`) registered on "
        "boto3's default session before the stack starts, so every client the services build is covered; "
        f"each row holds over all {len(report.round_trips[0].counts) if report.round_trips else 0} measured "
        "iterations. `[n]` is the number of items in a TransactWriteItems or keys in a BatchGetItem.",
        "",
        *table(["Interaction", "Target", "Measured", "Result", "Calls"], rows),
        "",
        f"- HTTP attempts equal API calls (no retries): {'yes' if attempts_equal else 'NO'}.",
        f"- Secrets Manager / KMS calls on {report.warm_requests} warm requests: **{secrets}** ({warm}) - "
        f"{'as required (0)' if secrets == 0 else 'EXPECTED 0'}.",
        f"- Non-DynamoDB calls in the process's first iteration (cold wiring), seen by the same hook: {first}. "
        "The root key is re-read once per `ESUS_ROOT_KEY_MAX_AGE_SECONDS` (300 s here, the default), never "
        "per request.",
        "- KMS is never called by the code: DynamoDB and Secrets Manager use the key server-side.",
        "",
    ]


def render_timings(report: Report) -> list[str]:
    rows = [[t.interaction, t.function.removesuffix("Function"), str(t.n), f"{t.handler_median_ms:.2f}",
             f"{t.handler_p95_ms:.2f}", f"{t.in_request_aws_ms:.2f}", f"{t.raw_median_ms:.2f}",
             f"{t.raw_p95_ms:.2f}", f"**{t.ratio:.2f}**", f"{t.outside_aws_ms:.2f}"] for t in report.timings]
    auth_median, auth_p95 = report.authorizer_ms
    return [
        "## 2. Warm handler time",
        "",
        "*Handler* is the route function's `handler(event, context)` alone (timed around `LocalStack.invoke`; "
        "the authorizer is timed separately), warm, one request at a time. *boto3 in request* is the part "
        "of it spent inside boto3 calls. *Raw boto3* re-issues the very same DynamoDB calls of each request "
        "with a plain client on the same moto endpoint: after each iteration the tables are reset and the "
        "iteration's calls are replayed in order under a replay tenant, so every read and conditional write "
        "meets the same state as the handler's did. *Ratio* is the median over requests of handler / raw, "
        "each pair measured within a second of each other, which cancels most of the machine's drift. "
        "*Outside boto3* is the median of handler time minus its boto3 time: the "
        "product's own work per request (routing, auth context, validation, PHI encryption, blind index, "
        "Provenance, response). Tables are recreated empty before every iteration (see notes). Times in ms.",
        "",
        *table(["Interaction", "Function", "n", "Handler median", "Handler p95", "boto3 in request",
                "Raw boto3 median", "Raw boto3 p95", "Ratio", "Outside boto3"], rows, "lllrrrrrrr"),
        "",
        f"- Authorizer (ES256 JWT verification, run on every request here; API Gateway caches its result for "
        f"300 s): median {auth_median:.2f} ms, p95 {auth_p95:.2f} ms.",
        "- Powertools Tracer and Metrics are disabled (as in the local stack); X-Ray tracing in AWS adds to "
        "the handler time.",
        "- moto's TransactWriteItems deep-copies every table it touches, once per transaction item, to be "
        "able to roll back, and keeps an empty partition for every hash key ever written, so a transaction "
        "gets slower with everything stored before it. The bench therefore recreates the tables before "
        "every iteration; without that, create Patient (17 items) went from ~12 ms to over 200 ms within a "
        "dozen iterations on this machine. This is a property of moto (and of the local stack under load), "
        "not of DynamoDB.",
        "",
    ]


def render_cold(report: Report) -> list[str]:
    bare = next((c for c in report.cold if c.function == BARE), None)
    rows = []
    for c in report.cold:
        ratio = f"{c.init_ms / bare.init_ms:.2f}" if bare and bare.init_ms else "-"
        name = "bare (boto3 + Powertools, one GetItem)" if c.function == BARE else c.function
        rows.append([name, c.request, f"{c.import_ms:.0f}", f"{c.first_request_ms:.0f}",
                     f"{c.first_request_aws_ms:.0f}", f"{c.init_ms:.0f}", f"**{ratio}**", f"{c.process_ms:.0f}",
                     str(c.status), c.aws_calls])
    breakdown = ", ".join(f"{name} {ms:.0f}" for name, ms in report.import_breakdown)
    repeats = report.settings["cold_repeats"]
    return [
        "## 3. Cold init per function",
        "",
        f"Each row is the median of {repeats} fresh subprocesses (`python -m esus_dev.bench --cold-child ...`, "
        "same environment, same moto endpoint), after one discarded round that fills the bytecode cache (a "
        "private `PYTHONPYCACHEPREFIX`, as in a deployment that ships `.pyc` files) and the disk cache. "
        "*Import* is loading the function module (its imports included), *first request* is the first "
        "`handler(event, context)` call (building clients, fetching "
        "the root key, the DynamoDB calls); *ratio* compares their sum with the bare handler's. *Process* "
        "is the whole subprocess wall time from the parent (interpreter start and exit included). Times in ms.",
        "",
        *table(["Function", "Request", "Import", "First request", "of which boto3 calls", "Init total",
                "Ratio to bare", "Process", "Status", "AWS calls in first request"], rows, "llrrrrrrll"),
        "",
        "- *of which boto3 calls* is the time inside the first request's AWS calls; the rest of the first "
        "request is building the boto3 clients, deriving keys, loading the FHIR model classes on first "
        "validation, and the handler's own work.",
        f"- Where CreateFunction's import time goes (`python -X importtime`, self time per top-level package, "
        f"ms, one run): {breakdown or 'not measured'}.",
        "",
    ]


def render_crypto(report: Report) -> list[str]:
    rows = [[c.operation, c.detail, f"{c.per_second:,.0f}", f"{c.micros:.1f}"] for c in report.crypto]
    read = next((t for t in report.timings if t.interaction == "read Patient"), None)
    share = (f" - {report.codec_overhead_us / 10 / read.handler_median_ms:.1f}% of a warm read's handler time "
             f"({read.handler_median_ms:.2f} ms)" if read and read.handler_median_ms else "")
    return [
        "## 4. Crypto throughput",
        "",
        f"Single thread, each operation repeated for {report.settings['crypto_seconds']} s; keys are derived "
        "once (HKDF) and cached, as in a warm container.",
        "",
        *table(["Operation", "Input", "Per second", "us per op"], rows, "llrr"),
        "",
        f"- Encryption overhead per resource (encode + decode minus plain JSON): "
        f"**{report.codec_overhead_us:.0f} us** for {report.codec_detail}{share}. A read decodes once; a write "
        "encodes the resource and its Provenance.",
        "",
    ]


def render_findings(report: Report) -> list[str]:
    lines = ["## Findings", ""]
    for row in report.round_trips:
        target = row.interaction.target
        if target is not None and max(row.counts) > target:
            why = f" - {row.interaction.design}" if row.interaction.design else ""
            lines.append(f"- **{row.interaction.name}**: {row.measured} round trips against a target of "
                         f"{row.target_text} (`{row.ops}`){why}.")
        elif target is None and row.interaction.design:
            trips = "round trip" if row.measured == "1" else "round trips"
            lines.append(f"- {row.interaction.name}: {row.measured} {trips} (`{row.ops}`): "
                         f"{row.interaction.design}.")
    secrets = sum(report.warm_secret_calls.values())
    if secrets:
        lines.append(f"- **Warm requests made {secrets} Secrets Manager/KMS calls** (expected 0).")
    if report.timings:
        worst = max(report.timings, key=lambda t: t.ratio)
        best = min(report.timings, key=lambda t: t.ratio)
        lines.append(f"- Handler / raw boto3 ratio ranges from {best.ratio:.2f} ({best.interaction}) to "
                     f"{worst.ratio:.2f} ({worst.interaction}); the product's own work per request (outside "
                     f"boto3) is {min(t.outside_aws_ms for t in report.timings):.1f}-"
                     f"{max(t.outside_aws_ms for t in report.timings):.1f} ms.")
    bare = next((c for c in report.cold if c.function == BARE), None)
    functions = [c for c in report.cold if c.function != BARE]
    if bare and functions:
        slowest = max(functions, key=lambda c: c.init_ms)
        lines.append(f"- Slowest cold init: {slowest.function} {slowest.init_ms:.0f} ms "
                     f"({slowest.init_ms / bare.init_ms:.1f}x the bare handler's {bare.init_ms:.0f} ms).")
    if report.import_breakdown:
        name, ms = report.import_breakdown[0]
        lines.append(f"- Largest import of CreateFunction by self time: `{name}` ({ms:.0f} ms).")
    return [*lines, ""]


# ====================================================================================== main
def run(args: argparse.Namespace) -> Report:
    started = time.perf_counter()
    report = Report(describe_machine(), {
        "command": "python -m esus_dev.bench " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cold_repeats": str(args.cold_repeats),
        "crypto_seconds": str(args.crypto_seconds),
        "summary": f"{args.iterations} measured iterations after {args.warmup} warm-up; "
                   f"{args.cold_repeats} cold runs per function; {args.crypto_seconds} s per crypto operation",
    })
    with tempfile.TemporaryDirectory(prefix="esus-bench-") as tmp:
        stack, recorder = start_stack(Path(tmp))
        try:
            client = new_client(stack, recorder)
            _progress(f"warm: {args.iterations} iterations x {len(INTERACTIONS)} interactions")
            warm_phase(client, report, args.iterations, args.warmup)
            _progress(f"cold: {len(COLD_REQUESTS) + 1} functions x {args.cold_repeats} subprocesses")
            cold_phase(client, report, args.cold_repeats)
            _progress("crypto")
            crypto_phase(report, args.crypto_seconds)
        finally:
            if stack.moto is not None:
                stack.moto.stop()
    report.elapsed_s = time.perf_counter() - started
    report.load_end = load_average()
    return report


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m esus_dev.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"measured iterations of every interaction (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"discarded iterations first (default {DEFAULT_WARMUP}, at least 1)")
    parser.add_argument("--cold-repeats", type=int, default=DEFAULT_COLD_REPEATS,
                        help=f"fresh subprocesses per function (default {DEFAULT_COLD_REPEATS})")
    parser.add_argument("--crypto-seconds", type=float, default=DEFAULT_CRYPTO_SECONDS,
                        help=f"time per crypto operation (default {DEFAULT_CRYPTO_SECONDS})")
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) to PATH")
    parser.add_argument("--cold-child", help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", help=argparse.SUPPRESS)
    parser.add_argument("--handler", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = max(1, args.warmup)
    args.iterations = max(1, args.iterations)
    args.cold_repeats = max(1, args.cold_repeats)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold_child:
        cold_child(args.cold_child, args.event, args.code_dir, args.handler)
        return
    text = render(run(args))
    print(text)
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        _progress(f"wrote {path}")


if __name__ == "__main__":
    main()
