"""Bounded load test (part of `make bench`): N concurrent clients mix create, read, If-Match update,
history and search against a fresh local stack on loopback for a fixed time, then stop by themselves.
Reports throughput and latency per interaction, checks that the only errors are the expected 412s, that
no update was lost, and runs `esus verify` on the tenant afterwards."""

from __future__ import annotations

import argparse
import os
import platform
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from esus_dev.localstack.devkeys import mint_token

REPO = Path(__file__).resolve().parents[3]
MIX = (("create", 0.15), ("read", 0.35), ("update", 0.25), ("history", 0.10), ("search", 0.15))


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    updates_won: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies[op].append(seconds)
            self.statuses[(op, status)] += 1


def start_stack(dev_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "ESUS_DEV_DIR": str(dev_dir), "PORT": "0", "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    env.pop("AWS_ENDPOINT_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "esus_dev.cli", "run"], cwd=REPO, env=env,  # noqa: S603
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    while True:
        found = re.search(r"ESUS local API: (\S+)", lines.get(timeout=120))
        if found:
            return process, found.group(1)


def client_loop(base_url: str, token: str, deadline: float, stats: Stats, seeds: list[str], seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - workload mix, not security
    ops = [op for op, _ in MIX]
    weights = [weight for _, weight in MIX]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            pid = rng.choice(seeds)
            started = time.perf_counter()
            if op == "create":
                phone = f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
                status = http.post("/Patient", json={"resourceType": "Patient", "telecom": [
                    {"system": "phone", "value": phone}]}).status_code
            elif op == "read":
                status = http.get(f"/Patient/{pid}").status_code
            elif op == "history":
                status = http.get(f"/Patient/{pid}/_history", params={"_count": 10}).status_code
            elif op == "search":
                status = http.get("/Patient", params={"phone": "555-000-0000"}).status_code
            else:
                current = http.get(f"/Patient/{pid}")
                body = {**current.json(), "birthDate": f"19{rng.randint(10, 99)}-01-01"}
                response = http.put(f"/Patient/{pid}", json=body, headers={"If-Match": current.headers["ETag"]})
                status = response.status_code
                if status == 200 and response.headers["ETag"] != current.headers["ETag"]:
                    with stats.lock:
                        stats.updates_won[pid] += 1
            stats.record(op, status, time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(clients: int, seconds: float) -> tuple[str, bool]:
    with tempfile.TemporaryDirectory(prefix="esus-load-") as tmp:
        process, base_url = start_stack(Path(tmp))
        try:
            tenant = f"load{uuid.uuid4().hex[:8]}"
            token = mint_token(tenant, "user/*.*", "Practitioner/load", directory=Path(tmp))
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                seeds = [http.post("/Patient", json={"resourceType": "Patient", "telecom": [
                    {"system": "phone", "value": "555-000-0000"}]}).json()["id"] for _ in range(clients)]
            stats = Stats()
            deadline = time.monotonic() + seconds
            started = time.perf_counter()
            threads = [threading.Thread(target=client_loop, args=(base_url, token, deadline, stats, seeds, n))
                       for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                lost = [pid for pid in seeds
                        if int(http.get(f"/Patient/{pid}").json()["meta"]["versionId"]) != 1 + stats.updates_won[pid]]
            env = {**os.environ, "ESUS_DEV_DIR": tmp}
            verify = subprocess.run(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "esus_dev.cli", "verify", "--tenant", tenant], cwd=REPO,
                                    env=env, capture_output=True, text=True, timeout=600)
        finally:
            process.terminate()
            process.wait(timeout=30)
    unexpected = {k: v for k, v in stats.statuses.items() if k[1] >= 400 and k != ("update", 412)}
    total = sum(stats.statuses.values())
    lines = [
        "# ESUS load test", "",
        f"{clients} concurrent clients for {seconds:.0f} s against a fresh local stack on loopback "
        f"(`python -m esus_dev.bench.load`), {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. The local stack is one Python process over moto: these numbers "
        "describe it, not DynamoDB.", "",
        f"- Requests: {total} in {elapsed:.1f} s = **{total / elapsed:.1f} req/s**",
        f"- Unexpected errors (anything but If-Match 412): **{sum(unexpected.values())}** {dict(unexpected) or ''}",
        f"- Expected 412s (lost If-Match races): {stats.statuses[('update', 412)]}",
        f"- Lost updates (final version != 1 + successful updates): **{len(lost)}**",
        f"- `esus verify` afterwards: **{'OK' if verify.returncode == 0 else 'FAILED'}** "
        f"({verify.stdout.strip().splitlines()[0] if verify.stdout.strip() else verify.stderr[-200:]})",
        "", "| Interaction | n | p50 ms | p99 ms | mean ms |", "| --- | ---: | ---: | ---: | ---: |",
    ]
    for op, _ in MIX:
        values = stats.latencies.get(op) or [0.0]
        lines.append(f"| {op} | {len(stats.latencies.get(op, []))} | {percentile(values, 0.5):.1f} | "
                     f"{percentile(values, 0.99):.1f} | {statistics.mean(values) * 1000:.1f} |")
    ok = not unexpected and not lost and verify.returncode == 0
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m esus_dev.bench.load", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) to PATH")
    args = parser.parse_args(argv)
    text, ok = run(args.clients, args.seconds)
    print(text)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
