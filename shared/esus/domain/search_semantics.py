"""FHIR R4 search semantics, pure (no storage, no keys): value extraction with FHIRPath, normalisation,
query parsing, the brute-force matcher, and the index terms a value is stored under / a query looks up.

`matches` is the final word on every result (candidates found through the index are re-checked with it)
and the oracle of the property test, so the index can only ever narrow, never decide. See docs/SEARCH.md.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from esus.domain import fhirpath_plans
from esus.domain.fhir import REFERENCE_PATTERN
from esus.domain.search_params import SearchParam, params_for
from esus.errors import InvalidRequest

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = frozenset({"date", "number", "quantity"})
# Result parameters: they shape the answer, never which resources match.
RESULT_PARAMS = frozenset({"_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_format", "_pretty"})
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "missing"}),
    "reference": frozenset({"missing"}),  # plus :Type, checked against the parameter's targets
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"missing"}),
}
STRING_PREFIX_LENGTHS = (1, 2, 3, 4, 6, 8)
MAX_WORDS_PER_VALUE = 32
PHONE_SYSTEMS = frozenset({"phone", "sms", "fax", "pager"})
PHONE_SIGNIFICANT_DIGITS = 10
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


# ---------- extraction ----------
@lru_cache(maxsize=1024)
def _compiled(expression: str) -> Callable[[Any], list[Any]]:
    # fhirpathpy (and its ANTLR runtime) loads on the first extraction, not with every function (cold start).
    from fhirpathpy import compile as fhirpath_compile
    from fhirpathpy.models import models as fhirpath_models

    compiled = fhirpath_compile(expression, fhirpath_models["r4"])
    return lambda resource: list(compiled(resource, None))


def extract(param: SearchParam, resource: dict[str, Any]) -> list[Any]:
    """The values a parameter's expression selects in a resource (FHIRPath, R4 model): by the generated plan
    where the expression has one, which loads nothing, else by fhirpathpy."""
    if param.plan is not None:
        return [v for v in fhirpath_plans.evaluate(param.plan, resource) if v is not None]
    try:
        values = _compiled(param.expression)(resource)
    except Exception:  # noqa: BLE001 (fhirpathpy raises bare Exceptions on data it cannot walk)
        return []
    return [v for v in values if v is not None]


# ---------- normalisation ----------
def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w]+", fold(text)) if w]


def normalise_phone(value: str) -> str:
    """Digits only, the last 10 (the national number): "+1 555-326-5839" and "555.326.5839" are equal."""
    return re.sub(r"\D", "", value)[-PHONE_SIGNIFICANT_DIGITS:]


def contact_value(system: str | None, value: str) -> str:
    if system == "email" or (system is None and "@" in value):
        return value.strip().lower()
    if system in PHONE_SYSTEMS or system is None:
        return normalise_phone(value) or value.strip().lower()
    return value.strip().lower()


# Members of a HumanName or Address that are not its text (codes, periods, extensions).
NON_TEXT_PARTS = frozenset({"use", "period", "extension", "id", "type"})


def string_values(value: Any) -> list[str]:
    """The searchable text parts of a string-parameter value (HumanName and Address by part)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        parts: list[str] = []
        for key, item in value.items():
            if key in NON_TEXT_PARTS:
                continue
            parts += [i for i in (item if isinstance(item, list) else [item]) if isinstance(i, str)]
        return parts
    return []


