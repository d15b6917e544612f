"""Where running local stacks are recorded, and which one a command talks to.

One state file per stack, keyed by the port it listens on: `.esus/local-stack-<port>.json` (base URL, AWS
stand-in endpoint, physical table and secret names). Several stacks can run from one checkout (tests, a
second terminal, another `PORT`) without overwriting each other's record. `esus run` removes its file when
it stops; a file left by a killed stack is ignored because nothing answers at its address.

Commands that need a stack (verify, rotate-key, reencrypt, import) use the recorded stack that answers;
`--port N` (or ESUS_LOCAL_PORT=N) picks one when several do.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

PROBE_SECONDS = 5.0
START_HINT = "start one with `make run` (or `esus run`)"


class NoLocalStack(Exception):
    """No recorded local stack answers (or several do and none was chosen): one line for the operator."""


def state_path(directory: Path, port: int) -> Path:
    return directory / f"local-stack-{port}.json"


def write_state(directory: Path, port: int, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = state_path(directory, port)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, path)  # readers never see half a file
    return path


def remove_state(path: Path, state: dict[str, Any]) -> None:
    """Remove the record if it is still this stack's (a later stack on the same port owns it otherwise)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == state:
            path.unlink()


def recorded(directory: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every state file, by port; None for one that cannot be read (a crash mid-write, a hand edit)."""
    found: list[tuple[Path, dict[str, Any] | None]] = []
    for path in sorted(directory.glob("local-stack-*.json"), key=_port_of):
        state: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("base_url"), str):
                state = loaded
        found.append((path, state))
    return found


def recorded_for(directory: Path, base_url: str) -> dict[str, Any] | None:
    """The recorded stack serving `base_url`, if any (no probe: the caller talks to it anyway)."""
    for _, state in recorded(directory):
        if state and state["base_url"].rstrip("/") == base_url.rstrip("/"):
            return state
    return None


def answers(state: dict[str, Any]) -> bool:
    """An ESUS local stack answers at the recorded base URL (its capability statement, no token needed)."""
    try:
        response = httpx.get(f"{state['base_url'].rstrip('/')}/metadata", timeout=PROBE_SECONDS)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and "CapabilityStatement" in response.text


def find_local_stack(directory: Path, port: int | None, elsewhere: str) -> dict[str, Any]:
    """The recorded local stack to use. `elsewhere` tells how to aim the command at something else."""
    if port is None:
        port = _env_port()
    stacks = recorded(directory)
    if port is not None:
        stacks = [(path, state) for path, state in stacks if path == state_path(directory, port)]
        if not stacks:
            raise NoLocalStack(f"no local stack is recorded for port {port} in {directory}: {START_HINT} "
                               f"(PORT={port} make run), or {elsewhere}")
    if not stacks:
        raise NoLocalStack(f"no local stack is running (none is recorded in {directory}): {START_HINT}, "
                           f"or {elsewhere}")
    live = [state for _, state in stacks if state is not None and answers(state)]
    if len(live) == 1:
        return live[0]
    if live:
        ports = ", ".join(str(urlsplit(state["base_url"]).port) for state in live)
        raise NoLocalStack(f"several local stacks answer (ports {ports}): choose one with --port N "
                           f"or ESUS_LOCAL_PORT=N")
    where = "; ".join(f"{state['base_url']} (recorded in {path})" if state else f"{path} (unreadable: delete it)"
                      for path, state in stacks)
    raise NoLocalStack(f"no local stack answers at {where}: {START_HINT}, or {elsewhere}")


def _env_port() -> int | None:
    value = os.environ.get("ESUS_LOCAL_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise NoLocalStack(f"ESUS_LOCAL_PORT must be a port number, not {value!r}")
    return int(value)


def _port_of(path: Path) -> int:
    digits = path.stem.removeprefix("local-stack-")
    return int(digits) if digits.isdigit() else 0
