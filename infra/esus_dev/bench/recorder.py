"""Every AWS API call a handler makes, counted and timed with botocore events."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_CALL_KEY = "esus_bench_call"


@dataclass
class AwsCall:
    service: str
    operation: str
    params: dict[str, Any]
    seconds: float = 0.0
    attempts: int = 0
    started: float = 0.0  # perf_counter at the call's start (concurrent calls overlap)
    task: tuple[int, int] | None = None  # (wave, task) when made inside a task run side by side

    @property
    def label(self) -> str:
        if self.operation == "TransactWriteItems":
            return f"TransactWriteItems[{len(self.params.get('TransactItems', []))}]"
        if self.operation == "BatchGetItem":
            keys = sum(len(t.get("Keys", [])) for t in self.params.get("RequestItems", {}).values())
            return f"BatchGetItem[{keys}]"
        return self.operation


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
        call = AwsCall(model.service_model.service_name, model.name, params, started=time.perf_counter(),
                       task=getattr(_running, "tag", None))
        context[_CALL_KEY] = (call, call.started)
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


def sequential_round_trips(calls: Iterable[AwsCall]) -> int:
    """Round trips of latency: calls that overlap in time (issued concurrently) count once."""
    spans = sorted((c.started, c.started + c.seconds) for c in calls)
    waves, end = 0, -1.0
    for start, stop in spans:
        if start > end:
            waves += 1
        end = max(end, stop)
    return waves


def waiting_seconds(calls: Iterable[AwsCall]) -> float:
    """Wall time with at least one AWS call in flight (calls side by side overlap: their union, not their sum)."""
    spans = sorted((c.started, c.started + c.seconds) for c in calls)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


_running = threading.local()  # the (wave, task) a pool thread is running, for the calls it makes


class ParallelTracker:
    """Tags every AWS call made inside a task of `esus.domain.search_index.in_parallel` with (wave, task):
    one wave per in_parallel (its tasks are submitted, then waited for together). That is what the handler
    issues side by side, whatever order the threads happen to run in on this machine."""

    def __init__(self) -> None:
        self.workers = 1
        self._wave = 0
        self._task = 0
        self._open = False

    def install(self) -> None:
        from esus.domain import search_index

        module = vars(search_index)  # `wait` is search_index's import of concurrent.futures.wait
        real_pool, real_wait = search_index.pool, module["wait"]
        self.workers = real_pool()._max_workers
        tracker = self

        class Tagging:
            def __init__(self, pool: Any) -> None:
                self._pool = pool

            def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
                tag = tracker._tag()

                def run() -> Any:
                    _running.tag = tag
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        _running.tag = None

                return self._pool.submit(run)

        def pool() -> Any:
            return Tagging(real_pool())

        def wait(futures: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return real_wait(futures, *args, **kwargs)
            finally:
                tracker._open = False

        module["pool"], module["wait"] = pool, wait

    def _tag(self) -> tuple[int, int]:
        if not self._open:
            self._wave, self._open = self._wave + 1, True
        self._task += 1
        return self._wave, self._task


def in_sequence(calls: list[AwsCall], workers: int) -> int:
    """Round trips of latency: each call the handler's own thread makes, plus per wave of side-by-side
    tasks the most calls any one task made (or more rounds when the wave has more tasks than workers)."""
    sequential = sum(1 for c in calls if c.task is None)
    waves: dict[int, Counter[int]] = defaultdict(Counter)
    for call in calls:
        if call.task is not None:
            waves[call.task[0]][call.task[1]] += 1
    return sequential + sum(max(max(tasks.values()), -(-len(tasks) // workers)) for tasks in waves.values())


def call_counts(calls: Iterable[AwsCall]) -> Counter[str]:
    return Counter(f"{c.service}:{c.operation}" for c in calls)