def token_values(param: SearchParam, value: Any) -> list[tuple[str | None, str]]:
    """(system or None, code) pairs of a token value (Coding, CodeableConcept, Identifier, ContactPoint,
    code/string/boolean). ContactPoints are normalised like phone numbers and e-mail addresses."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int | float):
        return [(None, str(value))]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("coding"), list):
        return [p for c in value["coding"] for p in token_values(param, c)]
    if "telecom" in param.expression and isinstance(value.get("value"), str):
        system = value.get("system") if isinstance(value.get("system"), str) else None
        return [(system, contact_value(system, value["value"]))]
    system = value.get("system") if isinstance(value.get("system"), str) else None
    code = value.get("code", value.get("value"))
    return [(system, str(code).strip())] if isinstance(code, str | int | float | bool) else []


def reference_values(param: SearchParam, value: Any) -> list[str]:
    """`Type/id` of a Reference (or canonical), any base URL and version dropped."""
    text = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(text, str):
        return []
    match = REFERENCE_PATTERN.match(text.strip())
    if not match:
        return []
    reference = f"{match.group('type')}/{match.group('id')}"
    if param.resolve and match.group("type") != param.resolve:
        return []
    return [reference]


@dataclass(frozen=True)
class DateRange:
    """[low, high): a date of some precision, an instant (one second or finer) or a Period."""

    low: datetime
    high: datetime


DATE_PATTERN = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _add_months(moment: datetime, months: int) -> datetime:
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    if year > 9999:
        return MAX_INSTANT
    return moment.replace(year=year, month=month + 1)


def date_range(text: str) -> DateRange | None:
    match = DATE_PATTERN.match(text.strip())
    if not match:
        return None
    try:
        year = int(match["y"])
        if match["m"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return DateRange(low, _add_months(low, 12))
        if match["d"] is None:
            low = datetime(year, int(match["m"]), 1, tzinfo=UTC)
            return DateRange(low, _add_months(low, 1))
        if match["H"] is None:
            low = datetime(year, int(match["m"]), int(match["d"]), tzinfo=UTC)
            return DateRange(low, min(low + timedelta(days=1), MAX_INSTANT))
        stamp = text.strip()
        if match["tz"] is None:
            stamp += "Z"  # no zone: read as UTC
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
        if match["S"] is None:
            step = timedelta(minutes=1)
        elif match["f"]:
            step = timedelta(microseconds=max(1, 10 ** (6 - min(6, len(match["f"]) - 1))))
        else:
            step = timedelta(seconds=1)
        return DateRange(moment, min(moment + step, MAX_INSTANT))
    except (ValueError, OverflowError):
        return None


def date_values(value: Any) -> list[DateRange]:
    if isinstance(value, str):
        found = date_range(value)
        return [found] if found else []
    if isinstance(value, dict):
        if "start" in value or "end" in value:  # Period: open ends are unbounded
            start = date_range(str(value["start"])) if value.get("start") else None
            end = date_range(str(value["end"])) if value.get("end") else None
            if (value.get("start") and start is None) or (value.get("end") and end is None):
                return []
            low = start.low if start else MIN_INSTANT
            high = end.high if end else MAX_INSTANT
            return [DateRange(low, high)] if low < high else []
        if isinstance(value.get("event"), list):  # Timing
            return [r for e in value["event"] for r in date_values(e)]
    if hasattr(value, "isoformat"):
        return date_values(str(value))
    return []


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


@dataclass(frozen=True)
class Amount:
    value: Decimal
    system: str | None = None
    code: str | None = None
    unit: str | None = None


def amount_values(param: SearchParam, value: Any) -> list[Amount]:
    if param.type == "number":
        number = _decimal(value)
        return [Amount(number)] if number is not None else []
    if isinstance(value, dict) and "value" in value:  # Quantity (and its profiles Age, Duration ...)
        number = _decimal(value["value"])
        if number is None:
            return []
        return [Amount(number, value.get("system"), value.get("code"), value.get("unit"))]
    return []


# ---------- query values ----------
@dataclass(frozen=True)
class QueryValue:
    raw: str
    prefix: str = "eq"
    text: str = ""  # string: the raw text
    token: tuple[str | None, str | None] = (None, None)  # system (None any, "" none), code (None any)
    references: frozenset[str] = frozenset()
    range: DateRange | None = None
    number: Decimal | None = None
    number_low: Decimal | None = None  # eq range implied by the number's precision
    number_high: Decimal | None = None
    system: str | None = None  # quantity unit system and code
    code: str | None = None
    missing: bool | None = None


@dataclass(frozen=True)
class Criterion:
    """One AND-ed parameter (`name` as sent) with its OR-ed values."""

    name: str
    param: SearchParam
    modifier: str | None
    values: tuple[QueryValue, ...]


@dataclass
class ParsedSearch:
    criteria: list[Criterion]
    ignored: list[str] = field(default_factory=list)
    applied: dict[str, list[str]] = field(default_factory=dict)  # what the self link shows


def split_values(raw: str) -> list[str]:
    """Comma-separated OR values; `\\,` is a literal comma."""
    parts, current, escaped = [], "", False
    for char in raw:
        if escaped:
            current += char if char == "," else "\\" + char  # other escapes are the value's own
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current + ("\\" if escaped else ""))
    return parts


def _prefixed(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[2:3].isalpha():
        return raw[:2], raw[2:]
    return "eq", raw


def _number_bounds(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A number and the range its written precision implies: 100 -> [99.5, 100.5)."""
    number = _decimal(text)
    if number is None or not re.fullmatch(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?", text.strip()):
        raise ValueError(text)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return number, number - half, number + half


def parse_value(param: SearchParam, modifier: str | None, raw: str, name: str) -> QueryValue:
    def bad(what: str) -> InvalidRequest:
        return InvalidRequest(f"Search parameter '{name[:64]}': '{raw[:60]}' is not {what}")

    if param.type != "token":
        raw = _unescape(raw)
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise bad("true or false")
        return QueryValue(raw, missing=raw == "true")
    kind = param.type
    if kind == "string":
        if not words(raw):
            raise bad("a searchable text")
        return QueryValue(raw, text=raw)
    if kind == "token":
        system, sep, code = _split_unescaped(raw, "|")
        system, code = _unescape(system), _unescape(code)
        if not sep:
            if not system:
                raise bad("a code")
            return QueryValue(raw, token=(None, _token_code(param, None, system)))
        if not code and not system:
            raise bad("a code or system|code")
        return QueryValue(raw, token=(system, _token_code(param, system or None, code) if code else None))
    if kind == "reference":
        return QueryValue(raw, references=frozenset(_query_references(param, modifier, raw, bad)))
    if kind == "uri":
        if not raw:
            raise bad("a URI")
        return QueryValue(raw, text=raw)
    prefix, rest = _prefixed(raw)
    if kind == "date":
        found = date_range(rest)
        if found is None:
            raise bad("a FHIR date or dateTime (e.g. 2024, 2024-06, 2024-06-10, 2024-06-10T10:00:00Z)")
        return QueryValue(raw, prefix, range=found)
    number_text, unit_system, unit_code = rest, None, None
    if kind == "quantity":
        number_text, _, unit = rest.partition("|")
        system_text, sep, code_text = unit.partition("|")
        unit_system, unit_code = (system_text or None, code_text or None) if sep else (None, system_text or None)
    try:
        number, low, high = _number_bounds(number_text)
    except ValueError:
        raise bad("a number" if kind == "number" else "a quantity like 100, gt5.4|http://unitsofmeasure.org|mg") \
            from None
    return QueryValue(raw, prefix, number=number, number_low=low, number_high=high, system=unit_system,
                      code=unit_code)


def _unescape(raw: str) -> str:
    return re.sub(r"\\([\\|$,])", r"\1", raw)


def _split_unescaped(raw: str, sep: str) -> tuple[str, str, str]:
    for i, char in enumerate(raw):
        if char == sep and (i == 0 or raw[i - 1] != "\\"):
            return raw[:i], sep, raw[i + 1 :]
    return raw, "", ""


def _token_code(param: SearchParam, system: str | None, code: str) -> str:
    if "telecom" in param.expression:
        if param.code == "phone":
            return normalise_phone(code) or code.strip()
        if param.code == "email":
            return code.strip().lower()
        return contact_value(system, code)
    return code.strip()


def _query_references(param: SearchParam, modifier: str | None, raw: str, bad: Callable[[str], InvalidRequest]
                      ) -> set[str]:
    match = REFERENCE_PATTERN.match(raw.strip())
    if match:
        resource_type, resource_id = match.group("type"), match.group("id")
        if modifier and modifier != resource_type:
            raise bad(f"a {modifier} reference")
        return {f"{resource_type}/{resource_id}"}
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", raw.strip()):
        raise bad("a reference like Type/id, an id or a URL of this server")
    if modifier:
        types: tuple[str, ...] = (modifier,)
    elif param.resolve:
        types = (param.resolve,)
    else:
        types = param.targets
    if not types:
        raise bad("a typed reference (Type/id)")
    return {f"{t}/{raw.strip()}" for t in types}


def parse_search(resource_type: str, params: dict[str, list[str]], lenient: bool) -> ParsedSearch:
    """Query parameters -> AND-ed criteria. Unknown parameters or modifiers are a 400, unless lenient."""
    offered = params_for(resource_type)
    parsed = ParsedSearch([])
    for name, raw_values in params.items():
        if name in RESULT_PARAMS:
            if name != "_cursor":
                parsed.applied[name] = list(raw_values)
            continue
        code, _, modifier = name.partition(":")
        param = offered.get(code)
        problem = None
        if param is None:
            problem = f"Unknown search parameter '{name[:64]}' for {resource_type}"
        elif modifier and modifier not in MODIFIERS[param.type] and not (
                param.type == "reference" and modifier in (param.targets or (modifier,))
                and re.fullmatch(r"[A-Z][A-Za-z]+", modifier)):
            problem = f"Search parameter '{name[:64]}': modifier ':{modifier[:30]}' is not supported"
        if problem is not None:
            if lenient:
                parsed.ignored.append(name)
                continue
            raise InvalidRequest(problem)
        assert param is not None
        for raw in raw_values:
            parts = split_values(raw) if modifier != "missing" else [raw]
            if not any(parts):
                raise InvalidRequest(f"Search parameter '{name[:64]}' needs a value")
            values = tuple(parse_value(param, modifier or None, p, name) for p in parts if p != "")
            parsed.criteria.append(Criterion(name, param, modifier or None, values))
        parsed.applied[name] = list(raw_values)
    return parsed


# ---------- matching (the oracle) ----------
def matches(resource: dict[str, Any], criteria: Iterable[Criterion]) -> bool:
    """True when the resource satisfies every criterion (FHIR semantics, exact)."""
    return all(_criterion_matches(resource, c) for c in criteria)


def _criterion_matches(resource: dict[str, Any], criterion: Criterion) -> bool:
    raw_values = extract(criterion.param, resource)
    if criterion.modifier == "missing":
        present = bool(_normalised(criterion.param, raw_values))
        return any(v.missing is not present for v in criterion.values)
    if criterion.modifier == "not":  # token :not: no value of the resource matches any query value
        found = _normalised(criterion.param, raw_values)
        return not any(_value_matches(criterion, v, found) for v in criterion.values)
    found = _normalised(criterion.param, raw_values)
    return any(_value_matches(criterion, v, found) for v in criterion.values)


def _normalised(param: SearchParam, raw_values: list[Any]) -> list[Any]:
    kind = param.type
    if kind == "string":
        return [s for v in raw_values for s in string_values(v) if s.strip()]
    if kind == "token":
        return [t for v in raw_values for t in token_values(param, v) if t[1]]
    if kind == "reference":
        return [r for v in raw_values for r in reference_values(param, v)]
    if kind == "date":
        return [r for v in raw_values for r in date_values(v)]
    if kind in ("number", "quantity"):
        return [a for v in raw_values for a in amount_values(param, v)]
    return [v for v in raw_values if isinstance(v, str)]  # uri


def _value_matches(criterion: Criterion, query: QueryValue, found: list[Any]) -> bool:
    kind = criterion.param.type
    if kind == "string":
        return any(string_matches(criterion.modifier, query.text, s) for s in found)
    if kind == "token":
        return any(token_matches(query.token, t) for t in found)
    if kind == "reference":
        return any(r in query.references for r in found)
    if kind == "date":
        assert query.range is not None
        return any(date_matches(query.prefix, query.range, r) for r in found)
    if kind in ("number", "quantity"):
        return any(amount_matches(query, a) for a in found)
    return query.text in found  # uri: exact


def string_matches(modifier: str | None, query: str, value: str) -> bool:
    if modifier == "exact":
        return value == query
    folded_value, folded_query = " ".join(words(value)), " ".join(words(query))
    if modifier == "contains":
        return folded_query in folded_value
    return any(folded_value.startswith(folded_query, start) for start in _word_starts(folded_value))


def _word_starts(folded: str) -> Iterator[int]:
    yield 0
    for i, char in enumerate(folded):
        if char == " ":
            yield i + 1


def token_matches(query: tuple[str | None, str | None], value: tuple[str | None, str]) -> bool:
    system, code = query
    if code is not None and value[1] != code:
        return False
    if system is None:
        return True
    if system == "":
        return value[0] is None
    return value[0] == system


def date_matches(prefix: str, query: DateRange, value: DateRange, now: datetime | None = None) -> bool:
    """FHIR R4 prefix semantics on ranges (search.html#prefix)."""
    contained = query.low <= value.low and value.high <= query.high
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not contained
    if prefix == "gt":
        return value.high > query.high
    if prefix == "lt":
        return value.low < query.low
    if prefix == "ge":
        return value.high > query.high or contained
    if prefix == "le":
        return value.low < query.low or contained
    if prefix == "sa":
        return value.low >= query.high
    if prefix == "eb":
        return value.high <= query.low
    widened = approximate(query, now)
    return value.low < widened.high and widened.low < value.high


def approximate(query: DateRange, now: datetime | None = None) -> DateRange:
    """`ap`: the value's range widened by 10% of its distance from now (at least a day)."""
    now = now or datetime.now(UTC)
    gap = max(abs(now - query.low), abs(now - query.high)) / 10
    gap = max(gap, timedelta(days=1))
    low = query.low - gap if query.low - MIN_INSTANT > gap else MIN_INSTANT
    high = query.high + gap if MAX_INSTANT - query.high > gap else MAX_INSTANT
    return DateRange(low, high)


def amount_matches(query: QueryValue, amount: Amount) -> bool:
    if query.code is not None and query.code not in (amount.code, amount.unit):
        return False
    if query.system is not None and query.system != amount.system:
        return False
    assert query.number is not None and query.number_low is not None and query.number_high is not None
    value, number = amount.value, query.number
    in_range = query.number_low <= value < query.number_high
    return {
        "eq": in_range, "ne": not in_range, "gt": value > number, "lt": value < number,
        "ge": value >= number, "le": value <= number, "sa": value > number, "eb": value < number,
        "ap": abs(value - number) <= abs(number) / 10,
    }[query.prefix]


# ---------- index terms (before keying: clear parameters store them as they are, others as HMAC) ----------
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})  # answered from the key itself and from the change log


