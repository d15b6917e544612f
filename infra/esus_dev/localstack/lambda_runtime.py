"""What the Lambda runtime gives a handler, for the tools and tests that run route functions in-process: the
context object, and the handler loaded from its file the way Lambda loads it (functions are not packages).

Stdlib only: the benchmark's cold-start child imports this before it times a handler's import.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

Handler = Callable[[dict[str, Any], Any], Any]


class LambdaContext:
    """The attributes of Lambda's context object that Powertools and the handlers read."""

    function_version = "$LATEST"

    def __init__(self, function_name: str, *, region: str = "us-east-1", account: str = "000000000000",
                 timeout_seconds: float = 10, memory_mb: int = 512) -> None:
        self.function_name = function_name
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def handler_path(code_dir: Path, handler: str) -> tuple[Path, str]:
    """A function's `Handler` setting ("app.handler") in its code directory -> (module file, function name)."""
    module_name, function_name = handler.split(".", 1)
    return code_dir / f"{module_name}.py", function_name


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Executes a handler file as a module of its own: under a fresh name unless `name` is given, so each load
    is a new container (its module-level state starts over)."""
    spec = importlib.util.spec_from_file_location(name or f"esus_fn_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a module from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_handler(code_dir: Path, handler: str, name: str | None = None) -> Handler:
    """The handler function a Lambda with this code directory and `Handler` setting would call."""
    path, function_name = handler_path(code_dir, handler)
    function = getattr(load_module(path, name), function_name, None)
    if not callable(function):
        raise ImportError(f"{path} has no function {function_name}()")
    return cast(Handler, function)
