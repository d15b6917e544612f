"""Query-parameter values shared by search and history: _count, _since, single values."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from esus.errors import InvalidRequest
from esus.settings import Settings

DIGITS = re.compile(r"[0-9]+")
FHIR_INTEGER_MAX = 2**31 - 1


def last_value(values: list[str] | None) -> str | None:
    return values[-1] if values else None


def page_size(settings: Settings, raw: str | None) -> int:
    """`_count`: default when absent, capped at the maximum page size."""
    if raw is None or raw == "":
        return settings.page_size_default
    # ASCII digits only (str.isdigit() also accepts '²', which int() rejects), and a FHIR integer
    # (32-bit): the length is checked before int(), which refuses strings over 4,300 digits.
    significant = raw.lstrip("0") if DIGITS.fullmatch(raw) else None
    if significant is None or len(significant) > 10 or int(significant or "0") > FHIR_INTEGER_MAX:
        raise InvalidRequest(f"_count must be an integer from 0 to {FHIR_INTEGER_MAX}")
    return min(int(significant or "0"), settings.page_size_max)


def instant_param(name: str, raw: str | None) -> str | None:
    """A FHIR instant query value -> the stored lastUpdated format (UTC, milliseconds)."""
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        utc = moment.astimezone(UTC)  # OverflowError at the ends of the calendar (0001-01-01T00:00+01:00)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be a FHIR instant like 2024-01-15T10:30:00Z") from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