def index_terms(param: SearchParam, resource: dict[str, Any]) -> set[str]:
    """The terms a resource is stored under in one parameter's own index partitions: none for a parameter
    whose terms its wider parameter's items already hold (`indexed_under`: looked up there)."""
    return set() if param.indexed_under else value_terms(param, resource)


def value_terms(param: SearchParam, resource: dict[str, Any]) -> set[str]:
    """The terms of one parameter's values in a resource (bounded per value, docs/SEARCH.md)."""
    if param.code in NOT_INDEXED:
        return set()
    found = _normalised(param, extract(param, resource))
    terms: set[str] = set()
    kind = param.type
    for value in found:
        if kind == "string":
            for word in words(value)[:MAX_WORDS_PER_VALUE]:
                terms.update(f"p:{word[:n]}" for n in STRING_PREFIX_LENGTHS if n <= len(word) or n == 1)
                terms.add(f"p:{word[:STRING_PREFIX_LENGTHS[-1]]}")
        elif kind == "token":
            system, code = value
            terms.add(f"c:{code}")
            terms.add(f"s:{system}|{code}" if system else f"n:{code}")
        elif kind == "reference":
            terms.add(f"r:{value}")
        elif kind == "date":
            terms.update(date_terms(value))
        elif kind in ("number", "quantity"):
            terms.add(f"q:{magnitude_bucket(value.value)}")
        else:
            terms.add(f"u:{value}")
    return terms


