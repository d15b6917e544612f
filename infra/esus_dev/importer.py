"""`esus import`: load FHIR Bundles and NDJSON files into an ESUS API over HTTP(S).

- Every resource is written with `PUT /{type}/{id}` under the id it has in the input (or the id of
  its Bundle `fullUrl`, or a uuid5 of file path + position), so re-running an import addresses the
  same resources; the server stores nothing for a PUT of identical content.
- Bundle references `urn:uuid:...` (any `fullUrl` of the same Bundle) become `Type/id`.
- When several entries share a Type/id, the last one in input order is sent (as a sequential load
  would end) and the earlier ones are reported as superseded: one write per resource per run.
- Each write carries an `X-Provenance` (activity `import`, agent Device/esus-importer on behalf of the
  tenant, the source file as entity), stored by the server in the same transaction as the version.
- Outcomes: created / updated / unchanged are told apart by reading the current version (ETag)
  before the PUT and comparing it with the ETag the PUT returns (see `classify`).
- Resumable: finished entries (file, Type/id, content hash) are saved per destination in a state
  file, flushed every few seconds, at the end and on Ctrl-C, and skipped by the next run.
- `--atomic`: each transaction Bundle is sent as ONE transaction (its entries as `PUT Type/id` under the
  same ids, references rewritten the same way), so it is stored entirely or not at all
  (docs/TRANSACTIONS.md). A Bundle with an unreadable entry is not sent. Other files load as above.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
import jwt

FHIR_JSON = "application/fhir+json"
NDJSON_SUFFIXES = frozenset({".ndjson", ".jsonl"})
INPUT_SUFFIXES = NDJSON_SUFFIXES | {".json"}
LOCAL_REFERENCE_PREFIXES = ("urn:uuid:", "urn:oid:")
SOURCE_SYSTEM = "urn:esus:import-source"
IMPORTER_DEVICE = "Device/esus-importer"
STATE_FORMAT = 1
RETRY_STATUSES = frozenset({429, 502, 503, 504})
AIM_ELSEWHERE = "aim the import elsewhere with --base-url URL (and --token, or ESUS_TOKEN)"

CREATED, UPDATED, UNCHANGED, FAILED, NOT_SENT = "created", "updated", "unchanged", "failed", "not_sent"
RESULTS = (CREATED, UPDATED, UNCHANGED, FAILED, NOT_SENT)


class UsageError(Exception):
    """Bad options or input paths: reported without a traceback, exit code 2."""


# ---------- input: files -> entries ----------
@dataclass(frozen=True)
class Entry:
    """One resource to write, exactly as it will be sent."""

    source: Path
    position: int  # entry number in a Bundle, line number in NDJSON (1-based)
    resource_type: str
    resource_id: str
    body: dict[str, Any]
    digest: str

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def state_key(self) -> str:
        return f"{self.source}|{self.key}"

    @property
    def label(self) -> str:
        return f"{self.source.name} #{self.position} {self.key}"


@dataclass(frozen=True)
class Unreadable:
    """Input that cannot be sent (bad JSON, no resource, unresolvable urn: reference)."""

    source: Path
    position: int  # 0: the whole file
    reason: str

    @property
    def label(self) -> str:
        return self.source.name if self.position == 0 else f"{self.source.name} #{self.position}"


class UnresolvedReference(ValueError):
    pass


def discover(paths: Iterable[Path]) -> list[Path]:
    """Files to read: given files in the given order, folders recursively in sorted order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                f for f in path.rglob("*")
                if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    return list(dict.fromkeys(f.resolve() for f in found))


