"""The shared layer, built exactly as `sam build` builds it (template.yaml SharedLayer: BuildMethod makefile ->
`make build-SharedLayer` in shared/ with ARTIFACTS_DIR): the esus package plus Linux arm64 CPython 3.12 wheels."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

EM_AARCH64 = 183
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}
LAYER_UNZIPPED_LIMIT = 250 * 1024 * 1024  # Lambda: function + layers, unzipped


def _requirements() -> list[Requirement]:
    lines = (REPO / "shared" / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]


def _key(requirement: Requirement) -> tuple[str, frozenset[str], str]:
    return canonicalize_name(requirement.name), frozenset(requirement.extras), str(requirement.specifier)


def test_layer_requirements_are_the_runtime_dependencies_minus_boto3() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = {_key(Requirement(d)) for d in project["dependencies"]
                if canonicalize_name(Requirement(d).name) not in RUNTIME_PROVIDED}
    assert {_key(r) for r in _requirements()} == expected
    assert not {canonicalize_name(r.name) for r in _requirements()} & RUNTIME_PROVIDED


@functools.lru_cache(maxsize=1)
def _index_unreachable() -> str | None:
    """Why pip cannot reach its package index (None when it can). Quick: one small request, 10 s at most."""
    index = os.environ.get("PIP_INDEX_URL")
    if not index:
        found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                               capture_output=True, text=True, timeout=30, check=False)
        index = found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "https://pypi.org/simple"
    url = index.rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the configured package index
            response.read(1)
    except OSError as exc:
        return f"the package index {index} is unreachable ({exc}); the layer build needs it"
    return None


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _index_unreachable()
    if reason:
        pytest.skip(reason)
    artifacts = tmp_path_factory.mktemp("SharedLayer")
    build = subprocess.run(
        ["make", "-C", str(REPO / "shared"), "build-SharedLayer", f"ARTIFACTS_DIR={artifacts}",
         f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return artifacts / "python"


def _source_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_layer_holds_the_esus_package(layer: Path) -> None:
    source = REPO / "shared" / "esus"
    assert (layer / "esus" / "__init__.py").is_file()
    assert _source_files(layer / "esus") == _source_files(source)
    for name in _source_files(source):
        assert (layer / "esus" / name).read_bytes() == (source / name).read_bytes(), name


def test_layer_holds_every_runtime_dependency_but_not_boto(layer: Path) -> None:
    installed = {canonicalize_name(d.name.split("-")[0]) for d in layer.glob("*.dist-info")}
    wanted = {canonicalize_name(r.name) for r in _requirements()} | {"aws-xray-sdk"}  # powertools[tracer]
    assert wanted <= installed, wanted - installed
    assert not installed & RUNTIME_PROVIDED, installed & RUNTIME_PROVIDED
    assert not any((layer / name).exists() for name in RUNTIME_PROVIDED)


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path.name} is not an ELF file"
    assert header[4] == 2 and header[5] == 1, f"{path.name} is not 64-bit little-endian"
    return int.from_bytes(header[18:20], "little")


def test_compiled_extensions_are_linux_arm64_cpython_312(layer: Path) -> None:
    shared_objects = sorted(layer.rglob("*.so*"))
    names = {p.relative_to(layer).as_posix() for p in shared_objects}
    assert "cryptography/hazmat/bindings/_rust.abi3.so" in names
    assert any(n.startswith("pydantic_core/_pydantic_core.") for n in names)
    for path in shared_objects:
        if path.is_file():
            assert _elf_machine(path) == EM_AARCH64, f"{path.relative_to(layer)} is not aarch64"
        if ".cpython-" in path.name:
            assert ".cpython-312-aarch64-linux-gnu.so" in path.name, path.name
    for wheel in layer.glob("*.dist-info/WHEEL"):
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        for tag in tags:
            _, abi, platform = tag.split("-")
            assert platform == "any" or ("aarch64" in platform and "linux" in platform), f"{wheel.parent}: {tag}"
            assert abi in ("none", "abi3", "cp312"), f"{wheel.parent}: {tag}"


def test_layer_fits_lambda_limits(layer: Path) -> None:
    size = sum(p.stat().st_size for p in layer.rglob("*") if p.is_file())
    assert size < LAYER_UNZIPPED_LIMIT / 2, f"layer is {size / 2**20:.0f} MiB unzipped"