def lookup_terms(criterion: Criterion) -> list[str] | None:
    """Terms whose partitions together hold every resource the criterion can match (a superset), or
    None when the index cannot narrow it (:not, :missing, :contains, ne, system-only tokens)."""
    if criterion.modifier in ("not", "missing", "contains") or criterion.param.code in NOT_INDEXED:
        return None
    terms: set[str] = set()
    for query in criterion.values:
        found = _query_terms(criterion.param, query)
        if found is None:
            return None
        terms.update(found)
    return sorted(terms)


def _query_terms(param: SearchParam, query: QueryValue) -> set[str] | None:
    kind = param.type
    if kind == "string":
        first = words(query.text)[0]
        length = max(n for n in STRING_PREFIX_LENGTHS if n <= len(first))
        return {f"p:{first[:length]}"}
    if kind == "token":
        system, code = query.token
        if code is None:
            return None
        if system is None:
            return {f"c:{code}"}
        return {f"s:{system}|{code}"} if system else {f"n:{code}"}
    if kind == "reference":
        return {f"r:{r}" for r in query.references}
    if kind == "date":
        assert query.range is not None
        span = date_span(query.prefix, query.range)
        return None if span is None else date_lookup_terms(span)
    if kind in ("number", "quantity"):
        bounds = _number_span(query)
        return None if bounds is None else {f"q:{b}" for b in buckets_between(*bounds)}
    return {f"u:{query.text}"}