def read_source(path: Path) -> tuple[list[Entry], list[Unreadable]]:
    if path.suffix.lower() in NDJSON_SUFFIXES:
        return _read_ndjson(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [], [Unreadable(path, 0, f"not readable as JSON: {exc}")]
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        return _read_bundle(path, document)
    entries: list[Entry] = []
    problems: list[Unreadable] = []
    _sort_into(_make_entry(path, 1, document, None), entries, problems)
    return entries, problems


def _read_ndjson(path: Path) -> tuple[list[Entry], list[Unreadable]]:
    entries: list[Entry] = []
    problems: list[Unreadable] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except ValueError as exc:
                problems.append(Unreadable(path, number, f"invalid JSON: {exc}"))
                continue
            _sort_into(_make_entry(path, number, resource, None), entries, problems)
    return entries, problems


def _read_bundle(path: Path, bundle: dict[str, Any]) -> tuple[list[Entry], list[Unreadable]]:
    raw = [e if isinstance(e, dict) else {} for e in bundle.get("entry") or []]
    full_urls = [e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None for e in raw]
    # fullUrl -> Type/id for every entry that has both (the targets of urn:uuid: references)
    targets: dict[str, str] = {}
    for number, (entry, full_url) in enumerate(zip(raw, full_urls, strict=True), 1):
        resource = entry.get("resource")
        if full_url and isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            targets[full_url] = f"{resource['resourceType']}/{resource_id(path, number, resource, full_url)}"
    entries: list[Entry] = []
    problems: list[Unreadable] = []
    for number, (entry, full_url) in enumerate(zip(raw, full_urls, strict=True), 1):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            problems.append(Unreadable(path, number, "the entry carries no resource (only resources are imported)"))
            continue
        try:
            rewritten = rewrite_references(resource, targets)
        except UnresolvedReference as exc:
            problems.append(Unreadable(path, number, f"reference '{exc}' matches no fullUrl in the Bundle"))
            continue
        _sort_into(_make_entry(path, number, rewritten, full_url), entries, problems)
    return entries, problems


def _sort_into(made: Entry | Unreadable, entries: list[Entry], problems: list[Unreadable]) -> None:
    if isinstance(made, Entry):
        entries.append(made)
    else:
        problems.append(made)


def _make_entry(path: Path, position: int, resource: Any, full_url: str | None) -> Entry | Unreadable:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return Unreadable(path, position, "not a FHIR resource (no resourceType)")
    rid = resource_id(path, position, resource, full_url)
    body = {**resource, "id": rid}
    return Entry(path, position, resource["resourceType"], rid, body, content_digest(body))


def resource_id(path: Path, position: int, resource: dict[str, Any], full_url: str | None) -> str:
    """The resource's id, else its fullUrl's (urn:uuid:<id> or .../Type/<id>), else uuid5(path#position)."""
    if isinstance(resource.get("id"), str) and resource["id"]:
        return str(resource["id"])
    if full_url:
        for prefix in LOCAL_REFERENCE_PREFIXES:
            if full_url.startswith(prefix):
                return full_url[len(prefix):]
        parts = full_url.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == resource.get("resourceType"):
            return parts[-1]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path.resolve().as_uri()}#{position}"))


