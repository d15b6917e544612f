"""The machine the numbers were measured on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cpu: str
    logical_cpus: int
    usable_cpus: int
    memory: str
    python: str
    system: str
    packages: str


def describe_machine() -> Machine:
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = info.get("model name", platform.processor() or "unknown")
    if info.get("cpu cores"):
        cpu += f" ({info['cpu cores']} cores per socket reported)"
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    names = ("boto3", "botocore", "moto", "aws-lambda-powertools", "cryptography", "fhir.resources", "pydantic")
    packages = ", ".join(f"{n} {_version(n)}" for n in names)
    return Machine(
        cpu=cpu, logical_cpus=os.cpu_count() or 0, usable_cpus=usable, memory=memory,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        system=f"{platform.system()} {platform.release()} {platform.machine()}", packages=packages,
    )


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"