# ---------- dates as calendar units ----------
# Levels, coarsest first: era (before 1800, each century 1800-2199, from 2200), decade, year, month, day.
LEVELS = ("era", "decade", "year", "month", "day")
MAX_UNITS_PER_LEVEL = 4


def _era(year: int) -> str:
    return "E-" if year < 1800 else "E+" if year >= 2200 else f"C{year // 100}"


def unit_of(level: str, moment: datetime) -> str:
    if level == "era":
        return _era(moment.year)
    if level == "decade":
        return f"D{moment.year // 10}"
    if level == "year":
        return f"Y{moment.year}"
    if level == "month":
        return f"M{moment.year}-{moment.month:02d}"
    return f"T{moment.year}-{moment.month:02d}-{moment.day:02d}"


def unit_bounds(unit: str) -> DateRange:
    kind, rest = unit[0], unit[1:]
    if unit == "E-":
        return DateRange(MIN_INSTANT, datetime(1800, 1, 1, tzinfo=UTC))
    if unit == "E+":
        return DateRange(datetime(2200, 1, 1, tzinfo=UTC), MAX_INSTANT)
    if kind == "C":
        return DateRange(datetime(int(rest) * 100, 1, 1, tzinfo=UTC), datetime(int(rest) * 100 + 100, 1, 1, tzinfo=UTC))
    if kind == "D":
        start = datetime(max(1, int(rest) * 10), 1, 1, tzinfo=UTC)
        end_year = int(rest) * 10 + 10
        return DateRange(start, datetime(end_year, 1, 1, tzinfo=UTC) if end_year <= 9999 else MAX_INSTANT)
    found = date_range(rest)
    assert found is not None
    return found


