"""CPython's cyclic garbage collector during a Lambda environment's cold init (docs/BENCH.md, section 3).

Import and the first request build what lives as long as the environment: modules, the generated tables, boto3's
service models, clients and keys. The collector walks all of it again and again while it is being built: its
young-generation passes during import (~13 ms of a create's), and a full pass during the first request (JSON
service models and tables allocate enough to trigger one, ~20 ms), about 40 ms of a create's cold init on the
bench machine. In a warm environment each later full pass walks it all again. So, in Lambda only:

- the first import of the `esus` package (a route function's first import) pauses the collector;
- at the end of a function module's import, what import built is frozen (`gc.freeze`: moved to a permanent
  generation that no pass walks);
- after the function's first call, what that call built is frozen too, and the collector resumes for good.

Every function module under functions/ therefore wraps its handler with `collect_after_first_call` (route
functions through esus.http.api.lambda_entry) and imports nothing third-party before `esus`
(tests/unit/test_coldstart.py holds both). Anything else that imports esus where LAMBDA_TASK_ROOT is set calls
`resume()` (the `esus` CLI does), or the collector stays paused.

Cost: garbage in reference cycles made before a freeze is kept for the environment's life instead of being
collected. Import and one request make little of it (docs/BENCH.md counts it: a few hundred objects); everything
else is freed by reference counting, as always. A first call that built far more than a usual one (a large Bundle)
has its young garbage collected before the freeze. Outside Lambda (tests and the local stack run many functions in
one process) nothing changes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
# Tracked objects a first call may leave in the young generation before its cyclic garbage is collected ahead of the
# freeze: a usual first request leaves ~45k, with a few dozen in garbage cycles (collecting them would cost ~12 ms);
# a first call far larger (a transaction Bundle of hundreds of entries) leaves garbage worth freeing.
LARGE_FIRST_CALL = 200_000
# Powertools' names (aws_lambda_powertools.shared.constants; a test holds them equal), spelled out here because
# this module is imported before any third-party package.
LAMBDA_TASK_ROOT_ENV, SAM_LOCAL_ENV, CHALICE_LOCAL_ENV = "LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE"


def in_lambda() -> bool:
    """Powertools' own rule: inside Lambda, not under SAM local or Chalice."""
    emulated = os.getenv(SAM_LOCAL_ENV) or os.getenv(CHALICE_LOCAL_ENV)
    return bool(os.getenv(LAMBDA_TASK_ROOT_ENV)) and not emulated


def pause_for_init() -> None:
    """In Lambda, pause the collector until collect_after_first_call's first call has returned."""
    if in_lambda():
        gc.disable()


def resume() -> None:
    """For code that imports esus in a Lambda environment without serving through collect_after_first_call (the
    `esus` operator CLI run from a Lambda image, another function on the shared layer): the collector runs."""
    gc.enable()


def collect_after_first_call(handler: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """`handler`, with the collector paused from now (the end of import) until its first call has returned, and what
    was built until then frozen. Only in Lambda; elsewhere `handler` itself."""
    if not in_lambda():
        return handler
    gc.freeze()
    gc.disable()
    first = True

    def entry(event: Any, context: Any) -> T:
        nonlocal first
        if not first:
            return handler(event, context)
        first = False
        try:
            return handler(event, context)
        finally:
            if gc.get_count()[0] > LARGE_FIRST_CALL:
                gc.collect(0)  # what the call built is all young: its garbage cycles go before the rest is frozen
            gc.freeze()
            gc.enable()

    return entry
