"""The CLI answers foreseeable operator errors with one line on stderr and exit 2, never a traceback
(no local stack needed: stand-ins answer where a test needs something to answer)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from esus_dev.cli import main
from tests.conftest import REPO

TABLES = {"ResourcesTable": "r", "HistoryTable": "h", "ProvenanceTable": "p", "IndexTable": "i",
          "RootKeySecret": "s", "ObjectBucket": "o"}


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Answering:
    """A loopback HTTP server answering every request with one fixed response."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_port)
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def answering() -> Iterator[list[Answering]]:
    servers: list[Answering] = []
    yield servers
    for server in servers:
        server.close()


def fake_stack(answering: list[Answering]) -> Answering:
    """Something answering like a local stack's /metadata (its AWS stand-in is recorded separately)."""
    server = Answering(200, {"resourceType": "CapabilityStatement"})
    answering.append(server)
    return server


def aws_error(answering: list[Answering], code: str, message: str) -> Answering:
    """An AWS JSON-protocol endpoint that answers every call with this error."""
    server = Answering(400, {"__type": f"com.amazon.coral.service#{code}", "message": message})
    answering.append(server)
    return server


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "esus-dev"
    directory.mkdir()
    monkeypatch.setenv("ESUS_DEV_DIR", str(directory))
    monkeypatch.delenv("ESUS_LOCAL_PORT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return directory


def record(dev: Path, port: int, aws_endpoint: str) -> Path:
    path = dev / f"local-stack-{port}.json"
    path.write_text(json.dumps({"base_url": f"http://127.0.0.1:{port}/fhir", "port": port,
                                "aws_endpoint": aws_endpoint, **TABLES}))
    return path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """main() in-process: (exit code, stderr). An uncaught exception (a traceback) fails the test."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(exited.value.code or 0), err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def resource_file(tmp_path: Path) -> Path:
    path = tmp_path / "patient.json"
    path.write_text(json.dumps({"resourceType": "Patient", "id": "p1"}))
    return path


def _command(name: str, resource_file: Path) -> list[str]:
    return ["import", str(resource_file)] if name == "import" else [name]


# ---------- esus run ----------
def _run_cli(*args: str, dev: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "ESUS_DEV_DIR": str(dev), "HOME": str(dev)}
    return subprocess.run([sys.executable, "-m", "esus_dev.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_on_a_taken_port_names_it_and_how_to_choose_another(dev: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_cli("run", "--port", str(port), dev=dev)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    line = one_line(done.stderr)
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "PORT=" in line and "make run" in line and "--port" in line
    assert not list(dev.glob("local-stack-*.json"))


def test_run_on_an_unknown_host_says_so(dev: Path) -> None:
    done = _run_cli("run", "--host", "no-such-host.invalid", "--port", "0", dev=dev)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot listen on no-such-host.invalid:0" in one_line(done.stderr)


# ---------- which local stack ----------
@pytest.mark.parametrize("command", ["verify", "rotate-key", "reencrypt", "import"])
def test_recorded_stack_that_no_longer_answers(command: str, dev: Path, resource_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    record(dev, port, f"http://127.0.0.1:{closed_port()}")
    code, err = run_main(capsys, *_command(command, resource_file))
    line = one_line(err)
    assert code == 2
    assert line.startswith(f"esus {command}: no local stack answers at http://127.0.0.1:{port}/fhir")
    assert "make run" in line
    assert ("--base-url" in line) if command == "import" else ("--deployed" in line and "--endpoint" in line)


@pytest.mark.parametrize("command", ["verify", "rotate-key", "reencrypt", "import"])
def test_no_stack_recorded_at_all(command: str, dev: Path, resource_file: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, *_command(command, resource_file))
    assert code == 2
    assert f"esus {command}: no local stack is running (none is recorded in {dev})" in one_line(err)


def test_unreadable_state_file_is_named(dev: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = dev / "local-stack-3999.json"
    path.write_text("{not json")
    code, err = run_main(capsys, "verify")
    assert code == 2 and f"{path} (unreadable: delete it)" in one_line(err)


def test_stack_whose_aws_stand_in_stopped(dev: Path, answering: list[Answering],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The API still answers but the AWS endpoint it recorded does not (botocore EndpointConnectionError)."""
    stack = fake_stack(answering)
    aws = f"http://127.0.0.1:{closed_port()}"
    record(dev, stack.port, aws)
    code, err = run_main(capsys, "verify")
    line = one_line(err)
    assert code == 2 and f"no local stack answers at {aws}/ (its AWS stand-in stopped)" in line
    assert "make run" in line and "--deployed" in line


def test_two_stacks_answering_need_a_choice(dev: Path, answering: list[Answering], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    first, second = fake_stack(answering), fake_stack(answering)
    aws = {first.port: f"http://127.0.0.1:{closed_port()}", second.port: f"http://127.0.0.1:{closed_port()}"}
    for port, endpoint in aws.items():
        record(dev, port, endpoint)
    code, err = run_main(capsys, "verify")
    ports = ", ".join(str(p) for p in sorted(aws))
    assert code == 2 and f"several local stacks answer (ports {ports}): choose one with --port N" in one_line(err)
    # --port picks one (then its stand-in, which does not answer, proves which one was picked).
    code, err = run_main(capsys, "verify", "--port", str(first.port))
    assert code == 2 and f"no local stack answers at {aws[first.port]}/" in one_line(err)
    monkeypatch.setenv("ESUS_LOCAL_PORT", str(second.port))
    code, err = run_main(capsys, "rotate-key")
    assert code == 2 and f"no local stack answers at {aws[second.port]}/" in one_line(err)
    unknown = closed_port()
    code, err = run_main(capsys, "verify", "--port", str(unknown))
    assert code == 2 and f"no local stack is recorded for port {unknown}" in one_line(err)
    monkeypatch.setenv("ESUS_LOCAL_PORT", "abc")
    code, err = run_main(capsys, "verify")
    assert code == 2 and "ESUS_LOCAL_PORT must be a port number" in one_line(err)


# ---------- deployments: endpoint and credentials ----------
@pytest.mark.parametrize("command", ["verify", "rotate-key", "reencrypt"])
def test_unreachable_endpoint(command: str, dev: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    code, err = run_main(capsys, command, "--endpoint", endpoint)
    assert code == 2 and f"esus {command}: cannot reach {endpoint}/: check --endpoint" in one_line(err)


def test_no_credentials(dev: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(dev / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(dev / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # earlier tests' session caches their credentials
    code, err = run_main(capsys, "verify", "--deployed")
    assert code == 2 and "esus verify: no AWS credentials found" in one_line(err)


def test_no_region(dev: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(dev / "none"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    code, err = run_main(capsys, "reencrypt", "--deployed")
    assert code == 2 and "esus reencrypt: no AWS region configured" in one_line(err)


@pytest.mark.parametrize(("command", "code", "expected"), [
    ("verify", "UnrecognizedClientException", "AWS rejected the credentials (UnrecognizedClientException"),
    ("rotate-key", "UnrecognizedClientException", "AWS rejected the credentials (UnrecognizedClientException"),
    ("verify", "AccessDeniedException", "AWS denied Scan (AccessDeniedException)"),
    ("rotate-key", "AccessDeniedException", "AWS denied GetSecretValue (AccessDeniedException)"),
    ("reencrypt", "ExpiredTokenException", "AWS rejected the credentials (ExpiredTokenException"),
])
def test_aws_rejects_the_credentials(command: str, code: str, expected: str, dev: Path,
                                     answering: list[Answering], capsys: pytest.CaptureFixture[str]) -> None:
    aws = aws_error(answering, code, "The security token included in the request is invalid.")
    exit_code, err = run_main(capsys, command, "--endpoint", aws.url)
    assert exit_code == 2 and f"esus {command}: {expected}" in one_line(err)


# ---------- import and token ----------
def test_import_of_a_missing_file(dev: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = dev / "nothing-here.ndjson"
    code, err = run_main(capsys, "import", str(missing), "--base-url", f"http://127.0.0.1:{closed_port()}/fhir",
                         "--token", "t")
    assert code == 2 and f"esus import: no such file or folder: {missing}" in one_line(err)


def test_import_to_an_unreachable_base_url(dev: Path, resource_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = f"http://127.0.0.1:{closed_port()}/fhir"
    code, err = run_main(capsys, "import", str(resource_file), "--base-url", base, "--token", "t")
    line = one_line(err)
    assert code == 2 and f"esus import: no API answers at {base} (ConnectError)" in line and "--base-url" in line


def test_token_with_an_unusable_dev_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("ESUS_DEV_DIR", str(not_a_dir))
    code, err = run_main(capsys, "token", "--tenant", "acme")
    assert code == 2 and f"esus token: {not_a_dir}: File exists" in one_line(err)