def _next(level: str, unit: str) -> datetime:
    return unit_bounds(unit).high


def units_overlapping(level: str, span: DateRange, limit: int) -> list[str] | None:
    """Units of a level that overlap the span, or None when there are more than `limit`."""
    units: list[str] = []
    moment = span.low
    while moment < span.high:
        if len(units) >= limit:
            return None
        unit = unit_of(level, moment)
        units.append(unit)
        nxt = _next(level, unit)
        if nxt <= moment or nxt >= MAX_INSTANT:
            break
        moment = nxt
    return units


def date_terms(value: DateRange) -> set[str]:
    """in:U for every unit the value overlaps, level by level while at most 4 per level (eras always);
    at:U for the units of the finest level reached, when that is coarser than a day."""
    terms: set[str] = set()
    last: list[str] = []
    for level in LEVELS:
        units = units_overlapping(level, value, 6 if level == "era" else MAX_UNITS_PER_LEVEL)
        if units is None:
            break
        terms.update(f"in:{u}" for u in units)
        last = units
        if level == "day":
            return terms
    terms.update(f"at:{u}" for u in last)
    return terms


def date_span(prefix: str, query: DateRange, now: datetime | None = None) -> DateRange | None:
    """The time a matching value must overlap, per prefix (None for `ne`: not narrowable)."""
    if prefix == "eq":
        return query
    if prefix in ("gt", "sa"):
        return DateRange(query.high, MAX_INSTANT)
    if prefix == "ge":
        return DateRange(query.low, MAX_INSTANT)
    if prefix in ("lt", "eb"):
        return DateRange(MIN_INSTANT, query.low)
    if prefix == "le":
        return DateRange(MIN_INSTANT, query.high)
    if prefix == "ap":
        return approximate(query, now)
    return None


