"""What one bench run measured: the rows each phase fills in and render.py prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from esus_dev.bench.importcheck import ImportCheck
from esus_dev.bench.machine import Machine, load_average
from esus_dev.bench.profile import ImportProfile
from esus_dev.bench.recorder import AwsCall

BARE = "bare"  # the ColdRow of the baseline handler


@dataclass(frozen=True)
class Interaction:
    name: str
    function: str
    target: int | None = None
    at_most: bool = False
    design: str = ""  # why the count is what it is, shown when it differs from the target


@dataclass
class Sample:
    """One warm request: route handler time, authorizer time and the AWS calls the handler made."""

    interaction: str
    handler_s: float
    authorizer_s: float
    calls: list[AwsCall]
    raw_s: float = 0.0
    results: int | None = None  # searches: results returned (or counted, for _summary=count)

    @property
    def decrypted(self) -> int:
        """Current items read by BatchGetItem: each is decrypted (and, in a search, re-checked)."""
        return sum(len(t.get("Keys", [])) for c in self.calls if c.operation == "BatchGetItem"
                   for t in c.params.get("RequestItems", {}).values())

    @property
    def aws_s(self) -> float:
        """Wall time inside boto3 calls: calls issued side by side (threads) are counted once."""
        total, reach = 0.0, float("-inf")
        for call in sorted(self.calls, key=lambda c: c.started):
            end = call.started + call.seconds
            total += max(0.0, end - max(call.started, reach))
            reach = max(reach, end)
        return total


@dataclass(frozen=True)
class RoundTripRow:
    interaction: Interaction
    counts: tuple[int, ...]  # DynamoDB calls per request, over every warm request
    http_attempts: tuple[int, ...]
    ops: str
    other_services: int
    # Round trips of latency per request: calls issued side by side count once (recorder.in_sequence).
    sequential: tuple[int, ...] = ()

    @property
    def measured(self) -> str:
        return _span(self.counts)

    @property
    def in_sequence(self) -> str:
        return _span(self.sequential or self.counts)

    @property
    def verdict(self) -> str:
        """Targets are round trips of latency (what a client waits for)."""
        target = self.interaction.target
        if target is None:
            return "no target"
        worst = max(self.sequential or self.counts)
        return "meets target" if worst <= target else f"ABOVE target (+{worst - target})"


    @property
    def target_text(self) -> str:
        target = self.interaction.target
        if target is None:
            return "-"
        return f"<= {target}" if self.interaction.at_most else str(target)


def _span(values: tuple[int, ...]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class TimingRow:
    interaction: str
    function: str
    n: int
    handler_median_ms: float
    handler_p95_ms: float
    in_request_aws_ms: float
    raw_median_ms: float
    raw_p95_ms: float
    ratio: float  # median over requests of handler / raw (paired: same request, measured back to back)
    outside_aws_ms: float  # median over requests of handler time minus the time inside its boto3 calls


@dataclass(frozen=True)
class SearchRow:
    interaction: str
    round_trips: str
    handler_median_ms: float
    results: str  # returned (or counted) per request, min-max
    per_result_median: float  # candidates decrypted per returned result
    per_result_max: float


@dataclass(frozen=True)
class ColdRow:
    function: str
    request: str
    import_ms: float
    first_request_ms: float
    first_request_aws_ms: float
    process_ms: float
    aws_calls: str
    status: int
    ratio: float = 1.0  # median over pairs of (import + first request) / the bare handler's, run back to back
    import_ratio: float = 1.0  # the same for the import alone
    own_ratio: float = 1.0  # the same without the time waiting on AWS (moto here) in either child
    primed_first_request_ms: float | None = None  # after esus.snapstart.prime (what a SnapStart restore leaves)
    gc_import_ms: float = 0.0  # in CPython's cyclic garbage collector, during the import
    gc_first_request_ms: float = 0.0  # ... and during the first request
    kept_garbage: int = 0  # objects in garbage cycles esus.coldstart's freezes kept (max over rounds)

    @property
    def init_ms(self) -> float:
        return self.import_ms + self.first_request_ms


@dataclass(frozen=True)
class TransactionRow:
    """One transaction Bundle (docs/TRANSACTIONS.md): what it cost."""

    label: str
    entries: int
    created: int
    calls: int  # DynamoDB API calls
    round_trips: int  # sequential: calls issued concurrently count once
    wall_ms: float
    prepare_ms: float  # before the first write: parse, validate, encrypt, index (CPU on this machine)
    write_units: int
    bytes_in: int
    ops: str


@dataclass(frozen=True)
class ReadRow:
    """A plain read, with or without a large transaction holding the item."""

    situation: str
    calls: int
    handler_median_ms: float
    aws_median_ms: float


@dataclass(frozen=True)
class CryptoRow:
    operation: str
    detail: str
    per_second: float

    @property
    def micros(self) -> float:
        return 1e6 / self.per_second


@dataclass(frozen=True)
class CompartmentRow:
    """One paged compartment read (bench.compartment): per page of its first run."""

    name: str
    source: str
    url: str
    pages: int
    entries: int
    calls_per_page: tuple[int, ...]  # DynamoDB calls, page by page
    operations: dict[str, float]  # mean calls per page, by operation
    handler_median_ms: float
    handler_max_ms: float


@dataclass
class Report:
    machine: Machine
    settings: dict[str, str]
    round_trips: list[RoundTripRow] = field(default_factory=list)
    warm_requests: int = 0
    warm_secret_calls: Counter[str] = field(default_factory=Counter)
    first_request_calls: Counter[str] = field(default_factory=Counter)
    timings: list[TimingRow] = field(default_factory=list)
    searches: list[SearchRow] = field(default_factory=list)
    authorizer_ms: tuple[float, float] = (0.0, 0.0)
    cold: list[ColdRow] = field(default_factory=list)
    first_request_imports: list[tuple[str, float]] = field(default_factory=list)  # CreateFunction's, (package, ms)
    import_checks: list[ImportCheck] = field(default_factory=list)  # `python -c "import app"` vs bare, per function
    import_profile: ImportProfile | None = None  # CreateFunction's `import app`, this run
    crypto: list[CryptoRow] = field(default_factory=list)
    transactions: list[TransactionRow] = field(default_factory=list)
    reads: list[ReadRow] = field(default_factory=list)
    compartment: list[CompartmentRow] = field(default_factory=list)
    codec_overhead_us: float = 0.0
    codec_detail: str = ""
    elapsed_s: float = 0.0
    load_start: str = field(default_factory=lambda: load_average())
    load_end: str = ""
