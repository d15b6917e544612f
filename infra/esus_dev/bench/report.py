"""What one bench run measured: the rows each phase fills in and render.py prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from esus_dev.bench.machine import Machine, load_average
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

    @property
    def aws_s(self) -> float:
        return sum(c.seconds for c in self.calls)


@dataclass(frozen=True)
class RoundTripRow:
    interaction: Interaction
    counts: tuple[int, ...]  # DynamoDB calls per request, over every warm request
    http_attempts: tuple[int, ...]
    ops: str
    other_services: int

    @property
    def measured(self) -> str:
        low, high = min(self.counts), max(self.counts)
        return str(low) if low == high else f"{low}-{high}"

    @property
    def verdict(self) -> str:
        target = self.interaction.target
        if target is None:
            return "no target"
        worst = max(self.counts)
        return "meets target" if worst <= target else f"ABOVE target (+{worst - target})"

    @property
    def target_text(self) -> str:
        target = self.interaction.target
        if target is None:
            return "-"
        return f"<= {target}" if self.interaction.at_most else str(target)


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
class ColdRow:
    function: str
    request: str
    import_ms: float
    first_request_ms: float
    first_request_aws_ms: float
    process_ms: float
    aws_calls: str
    status: int

    @property
    def init_ms(self) -> float:
        return self.import_ms + self.first_request_ms


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
    authorizer_ms: tuple[float, float] = (0.0, 0.0)
    cold: list[ColdRow] = field(default_factory=list)
    import_breakdown: list[tuple[str, float]] = field(default_factory=list)  # (top-level package, ms self time)
    crypto: list[CryptoRow] = field(default_factory=list)
    compartment: list[CompartmentRow] = field(default_factory=list)
    codec_overhead_us: float = 0.0
    codec_detail: str = ""
    elapsed_s: float = 0.0
    load_start: str = field(default_factory=lambda: load_average())
    load_end: str = ""
