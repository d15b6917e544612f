"""The one in-process stand-in for the Lambda runtime (esus_dev.localstack.lambda_runtime) used by the local stack, the
benchmark and the infra tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from esus_dev.localstack.lambda_runtime import LambdaContext, load_handler, load_module


def test_context_has_what_powertools_reads() -> None:
    context = LambdaContext("CreateFunction", region="eu-west-1", account="123456789012", timeout_seconds=5)
    assert context.invoked_function_arn == "arn:aws:lambda:eu-west-1:123456789012:function:CreateFunction"
    assert context.function_name == "CreateFunction" and context.memory_limit_in_mb == 512
    assert 4000 < context.get_remaining_time_in_millis() <= 5000
    assert context.aws_request_id != LambdaContext("CreateFunction").aws_request_id


def test_each_load_is_a_fresh_container(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("calls = []\n\ndef handler(event, context):\n    calls.append(event)\n"
                                     "    return len(calls)\n")
    first = load_handler(tmp_path, "app.handler")
    assert first({}, None) == 1 and first({}, None) == 2  # module state lives as long as the container
    assert load_handler(tmp_path, "app.handler")({}, None) == 1
    named = load_module(tmp_path / "app.py", "esus_fn_test_named")
    assert named.__name__ == "esus_fn_test_named"


def test_a_missing_handler_function_is_an_import_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("handler = None\n")
    with pytest.raises(ImportError, match="no function handler"):
        load_handler(tmp_path, "app.handler")
    with pytest.raises(FileNotFoundError):
        load_handler(tmp_path, "main.handler")
