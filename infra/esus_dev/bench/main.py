"""`python -m esus_dev.bench`: the phases in order, the report printed (and written with --write)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import esus_dev.bench
from esus_dev.bench.cold import COLD_REQUESTS, cold_child, cold_phase
from esus_dev.bench.compartment import compartment_phase
from esus_dev.bench.crypto import crypto_phase
from esus_dev.bench.gateway import new_client, start_stack
from esus_dev.bench.importcheck import check, route_functions
from esus_dev.bench.machine import describe_machine, load_average
from esus_dev.bench.profile import current_profile
from esus_dev.bench.render import render
from esus_dev.bench.report import Report
from esus_dev.bench.scenario import INTERACTIONS
from esus_dev.bench.transactions import SIZES, transactions_phase
from esus_dev.bench.warm import warm_phase

DEFAULT_ITERATIONS = 50
DEFAULT_WARMUP = 3
DEFAULT_COLD_REPEATS = 7  # medians of 3 moved by +-0.15 between runs on this shared VM
DEFAULT_CRYPTO_SECONDS = 0.4
DEFAULT_IMPORT_ROUNDS = 5
DEFAULT_COMPARTMENT_REPEATS = 4


def run(args: argparse.Namespace) -> Report:
    started = time.perf_counter()
    report = Report(describe_machine(), {
        "command": "python -m esus_dev.bench " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cold_repeats": str(args.cold_repeats),
        "import_rounds": str(args.import_rounds),
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
            _progress(f"compartment: a Synthea patient, {args.compartment_repeats} runs")
            compartment_phase(client, report, args.compartment_repeats)
            _progress(f"cold: {len(COLD_REQUESTS)} functions x {args.cold_repeats} rounds (each paired with bare, "
                      "and primed)")
            cold_phase(client, report, args.cold_repeats)
            _progress(f"imports: `import app` of every function vs bare, {args.import_rounds} pairs each; profile")
            report.import_checks = check(route_functions(), args.import_rounds)
            report.import_profile = current_profile("create", args.import_rounds)
            _progress("crypto")
            crypto_phase(report, args.crypto_seconds)
            if args.transaction_sizes:
                import boto3

                from esus.container import aws_config
                from esus.settings import get_settings

                _progress(f"transactions: {args.transaction_sizes} entries, and reads meeting locks")
                raw_ddb = boto3.session.Session().client("dynamodb", config=aws_config(get_settings()))
                transactions_phase(client, report, raw_ddb, tuple(args.transaction_sizes))
        finally:
            if stack.moto is not None:
                stack.moto.stop()
    report.elapsed_s = time.perf_counter() - started
    report.load_end = load_average()
    return report


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m esus_dev.bench", description=esus_dev.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"measured iterations of every interaction (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"discarded iterations first (default {DEFAULT_WARMUP}, at least 1)")
    parser.add_argument("--cold-repeats", type=int, default=DEFAULT_COLD_REPEATS,
                        help=f"rounds of fresh subprocesses per function (default {DEFAULT_COLD_REPEATS})")
    parser.add_argument("--import-rounds", type=int, default=DEFAULT_IMPORT_ROUNDS,
                        help=f"paired `import app` runs per function (default {DEFAULT_IMPORT_ROUNDS})")
    parser.add_argument("--crypto-seconds", type=float, default=DEFAULT_CRYPTO_SECONDS,
                        help=f"time per crypto operation (default {DEFAULT_CRYPTO_SECONDS})")
    parser.add_argument("--transaction-sizes", type=int, nargs="*", default=list(SIZES), metavar="N",
                        help=f"transaction Bundle sizes to measure (default {' '.join(map(str, SIZES))}; none: skip)")
    parser.add_argument("--compartment-repeats", type=int, default=DEFAULT_COMPARTMENT_REPEATS,
                        help=f"runs of $everything and the compartment search (default {DEFAULT_COMPARTMENT_REPEATS})")
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) to PATH")
    parser.add_argument("--cold-child", help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", help=argparse.SUPPRESS)
    parser.add_argument("--handler", help=argparse.SUPPRESS)
    parser.add_argument("--prime", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = max(1, args.warmup)
    args.iterations = max(1, args.iterations)
    args.cold_repeats = max(1, args.cold_repeats)
    args.import_rounds = max(1, args.import_rounds)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold_child:
        cold_child(args.cold_child, args.event, args.code_dir, args.handler, args.prime)
        return
    text = render(run(args))
    print(text)
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        _progress(f"wrote {path}")
