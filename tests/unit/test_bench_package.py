"""The benchmark package keeps what makes its cold-start numbers honest."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_cold_start_child_imports_nothing_but_the_stdlib_before_timing() -> None:
    """`python -m esus_dev.bench --cold-child` loads the whole package before it times a handler's import: a
    third-party module loaded by then would make every function's import look cheaper than it is."""
    probe = ("import sys, json; import esus_dev.bench.main; "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'boto3', 'botocore', 'aws_lambda_powertools', 'esus', 'pydantic', 'fhir', 'cryptography', "
             "'jwt', 'yaml', 'moto'})))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=True)
    assert json.loads(done.stdout) == []


def test_the_import_check_fails_above_its_target_and_passes_below() -> None:
    """`python -m esus_dev.bench.importcheck` (in `make bench`) exits 1 when a function's paired ratio to the bare
    handler is above the target, 0 otherwise; its children get no Lambda variables (nothing traces)."""
    from esus_dev.bench import importcheck

    env = importcheck.child_environment(REPO / ".pycache-unused")
    assert not {"LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_LAMBDA_INITIALIZATION_TYPE"} & set(env)
    assert env["PYTHONPATH"] == str(REPO / "shared")
    assert importcheck.main(["--function", "read", "--rounds", "1", "--target", "0.01"]) == 1
    assert importcheck.main(["--function", "read", "--rounds", "1", "--target", "100"]) == 0


def test_round_trips_in_sequence_count_side_by_side_calls_once() -> None:
    """`make bench` holds targets to round trips of latency: the tasks of one in_parallel are one wave."""
    from esus.domain import search_index
    from esus_dev.bench import recorder
    from esus_dev.bench.recorder import AwsCall, ParallelTracker, in_sequence

    saved = dict(vars(search_index))
    try:
        tracker = ParallelTracker()
        tracker.install()
        tags = search_index.in_parallel([lambda: recorder._running.tag for _ in range(6)])
        later = search_index.in_parallel([lambda: recorder._running.tag for _ in range(2)])
    finally:
        vars(search_index).update(saved)
    assert len({wave for wave, _ in tags}) == 1 and len(set(tags)) == 6  # one wave, six tasks
    assert {wave for wave, _ in later} == {tags[0][0] + 1}

    def call(task: tuple[int, int] | None) -> AwsCall:
        return AwsCall("dynamodb", "X", {}, task=task)

    # GetItem, then a transaction and five batch writes side by side: 2 round trips, 7 calls.
    assert in_sequence([call(None), *(call((1, t)) for t in range(6))], workers=8) == 2
    assert in_sequence([call((1, 1)), call((1, 1)), call((1, 2))], workers=8) == 2  # one task made two in a row
    assert in_sequence([call((1, t)) for t in range(10)], workers=4) == 3  # more tasks than workers
    assert in_sequence([call(None), call(None)], workers=8) == 2


def test_waiting_on_aws_counts_calls_side_by_side_once() -> None:
    """The cold table's AWS wait is the union of the calls' spans: five batches in flight together are one wait,
    not five (summing them once reported more AWS time than the whole first request)."""
    from esus_dev.bench.recorder import AwsCall, waiting_seconds

    def call(started: float, seconds: float) -> AwsCall:
        return AwsCall("dynamodb", "BatchWriteItem", {}, seconds=seconds, started=started)

    assert waiting_seconds([]) == 0
    side_by_side = [call(1.0, 0.5), call(1.1, 0.5), call(1.2, 0.1)]  # 1.0-1.6
    assert abs(waiting_seconds([*side_by_side, call(2.0, 0.25)]) - 0.85) < 1e-9
    assert abs(waiting_seconds([call(0.0, 1.0), call(0.2, 0.3)]) - 1.0) < 1e-9  # one inside another


def test_the_cold_phase_measures_every_route_function() -> None:
    """The cold-start target holds for every function: a function added to the route table is measured too."""
    from esus_dev.bench.cold import COLD_REQUESTS
    from esus_dev.codegen.routes import FUNCTIONS

    assert set(COLD_REQUESTS) == {f"{f.name}Function" for f in FUNCTIONS}
