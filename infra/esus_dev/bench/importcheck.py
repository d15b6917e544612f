"""`python -m esus_dev.bench.importcheck`: the outside cold-start check.

Times `python -c "import app"` in a route function's folder (the layer, shared/, on PYTHONPATH) against the same
command in the folder of the bare boto3 + Powertools resolver (esus_dev/bench/bare_function), in paired
whole-process runs: interpreter start and exit included, nothing loaded beforehand, an environment without
Lambda's variables (so Powertools would not trace). Each pair runs the two processes back to back, in
alternating order, so the machine's drift hits both alike; the ratio reported is the median of the per-pair
ratios. A first, discarded round fills the bytecode cache (a private PYTHONPYCACHEPREFIX, as a deployment
ships .pyc files) and the disk cache.

    python -m esus_dev.bench.importcheck [--function create ...| --all] [--rounds N] [--target 1.3]

Exit status 1 when a function's ratio is above the target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from esus_dev.bench import BARE_CODE_DIR, REPO

TARGET = 1.3
DEFAULT_ROUNDS = 15
FUNCTIONS_DIR = REPO / "functions"
# Passed through to the children; everything else (LAMBDA_TASK_ROOT, POWERTOOLS_*, PYTHON* flags) is left out.
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


@dataclass(frozen=True)
class ImportCheck:
    function: str
    ratios: tuple[float, ...]  # function / bare, one per pair
    function_ms: tuple[float, ...]
    bare_ms: tuple[float, ...]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.function_ms)

    @property
    def bare_median_ms(self) -> float:
        return statistics.median(self.bare_ms)


def child_environment(pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEPT_ENVIRONMENT}
    env["PYTHONPATH"] = str(REPO / "shared")
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def time_import(code_dir: Path, env: dict[str, str]) -> float:
    """Seconds for a fresh `python -c "import app"` in `code_dir`, from the parent (process start and exit)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import app"], cwd=code_dir, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`import app` failed in {code_dir}:\n{done.stderr[-2000:]}")
    return elapsed


def route_functions() -> list[str]:
    return sorted(p.parent.name for p in FUNCTIONS_DIR.glob("*/app.py"))


def check(functions: list[str], rounds: int) -> list[ImportCheck]:
    """Per function, `rounds` measured pairs (function, bare) after one discarded warm-up round."""
    pairs: dict[str, list[tuple[float, float]]] = {f: [] for f in functions}
    with tempfile.TemporaryDirectory(prefix="esus-importcheck-") as tmp:
        env = child_environment(Path(tmp) / "pycache")
        for r in range(rounds + 1):
            for n, function in enumerate(functions):
                code_dir = FUNCTIONS_DIR / function
                if (r + n) % 2:
                    bare_s, function_s = time_import(BARE_CODE_DIR, env), time_import(code_dir, env)
                else:
                    function_s, bare_s = time_import(code_dir, env), time_import(BARE_CODE_DIR, env)
                if r:
                    pairs[function].append((function_s, bare_s))
    return [ImportCheck(function=f,
                        ratios=tuple(fs / bs for fs, bs in p),
                        function_ms=tuple(fs * 1000 for fs, _ in p),
                        bare_ms=tuple(bs * 1000 for _, bs in p))
            for f, p in pairs.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esus_dev.bench.importcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", action="append", choices=route_functions(),
                        help="a folder of functions/ (repeatable; default: create)")
    parser.add_argument("--all", action="store_true", help="every route function")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"measured pairs per function (default {DEFAULT_ROUNDS})")
    parser.add_argument("--target", type=float, default=TARGET, help=f"largest ratio that passes (default {TARGET})")
    args = parser.parse_args(argv)
    functions = route_functions() if args.all else (args.function or ["create"])
    results = check(functions, max(1, args.rounds))
    print(f"`python -c \"import app\"` per function vs the bare boto3 + Powertools resolver, {args.rounds} paired "
          f"whole-process runs each; target <= {args.target}")
    from esus_dev.bench.render import render_import_checks

    print("\n".join(render_import_checks(results, args.target)))
    above = [c.function for c in results if c.ratio > args.target]
    if above:
        print(f"ABOVE target: {', '.join(above)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
