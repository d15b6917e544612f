"""Query-parameter values shared by search and history: _count, _since, single values."""

from __future__ import annotations

from datetime import UTC, datetime

from esus.errors import InvalidRequest
from esus.settings import Settings


def last_value(values: list[str] | None) -> str | None:
    return values[-1] if values else None


def page_size(settings: Settings, raw: str | None) -> int:
    """`_count`: default when absent, capped at the maximum page size."""
    if raw is None or raw == "":
        return settings.page_size_default
    if not raw.isdigit():
        raise InvalidRequest("_count must be a non-negative integer")
    return min(int(raw), settings.page_size_max)


def instant_param(name: str, raw: str | None) -> str | None:
    """A FHIR instant query value -> the stored lastUpdated format (UTC, milliseconds)."""
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name} must be a FHIR instant like 2024-01-15T10:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
