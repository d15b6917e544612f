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
