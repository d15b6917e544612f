"""Warm phase: round trips and handler time per interaction, against the same DynamoDB and S3 calls replayed raw."""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections import Counter
from typing import Any

from esus_dev.bench.gateway import Client, TableJanitor
from esus_dev.bench.recorder import call_counts, in_sequence
from esus_dev.bench.report import Report, RoundTripRow, Sample, SearchRow, TimingRow
from esus_dev.bench.scenario import INTERACTIONS, SEARCHES, run_iteration

# The data services a request round-trips to: DynamoDB, and S3 for versions too large for an item. Any other call
# (Secrets Manager, KMS) is expected only when a container starts or its root key expires.
DATA_SERVICES = ("dynamodb", "s3")


def rewrite_tenant(value: Any, old: str, new: str) -> Any:
    """The same call under another tenant: every item key begins with `tenant|` and every object key with
    `tenant/`, nothing else does (`old` and `new` are given without the separator)."""
    if isinstance(value, str):
        for separator in ("|", "/"):
            if value.startswith(old + separator):
                return new + value[len(old):]
        return value
    if isinstance(value, dict):
        return {k: rewrite_tenant(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_tenant(v, old, new) for v in value]
    return value


class Replayer:
    """Re-issues an iteration's DynamoDB and S3 calls, in order, with plain clients (not recorded), under a
    replay tenant, on tables reset to the state the handlers started from: every conditional write and
    every read meets the same state (and moto the same amount of data) as the handler's did."""

    def __init__(self, clients: dict[str, Any], tenant: str) -> None:
        from botocore import xform_name

        self._clients = clients
        self._xform = xform_name
        self._tenant = tenant

    def replay(self, samples: list[Sample], iteration: int) -> None:
        """Sets Sample.raw_s: the time of that request's calls, issued directly."""
        replay_tenant = f"{self._tenant}-r{iteration}"
        for sample in samples:
            prepared = []
            for call in sample.calls:
                if call.service not in DATA_SERVICES:
                    continue
                params = rewrite_tenant(call.params, self._tenant, replay_tenant)
                if "ClientRequestToken" in params:
                    params["ClientRequestToken"] = str(uuid.uuid4())
                prepared.append((getattr(self._clients[call.service], self._xform(call.operation)), params))
            started = time.perf_counter()
            for method, params in prepared:
                result = method(**params)
                if "Body" in result and hasattr(result["Body"], "read"):
                    result["Body"].read()  # GetObject: the handler reads the whole body too
            sample.raw_s = time.perf_counter() - started


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else math.nan


def p95_ms(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] * 1000


def round_trip_rows(samples: list[Sample], workers: int = 1) -> list[RoundTripRow]:
    rows = []
    for interaction in INTERACTIONS:
        mine = [s for s in samples if s.interaction == interaction.name]
        data = [[c for c in s.calls if c.service in DATA_SERVICES] for s in mine]
        ops = Counter(" + ".join(c.label for c in calls) for calls in data).most_common(1)[0][0]
        rows.append(RoundTripRow(
            interaction=interaction,
            counts=tuple(len(calls) for calls in data),
            sequential=tuple(in_sequence(calls, workers) for calls in data),
            http_attempts=tuple(sum(c.attempts for c in calls) for calls in data),
            ops=ops,
            other_services=sum(1 for s in mine for c in s.calls if c.service not in DATA_SERVICES),
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


def search_rows(samples: list[Sample], round_trips: list[RoundTripRow]) -> list[SearchRow]:
    rows = []
    trips = {r.interaction.name: r.measured for r in round_trips}
    for name in SEARCHES:
        mine = [s for s in samples if s.interaction == name and s.results]
        if not mine:
            continue
        ratios = [s.decrypted / (s.results or 1) for s in mine]
        results = [s.results or 0 for s in mine]
        rows.append(SearchRow(
            interaction=name, round_trips=trips.get(name, "-"),
            handler_median_ms=median_ms([s.handler_s for s in mine]),
            results=str(min(results)) if min(results) == max(results) else f"{min(results)}-{max(results)}",
            per_result_median=statistics.median(ratios), per_result_max=max(ratios),
        ))
    return rows


def warm_phase(client: Client, report: Report, iterations: int, warmup: int) -> None:
    import boto3

    from esus.container import aws_config, object_config
    from esus.settings import get_settings

    run_iteration(client, 0)  # the process's first requests: imports, wiring, root key
    report.first_request_calls = call_counts(c for s in client.samples for c in s.calls
                                             if c.service not in DATA_SERVICES)
    session = boto3.session.Session()  # its clients are not recorded
    raw_ddb = session.client("dynamodb", config=aws_config(get_settings()))
    janitor = TableJanitor(raw_ddb, client.stack)
    s3 = session.client("s3", config=object_config(get_settings()))
    replayer = Replayer({"dynamodb": raw_ddb, "s3": s3}, client.tenant)
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
    report.round_trips = round_trip_rows(measured, client.parallel.workers)
    report.timings = timing_rows(measured)
    report.searches = search_rows(measured, report.round_trips)
    report.warm_requests = len(measured)
    report.warm_secret_calls = call_counts(c for s in measured for c in s.calls if c.service not in DATA_SERVICES)
    auth = [s.authorizer_s for s in measured]
    report.authorizer_ms = (median_ms(auth), p95_ms(auth))