def _floor(level: str, moment: datetime) -> datetime:
    return unit_bounds(unit_of(level, moment)).low


def date_lookup_terms(span: DateRange) -> set[str]:
    """Cover the span with calendar units, coarsest first (edges rounded outwards to months, years or
    decades when the span is wide), look up in:U for each and at:A for each coarser ancestor A."""
    if span.low >= span.high:
        return set()
    width = span.high - span.low
    finest = "day" if width <= timedelta(days=10) else "month" if width <= timedelta(days=731) else \
        "year" if width <= timedelta(days=3653 * 3) else "decade"
    allowed = LEVELS[: LEVELS.index(finest) + 1]
    moment = _floor(finest, span.low)
    cover: list[tuple[str, str]] = []
    while moment < span.high:
        for level in allowed:
            unit = unit_of(level, moment)
            bounds = unit_bounds(unit)
            if bounds.low == moment and (bounds.high <= span.high or level == finest):
                cover.append((level, unit))
                moment = bounds.high
                break
        else:  # only at the era boundary before 1800 (eras are not aligned there): take the finest unit
            unit = unit_of(finest, moment)
            cover.append((finest, unit))
            moment = unit_bounds(unit).high
        if moment >= MAX_INSTANT:
            break
    terms = {f"in:{unit}" for _, unit in cover}
    for level, unit in cover:
        middle = unit_bounds(unit).low
        for coarser in LEVELS[: LEVELS.index(level)]:
            terms.add(f"at:{unit_of(coarser, middle)}")
    return terms


# ---------- numbers as power-of-ten buckets ----------
MIN_EXPONENT, MAX_EXPONENT = -9, 12


def magnitude_bucket(value: Decimal) -> str:
    if value == 0:
        return "Z"
    exponent = max(MIN_EXPONENT, min(MAX_EXPONENT, math.floor(abs(value).log10())))
    return f"{'P' if value > 0 else 'N'}{exponent}"


def _bucket_hull(bucket: str) -> tuple[Decimal | None, Decimal | None]:
    """Closed hull of a bucket's values (None = unbounded)."""
    if bucket == "Z":
        return Decimal(0), Decimal(0)
    exponent = int(bucket[1:])
    low = None if exponent == MIN_EXPONENT else Decimal(10) ** exponent
    high = None if exponent == MAX_EXPONENT else Decimal(10) ** (exponent + 1)
    if bucket[0] == "P":
        return (low if low is not None else Decimal(0)), high
    return (-high if high is not None else None), (-low if low is not None else Decimal(0))


ALL_BUCKETS = ("Z", *(f"{s}{e}" for s in "PN" for e in range(MIN_EXPONENT, MAX_EXPONENT + 1)))


def buckets_between(low: Decimal | None, high: Decimal | None) -> list[str]:
    found = []
    for bucket in ALL_BUCKETS:
        b_low, b_high = _bucket_hull(bucket)
        if (high is None or b_low is None or b_low <= high) and (low is None or b_high is None or b_high >= low):
            found.append(bucket)
    return found


def _number_span(query: QueryValue) -> tuple[Decimal | None, Decimal | None] | None:
    number, low, high = query.number, query.number_low, query.number_high
    assert number is not None and low is not None and high is not None
    if query.prefix == "eq":
        return low, high
    if query.prefix in ("gt", "ge", "sa"):
        return number, None
    if query.prefix in ("lt", "le", "eb"):
        return None, number
    if query.prefix == "ap":
        return number - abs(number) / 10, number + abs(number) / 10
    return None


# ---------- sorting ----------
def sort_key(param: SearchParam, resource: dict[str, Any], descending: bool) -> datetime | None:
    """Ascending: a resource's earliest value; descending: its latest (FHIR leaves the choice to us)."""
    ranges = date_values_of(param, resource)
    if not ranges:
        return None
    return max(r.high for r in ranges) if descending else min(r.low for r in ranges)


def date_values_of(param: SearchParam, resource: dict[str, Any]) -> list[DateRange]:
    return [r for v in extract(param, resource) for r in date_values(v)]