def rewrite_references(node: Any, targets: dict[str, str]) -> Any:
    """Copy of `node` with every `reference` that is a Bundle fullUrl replaced by `Type/id`."""
    if isinstance(node, dict):
        return {
            key: _rewrite(value, targets) if key == "reference" and isinstance(value, str)
            else rewrite_references(value, targets)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [rewrite_references(value, targets) for value in node]
    return node


def _rewrite(reference: str, targets: dict[str, str]) -> str:
    if reference in targets:
        return targets[reference]
    if reference.startswith(LOCAL_REFERENCE_PREFIXES):
        raise UnresolvedReference(reference)
    return reference


def content_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Group:
    """A transaction Bundle sent whole (--atomic): its entries are stored together or not at all."""

    source: Path
    entries: tuple[Entry, ...]


@dataclass
class Plan:
    files: int
    entries: list[Entry]  # one per Type/id: its last occurrence in input order
    superseded: list[Entry]  # earlier occurrences, not sent
    unreadable: list[Unreadable]
    groups: list[Group] = field(default_factory=list)  # --atomic: one transaction per Bundle


def is_transaction_bundle(path: Path) -> bool:
    if path.suffix.lower() in NDJSON_SUFFIXES:
        return False
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("resourceType") == "Bundle" and \
        document.get("type") == "transaction"


def build_plan(paths: Iterable[Path], atomic: bool = False) -> Plan:
    files = discover(paths)
    latest: dict[str, Entry] = {}
    superseded: list[Entry] = []
    unreadable: list[Unreadable] = []
    groups: list[Group] = []
    for path in files:
        entries, problems = read_source(path)
        unreadable += problems
        if atomic and is_transaction_bundle(path):
            if problems:  # all or nothing: a transaction with an entry that cannot be sent is not sent
                unreadable.append(Unreadable(path, 0, f"not sent: {len(problems)} entry(ies) of this transaction "
                                                      "cannot be sent (--atomic sends all or nothing)"))
                continue
            own = {entry.key: entry for entry in entries}  # the same Type/id twice: the last one
            superseded += [e for e in entries if own[e.key] is not e]
            groups.append(Group(path, tuple(own.values())))
            continue
        for entry in entries:
            if entry.key in latest:
                superseded.append(latest.pop(entry.key))
            latest[entry.key] = entry
    return Plan(len(files), list(latest.values()), superseded, unreadable, groups)


# ---------- resumability ----------
@dataclass
class ImportState:
    """Finished entries per destination: {target: {"<file>|<Type>/<id>": content digest}}."""

    path: Path
    target: str
    done: dict[str, str]
    others: dict[str, dict[str, str]]
    flush_seconds: float = 2.0
    _unsaved: int = 0
    _saved_at: float = field(default_factory=time.monotonic)

    @classmethod
    def load(cls, path: Path, target: str) -> ImportState:
        targets: dict[str, dict[str, str]] = {}
        if path.exists():
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                if document.get("format") == STATE_FORMAT:
                    targets = {k: dict(v) for k, v in document["targets"].items()}
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                print(f"esus import: ignoring unreadable state file {path}", file=sys.stderr)
        done = targets.pop(target, {})
        return cls(path, target, done, targets)

    def is_done(self, entry: Entry) -> bool:
        return self.done.get(entry.state_key) == entry.digest

    def record(self, entry: Entry) -> None:
        self.done[entry.state_key] = entry.digest
        self._unsaved += 1
        if time.monotonic() - self._saved_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._unsaved and self.path.exists():
            return
        document = {"format": STATE_FORMAT, "targets": {**self.others, self.target: self.done}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(document, indent=0), encoding="utf-8")
        os.replace(partial, self.path)
        self._unsaved, self._saved_at = 0, time.monotonic()


# ---------- HTTP ----------
class RequestFailed(Exception):
    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Interrupted(Exception):
    """The import is stopping: a retry wait was cut short."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one, else exponential backoff with (equal) jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_delay) + random.uniform(0, self.base_delay)
        ceiling = min(self.max_delay, self.base_delay * float(2 ** attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def is_retryable(response: httpx.Response) -> bool:
    # 409 with Retry-After is ESUS's "being changed by others; retry".
    return response.status_code in RETRY_STATUSES or (
        response.status_code == 409 and "Retry-After" in response.headers)


def etag_version(response: httpx.Response) -> int | None:
    digits = response.headers.get("ETag", "").removeprefix("W/").strip('"')
    return int(digits) if digits.isdigit() else None


def diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics (with element paths), or the start of the body."""
    try:
        issues = [i for i in response.json().get("issue") or [] if isinstance(i, dict)]
        texts = [str(i.get("diagnostics") or i.get("code")) + _paths(i.get("expression")) for i in issues]
        if texts:
            return "; ".join(texts)
    except (ValueError, AttributeError, TypeError):
        pass
    return response.text[:300] or response.reason_phrase


def _paths(expression: Any) -> str:
    return f" [{', '.join(map(str, expression))}]" if isinstance(expression, list) and expression else ""


class FhirClient:
    """PUT/GET with retries; thread-safe (one pooled httpx client)."""

    def __init__(self, base_url: str, token: str, concurrency: int, policy: RetryPolicy,
                 stop: threading.Event, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self._policy, self._stop = policy, stop
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def current_version(self, key: str) -> int | None:
        """The current version number, None when the resource does not exist (or was deleted)."""
        response = self._send("GET", f"/{key}")
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise RequestFailed(response.status_code, f"read before write: {diagnostics(response)}")
        return etag_version(response)

    def put(self, entry: Entry, provenance: str) -> tuple[int, int | None]:
        """-> (status, version written or kept)."""
        response = self._send("PUT", f"/{entry.key}", content=json.dumps(entry.body).encode(), headers={
            "Content-Type": FHIR_JSON, "Prefer": "return=minimal", "X-Provenance": provenance})
        if response.status_code not in (200, 201):
            raise RequestFailed(response.status_code, diagnostics(response))
        return response.status_code, etag_version(response)

    def current_versions(self, entries: Iterable[Entry]) -> dict[str, int]:
        """Type/id -> current version of those that exist: one search by `_id` per type and 50 ids."""
        by_type: dict[str, list[str]] = {}
        for entry in entries:
            by_type.setdefault(entry.resource_type, []).append(entry.resource_id)
        found: dict[str, int] = {}
        for resource_type, ids in by_type.items():
            for start in range(0, len(ids), 50):
                chunk = ids[start : start + 50]
                response = self._send("GET", f"/{resource_type}", params={"_id": ",".join(chunk),
                                                                          "_count": str(len(chunk))})
                if response.status_code != 200:
                    raise RequestFailed(response.status_code, f"read before write: {diagnostics(response)}")
                for item in response.json().get("entry") or []:
                    resource = item.get("resource") or {}
                    found[f"{resource_type}/{resource.get('id')}"] = int(resource["meta"]["versionId"])
        return found

    def transaction(self, entries: Sequence[Entry], provenance: str) -> list[tuple[int, int | None]]:
        """POST one transaction Bundle of `PUT Type/id` entries -> (status, version) per entry, in order."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": e.body, "request": {"method": "PUT", "url": e.key}} for e in entries]}
        base = str(self._http.base_url).rstrip("/")  # POST [base] itself ("" would add a trailing slash)
        response = self._send("POST", base, content=json.dumps(bundle).encode(), headers={
            "Content-Type": FHIR_JSON, "X-Provenance": provenance})
        if response.status_code != 200:
            raise RequestFailed(response.status_code, diagnostics(response))
        results = []
        for item in response.json().get("entry") or []:
            answer = item.get("response") or {}
            digits = str(answer.get("etag", "")).removeprefix("W/").strip('"')
            results.append((int(str(answer.get("status", "0")).split()[0]), int(digits) if digits.isdigit() else None))
        return results

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._policy.retries + 1):
            last_try = attempt == self._policy.retries
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if last_try:
                    raise RequestFailed(None, f"{type(exc).__name__}: {exc}") from None
                self._pause(self._policy.delay(attempt, None))
                continue
            if last_try or not is_retryable(response):
                return response
            self._pause(self._policy.delay(attempt, retry_after_seconds(response)))
        raise AssertionError("unreachable")

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Interrupted()


def provenance_header(source: Path, tenant: str) -> str:
    """X-Provenance for every write from `source` (ASCII JSON: safe as a header value)."""
    return json.dumps({
        "resourceType": "Provenance",
        "activity": {"coding": [{"code": "import", "display": "Imported from external system"}]},
        "agent": [{"who": {"reference": IMPORTER_DEVICE, "type": "Device"},
                   "onBehalfOf": {"reference": f"Organization/{tenant}"}}],
        "entity": [{"role": "source", "what": {
            "display": source.name, "identifier": {"system": SOURCE_SYSTEM, "value": source.name}}}],
    }, separators=(",", ":"))


# ---------- one entry ----------
@dataclass(frozen=True)
class Outcome:
    entry: Entry
    result: str
    status: int | None = None
    reason: str = ""


def classify(before: int | None, status: int, after: int | None) -> str:
    """Created when nothing was there before (or the PUT revived a deleted resource); unchanged when
    the PUT kept the version read just before it (the server writes no version for identical
    content); updated when it moved past it."""
    if before is None or status == 201:
        return CREATED
    return UNCHANGED if after == before else UPDATED


def import_group(client: FhirClient, group: Group, provenance: str) -> list[Outcome]:
    """One transaction Bundle as one transaction: every entry's outcome, or the same failure for all."""
    try:
        before = client.current_versions(group.entries)
        results = client.transaction(group.entries, provenance)
    except RequestFailed as exc:
        return [Outcome(entry, FAILED, exc.status, f"transaction not stored: {exc.reason}") for entry in group.entries]
    except Interrupted:
        return [Outcome(entry, NOT_SENT) for entry in group.entries]
    return [Outcome(entry, classify(before.get(entry.key), status, after), status)
            for entry, (status, after) in zip(group.entries, results, strict=True)]


def import_entry(client: FhirClient, entry: Entry, provenance: str) -> Outcome:
    try:
        before = client.current_version(entry.key)
        status, after = client.put(entry, provenance)
    except RequestFailed as exc:
        return Outcome(entry, FAILED, exc.status, exc.reason)
    except Interrupted:
        return Outcome(entry, NOT_SENT)
    return Outcome(entry, classify(before, status, after), status)


# ---------- the run ----------
@dataclass(frozen=True)
class ImportConfig:
    paths: tuple[Path, ...]
    base_url: str
    token: str
    tenant: str
    target: str  # names the destination in the state file
    state_file: Path
    concurrency: int = 4
    retries: int = 6
    resume: bool = True
    progress: bool = False
    timeout: float = 60.0
    atomic: bool = False  # each transaction Bundle as one transaction


@dataclass(frozen=True)
class Failure:
    label: str
    status: int | None
    reason: str

    def line(self) -> str:
        return f"{self.label}: {f'HTTP {self.status}' if self.status else 'not sent'}: {self.reason}"


@dataclass
class Summary:
    files: int = 0
    resources: int = 0  # distinct Type/id in the input
    skipped: int = 0  # finished by an earlier run (state file)
    superseded: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    stopped: str | None = None  # why the run ended before sending everything
    by_user: bool = False  # Ctrl-C / SIGTERM
    elapsed: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.by_user:
            return 130
        return 1 if self.failures or self.stopped else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "resources": self.resources, "skipped": self.skipped,
            "superseded": self.superseded, **{r: self.counts[r] for r in RESULTS}, FAILED: len(self.failures),
            "failures": [{"entry": f.label, "status": f.status, "reason": f.reason} for f in self.failures],
            "stopped": self.stopped, "elapsed_seconds": round(self.elapsed, 2),
        }

    def text(self) -> str:
        rate = (sum(self.counts[r] for r in (CREATED, UPDATED, UNCHANGED)) / self.elapsed) if self.elapsed else 0
        lines = [
            f"Imported {self.resources} resource(s) from {self.files} file(s) in {self.elapsed:.1f} s ({rate:.1f}/s):",
            *(f"  {r:<11} {self.counts[r]}" for r in (CREATED, UPDATED, UNCHANGED)),
            f"  {'skipped':<11} {self.skipped} (finished by an earlier run; --no-resume sends them again)",
            f"  {'superseded':<11} {self.superseded} (same Type/id again later in the input; the last one was sent)",
            f"  {'failed':<11} {len(self.failures)}",
        ]
        if self.counts[NOT_SENT]:
            lines.append(f"  {'not sent':<11} {self.counts[NOT_SENT]} (the run stopped early; run again to resume)")
        if self.stopped:
            lines.append(f"Stopped early: {self.stopped}")
        if self.failures:
            lines += ["Failures:", *(f"  {f.line()}" for f in self.failures)]
        return "\n".join(lines)


class Progress:
    """One line on a stream, rewritten in place (at most ten times a second)."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self._total, self._stream, self._enabled = total, stream, enabled and total > 0
        self._started = self._shown = time.monotonic()

    def update(self, done: int, counts: Counter[str], force: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not force and now - self._shown < 0.1):
            return
        self._shown = now
        elapsed = max(now - self._started, 1e-6)
        rate = done / elapsed
        eta = f"{(self._total - done) / rate:.0f}s" if rate else "?"
        width = 30
        filled = width * done // self._total
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self._total} "
                f"created {counts[CREATED]} updated {counts[UPDATED]} unchanged {counts[UNCHANGED]} "
                f"failed {counts[FAILED]}  {rate:.1f}/s ETA {eta} ")
        self._stream.write(line)
        self._stream.flush()

    def close(self, done: int, counts: Counter[str]) -> None:
        if self._enabled:
            self.update(done, counts, force=True)
            self._stream.write("\n")
            self._stream.flush()


@contextlib.contextmanager
def graceful_interrupt(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM): finish the requests in flight, save the state, report.
    A second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    previous = {signum: signal.signal(signum, first) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Run:
    config: ImportConfig
    state: ImportState
    summary: Summary
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)
    finished: int = 0

    def execute(self, todo: list[Entry], groups: Sequence[Group] = ()) -> None:
        sources = {e.source for e in todo} | {g.source for g in groups}
        headers = {source: provenance_header(source, self.config.tenant) for source in sources}
        policy = RetryPolicy(retries=self.config.retries)
        with (
            graceful_interrupt(self.stop),
            FhirClient(self.config.base_url, self.config.token, self.config.concurrency, policy, self.stop,
                       self.config.timeout) as client,
            ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="esus-import") as pool,
        ):
            remaining: set[Future[Outcome | list[Outcome]]] = {
                pool.submit(import_group, client, group, headers[group.source]) for group in groups}
            remaining |= {pool.submit(import_entry, client, entry, headers[entry.source]) for entry in todo}
            while remaining and not self.stop.is_set():
                done, remaining = wait(remaining, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in done:
                    self.record(future.result())
            # Stopping: drop queued work; requests in flight finish (their retry waits end at once).
            for future in remaining:
                future.cancel()
            pool.shutdown(wait=True)
            for future in remaining:
                if not future.cancelled():
                    self.record(future.result())

    def record(self, outcome: Outcome | list[Outcome]) -> None:
        if isinstance(outcome, list):
            for one in outcome:
                self.record(one)
            return
        self.finished += 1
        self.summary.counts[outcome.result] += 1
        if outcome.result == FAILED:
            self.summary.failures.append(Failure(outcome.entry.label, outcome.status, outcome.reason))
            if outcome.status == 401 and not self.summary.stopped:
                self.summary.stopped = "the server rejects the token (401): nothing else can succeed"
                self.stop.set()
        elif outcome.result != NOT_SENT:
            self.state.record(outcome.entry)
        self.progress.update(self.finished, self.summary.counts)


def run_import(config: ImportConfig, progress_stream: TextIO | None = None) -> Summary:
    started = time.monotonic()
    plan = build_plan(config.paths, config.atomic)
    state = ImportState.load(config.state_file, config.target)
    todo = [e for e in plan.entries if not (config.resume and state.is_done(e))]
    groups = [g for g in plan.groups if not (config.resume and all(state.is_done(e) for e in g.entries))]
    sent = len(todo) + sum(len(g.entries) for g in groups)
    total = len(plan.entries) + sum(len(g.entries) for g in plan.groups)
    if todo or groups:
        preflight(config, (todo or list(groups[0].entries))[0].key)
    summary = Summary(files=plan.files, resources=total, skipped=total - sent, superseded=len(plan.superseded))
    summary.failures += [Failure(u.label, None, u.reason) for u in plan.unreadable]
    progress = Progress(sent, progress_stream or sys.stderr, config.progress)
    run = Run(config, state, summary, progress)
    try:
        run.execute(todo, groups)
        if run.stop.is_set() and not summary.stopped:
            summary.stopped, summary.by_user = "interrupted (Ctrl-C / SIGTERM); finished entries are saved", True
        summary.counts[NOT_SENT] += sent - run.finished  # cancelled before they started
    finally:
        state.flush()
        progress.close(run.finished, summary.counts)
        summary.elapsed = time.monotonic() - started
    return summary


def preflight(config: ImportConfig, probe_key: str) -> None:
    """Fail at once, in one line, when no API answers or it rejects the token, rather than retrying and
    failing every entry. One read the import would make anyway; other answers are left to the run."""
    try:
        with httpx.Client(base_url=config.base_url, timeout=min(config.timeout, 15.0), headers={
                "Authorization": f"Bearer {config.token}", "Accept": FHIR_JSON}) as http:
            response = http.get(f"/{probe_key}")
    except httpx.TransportError as exc:
        raise UsageError(f"no API answers at {config.base_url} ({type(exc).__name__}): start the local stack "
                         f"with `make run`, or {AIM_ELSEWHERE}") from None
    if response.status_code == 401:
        raise UsageError(f"the API at {config.base_url} rejects the token (401): pass a valid --token or set "
                         "ESUS_TOKEN (a token for the local stack: `esus token --tenant T --scope system/*.cruds`)")


# ---------- options ----------
def token_tenant(token: str) -> str | None:
    """The `tenant` claim, read without verification (the server verifies; this only labels)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    tenant = claims.get("tenant")
    return tenant if isinstance(tenant, str) and tenant else None


def config_from_args(args: argparse.Namespace, dev_dir: Path) -> ImportConfig:
    """Resolve defaults: the running local stack's URL, ESUS_TOKEN, or a minted dev token."""
    from esus_dev.localstack import stackstate

    if args.base_url:
        local = stackstate.recorded_for(dev_dir, args.base_url) or {}
    else:
        local = stackstate.find_local_stack(dev_dir, getattr(args, "port", None), AIM_ELSEWHERE)
    base_url = (args.base_url or local.get("base_url") or "").rstrip("/")
    is_local = bool(local)
    token = args.token or os.environ.get("ESUS_TOKEN")
    if not token:
        if not is_local:
            raise UsageError("pass --token or set ESUS_TOKEN to import into a deployed API")
        from esus_dev.localstack.devkeys import mint_token

        token = mint_token(args.tenant, "system/*.cruds", lifetime_seconds=12 * 3600, directory=dev_dir)
    tenant = token_tenant(token) or args.tenant
    target = f"{base_url} tenant={tenant}"
    if is_local:  # a restarted local stack is empty: its state must not be reused
        target += f" stack={local.get('aws_endpoint', '')}"
    if args.concurrency < 1 or args.retries < 0:
        raise UsageError("--concurrency must be at least 1 and --retries at least 0")
    return ImportConfig(
        paths=tuple(Path(p) for p in args.paths), base_url=base_url, token=token, tenant=tenant, target=target,
        state_file=Path(args.state_file) if args.state_file else dev_dir / "import-state.json",
        concurrency=args.concurrency, retries=args.retries, resume=args.resume,
        progress=args.progress or sys.stderr.isatty(), timeout=args.timeout, atomic=getattr(args, "atomic", False),
    )


def main(args: argparse.Namespace, dev_dir: Path) -> int:
    from esus_dev.localstack.stackstate import NoLocalStack

    try:
        config = config_from_args(args, dev_dir)
        summary = run_import(config)
    except (UsageError, NoLocalStack) as exc:
        print(f"esus import: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.text())
    return summary.exit_code
