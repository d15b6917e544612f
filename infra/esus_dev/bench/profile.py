"""Where a function's import time goes: `python -X importtime -c "import app"` in its folder (the layer on
PYTHONPATH, as the outside check runs it), self time per top-level package, median over fresh processes.

    python -m esus_dev.bench.profile [--function create] [--runs 7]
    python -m esus_dev.bench.profile --record-before COMMIT   # writes BEFORE_FILE

`--record-before` measures a past commit (its shared/ and functions/, taken with `git archive`) in the same run,
interleaved with the current tree and the bare handler, and keeps the result in BEFORE_FILE: docs/BENCH.md
shows it next to the profile `make bench` measures, so the before/after comparison stays on the record.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from esus_dev.bench import BARE_CODE_DIR, REPO
from esus_dev.bench.importcheck import FUNCTIONS_DIR, child_environment

BEFORE_FILE = Path(__file__).with_name("importtime_before.json")


def package_self_times(importtime_log: str) -> list[tuple[str, float]]:
    """`python -X importtime` output -> self time per top-level package, largest first (ms)."""
    totals: Counter[str] = Counter()
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        totals[name.split(".")[0]] += int(self_us)
    return [(name, us / 1000) for name, us in totals.most_common()]


@dataclass(frozen=True)
class ImportProfile:
    label: str
    packages: list[tuple[str, float]]  # median self ms per top-level package, largest first
    total_ms: float  # median over runs of the summed self times
    wall_ms: float  # median whole-process time of `python -c "import app"` (no -X importtime)
    ratio_to_bare: float  # median of paired wall-time ratios against the bare handler


def _importtime(code_dir: Path, shared: Path, pycache: Path) -> tuple[list[tuple[str, float]], float]:
    env = child_environment(pycache)
    env["PYTHONPATH"] = str(shared)
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app"], cwd=code_dir, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=True)
    packages = package_self_times(done.stderr)
    return packages, sum(ms for _, ms in packages)


def _wall(code_dir: Path, shared: Path, pycache: Path) -> float:
    env = child_environment(pycache)
    env["PYTHONPATH"] = str(shared)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import app"], cwd=code_dir, env=env, capture_output=True,  # noqa: S603
                   timeout=120, check=True)
    return (time.perf_counter() - started) * 1000


def profiles(trees: dict[str, tuple[Path, Path]], runs: int, top: int = 10) -> list[ImportProfile]:
    """Per label, (function folder, shared folder): `runs` rounds after a discarded one, each tree's importtime
    run and its wall-time run paired with a bare one, all interleaved."""
    logs: dict[str, list[tuple[list[tuple[str, float]], float]]] = {label: [] for label in trees}
    walls: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="esus-profile-") as tmp:
        pycache = Path(tmp) / "pycache"
        for r in range(runs + 1):
            for label, (code_dir, shared) in trees.items():
                profile = _importtime(code_dir, shared, pycache)
                bare_ms = _wall(BARE_CODE_DIR, REPO / "shared", pycache)
                wall_ms = _wall(code_dir, shared, pycache)
                if r:
                    logs[label].append(profile)
                    walls[label].append((wall_ms, bare_ms))
    result = []
    for label, samples in logs.items():
        names = {name for packages, _ in samples for name, _ in packages}
        medians = {name: statistics.median(dict(p).get(name, 0.0) for p, _ in samples) for name in names}
        result.append(ImportProfile(
            label=label,
            packages=sorted(medians.items(), key=lambda kv: -kv[1])[:top],
            total_ms=statistics.median(total for _, total in samples),
            wall_ms=statistics.median(w for w, _ in walls[label]),
            ratio_to_bare=statistics.median(w / b for w, b in walls[label]),
        ))
    return result


def current_profile(function: str, runs: int) -> ImportProfile:
    (profile,) = profiles({f"functions/{function}": (FUNCTIONS_DIR / function, REPO / "shared")}, runs)
    return profile


def load_before() -> dict[str, object] | None:
    return dict(json.loads(BEFORE_FILE.read_text())) if BEFORE_FILE.exists() else None


def record_before(commit: str, function: str, runs: int) -> dict[str, object]:
    archive = subprocess.run(["git", "archive", commit, "shared", "functions"], cwd=REPO,  # noqa: S603, S607
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="esus-before-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        before_tree = Path(tmp)
        before, after = profiles({
            "before": (before_tree / "functions" / function, before_tree / "shared"),
            "after": (FUNCTIONS_DIR / function, REPO / "shared"),
        }, runs)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,  # noqa: S603, S607
                          text=True, check=True).stdout.strip()
    record: dict[str, object] = {
        "commit": commit, "function": function, "runs": runs, "compared_with": head,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "before": asdict(before), "after_then": asdict(after),
    }
    BEFORE_FILE.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esus_dev.bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", default="create")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--record-before", metavar="COMMIT")
    args = parser.parse_args(argv)
    if args.record_before:
        print(json.dumps(record_before(args.record_before, args.function, max(1, args.runs)), indent=1))
        return 0
    profile = current_profile(args.function, max(1, args.runs))
    print(json.dumps(asdict(profile), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
