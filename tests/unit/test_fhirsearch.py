"""Search semantics without storage: normalisation, FHIR date ranges and prefixes, token and reference
parsing, and the index soundness rule (whatever matches shares a term with its lookup)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esus.domain.search_params import lookup_param, params_for
from esus.domain.search_semantics import (
    DateRange,
    date_lookup_terms,
    date_matches,
    date_range,
    date_span,
    date_terms,
    fold,
    index_terms,
    lookup_terms,
    matches,
    parse_search,
    split_values,
    string_matches,
    value_terms,
)
from esus.errors import InvalidRequest
from tests.conftest import EXAMPLES, SYNTHEA


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def search(resource_type: str, **params: str) -> Any:
    return parse_search(resource_type, {k.replace("__", ":").replace("_", "-") if not k.startswith("_") else k: [v]
                                        for k, v in params.items()}, lenient=False).criteria


def hit(resource: dict[str, Any], query: str) -> bool:
    key, _, value = query.partition("=")
    criteria = parse_search(resource["resourceType"], {key: [value]}, lenient=False).criteria
    return matches(resource, criteria)


PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2024-06-10T10:00:00.123Z"},
           "name": [{"family": "Chalmers", "given": ["Renée", "James"], "prefix": ["Mr."]}],
           "gender": "female", "birthDate": "1961-05-12",
           "telecom": [{"system": "phone", "value": "+1 (555) 326-5839"}, {"system": "email", "value": "R@X.org"}],
           "identifier": [{"system": "urn:mrn", "value": "MRN-1"}],
           "address": [{"line": ["534 Erewhon St"], "city": "Oakvale", "postalCode": "3999"}]}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-06-10T10:00:00Z",
               "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                 "code": "mm[Hg]"}}


def test_fold_and_string_semantics() -> None:
    assert fold("Renée") == "renee" and fold("ÅNGSTRÖM") == "angstrom"
    assert string_matches(None, "renee", "Renée")
    assert string_matches(None, "chal", "Chalmers")
    assert string_matches(None, "james chal", "Peter James Chalmers")  # starts at a word
    assert not string_matches(None, "halm", "Chalmers")
    assert string_matches("contains", "halm", "Chalmers")
    assert string_matches("exact", "Chalmers", "Chalmers")
    assert not string_matches("exact", "chalmers", "Chalmers")


@pytest.mark.parametrize(("query", "expected"), [
    ("name=chal", True), ("name=renee", True), ("given=RENÉE", True), ("family=halm", False),
    ("family:exact=Chalmers", True), ("family:exact=chalmers", False), ("name:contains=almer", True),
    ("address-city=oakvale", True), ("address=erewhon", True), ("address=534", True),
    ("gender=female", True), ("gender=male", False), ("gender:not=male", True), ("gender:not=female", False),
    ("birthdate=1961", True), ("birthdate=1961-05", True), ("birthdate=1961-05-12", True),
    ("birthdate=1961-05-13", False), ("birthdate=ge1961-05-12", True), ("birthdate=gt1961-05-12", False),
    ("birthdate=lt1962", True), ("birthdate=lt1961", False), ("birthdate=le1961", True),
    ("birthdate=sa1960", True), ("birthdate=eb1962", True), ("birthdate=eb1961-05-12", False),
    ("birthdate=ne1961", False), ("birthdate=ne1960", True), ("birthdate=ap1961-05-20", True),
    ("phone=555.326.5839", True), ("phone=5553265830", False), ("email=r@x.ORG", True),
    ("telecom=phone|5553265839", True), ("identifier=urn:mrn|MRN-1", True), ("identifier=MRN-1", True),
    ("identifier=urn:other|MRN-1", False), ("identifier=urn:mrn|", True), ("identifier=|MRN-1", False),
    ("_id=p1", True), ("_id=p2,p1", True), ("_lastUpdated=ge2024-06-10", True), ("_lastUpdated=lt2024-06-10", False),
    ("birthdate:missing=false", True), ("death-date:missing=true", True), ("general-practitioner:missing=false", False),
])
def test_patient_queries(query: str, expected: bool) -> None:
    assert hit(PATIENT, query) is expected


@pytest.mark.parametrize(("query", "expected"), [
    ("patient=p1", True), ("patient=Patient/p1", True), ("subject=Patient/p1", True), ("subject=p1", True),
    ("subject:Patient=p1", True), ("subject:Device=p1", False), ("patient=https://h.example/fhir/Patient/p1", True),
    ("patient=p2", False), ("code=http://loinc.org|8867-4", True), ("code=8867-4", True), ("code=|8867-4", False),
    ("code=http://snomed.info/sct|8867-4", False), ("status=final,amended", True), ("status=amended", False),
    ("value-quantity=gt100", True), ("value-quantity=gt120", False), ("value-quantity=lt100", False),
    ("value-quantity=120", True), ("value-quantity=le120", True), ("value-quantity=lt120", False),
    ("value-quantity=120|http://unitsofmeasure.org|mm[Hg]", True), ("value-quantity=120||mmHg", True),
    ("value-quantity=120||kg", False), ("value-quantity=ap125", True), ("value-quantity=ne120", False),
    ("value-quantity=ge120.0", True), ("value-quantity=le119.9", False),
    ("date=2024-06", True), ("date=ge2024-01-01", True), ("date=lt2024-06-10T10:00:00Z", False),
    ("date=le2024-06-10T10:00:00Z", True), ("date=2024-06-10T12:00:00+02:00", True),
])
def test_observation_queries(query: str, expected: bool) -> None:
    assert hit(OBSERVATION, query) is expected


def test_and_or_and_escaped_commas() -> None:
    assert matches(PATIENT, search("Patient", gender="female", birthdate="1961"))
    assert not matches(PATIENT, search("Patient", gender="female", birthdate="1962"))
    assert matches(PATIENT, search("Patient", birthdate="1950,1961"))
    assert split_values(r"a\,b,c") == ["a,b", "c"]
    assert split_values("a,,b") == ["a", "", "b"]


def test_date_ranges_follow_precision() -> None:
    assert date_range("1961") == DateRange(utc(1961, 1, 1), utc(1962, 1, 1))
    assert date_range("2024-02") == DateRange(utc(2024, 2, 1), utc(2024, 3, 1))
    assert date_range("2024-12-31") == DateRange(utc(2024, 12, 31), utc(2025, 1, 1))
    found = date_range("2024-06-10T12:00:00+02:00")
    assert found == DateRange(utc(2024, 6, 10, 10), utc(2024, 6, 10, 10, 0, 1))
    assert date_range("2024-06-10T10:00:00.123Z") == DateRange(
        utc(2024, 6, 10, 10, 0, 0, 123000), utc(2024, 6, 10, 10, 0, 0, 124000))
    assert date_range("2024-13") is None and date_range("June") is None


def test_prefix_semantics_on_ranges() -> None:
    june = date_range("2024-06")
    assert june is not None
    period = DateRange(utc(2024, 5, 20), utc(2024, 6, 5))  # straddles the start of June
    assert not date_matches("eq", june, period)
    assert date_matches("ne", june, period)
    assert date_matches("lt", june, period) and date_matches("le", june, period)
    assert not date_matches("gt", june, period) and not date_matches("ge", june, period)
    assert not date_matches("sa", june, period) and not date_matches("eb", june, period)
    assert date_matches("ap", june, period, now=utc(2024, 6, 15))
    inside = DateRange(utc(2024, 6, 3), utc(2024, 6, 4))
    assert date_matches("eq", june, inside) and date_matches("ge", june, inside) and date_matches("le", june, inside)


@pytest.mark.parametrize("raw", ["birthdate=1961-13", "birthdate=soon", "value-quantity=gtabc", "gender=",
                                 "subject=not a reference", "family:fuzzy=x", "shoe=9", "name=!!", "_id:exact=1"])
def test_bad_values_and_unknown_parameters_are_400(raw: str) -> None:
    key, _, value = raw.partition("=")
    resource_type = "Observation" if key.startswith(("value", "subject")) else "Patient"
    with pytest.raises(InvalidRequest) as info:
        parse_search(resource_type, {key: [value]}, lenient=False)
    if key == "shoe":
        assert "'shoe'" in info.value.diagnostics


def test_lenient_ignores_unknown_parameters() -> None:
    parsed = parse_search("Patient", {"shoe": ["9"], "gender": ["female"], "_count": ["5"]}, lenient=True)
    assert parsed.ignored == ["shoe"] and list(parsed.applied) == ["gender", "_count"]


def test_sealed_date_terms_are_bounded() -> None:
    birth = date_range("1961-05-12")
    year = date_range("1961")
    assert birth is not None and year is not None
    assert date_terms(birth) == {"in:C19", "in:D196", "in:Y1961", "in:M1961-05", "in:T1961-05-12"}
    assert date_terms(year) == {"in:C19", "in:D196", "in:Y1961", "at:Y1961"}
    open_period = DateRange(utc(1, 1, 1), utc(2024, 1, 1))
    assert len(date_terms(open_period)) <= 12
    for prefix in ("eq", "gt", "ge", "lt", "le", "sa", "eb", "ap"):
        span = date_span(prefix, birth, now=utc(2024, 1, 1))
        assert span is not None and len(date_lookup_terms(span)) <= 40, prefix


def test_index_and_lookup_agree_on_every_example() -> None:
    """Every official example matches a query made from its own values, and the lookup finds it."""
    checked = 0
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        for param in params_for(resource["resourceType"]).values():
            terms = index_terms(lookup_param(param), resource)  # what the partitions a lookup reads hold
            for query in _queries_from(param.type, value_terms(param, resource)):
                criteria = parse_search(resource["resourceType"], {param.code: [query]}, lenient=False).criteria
                wanted = lookup_terms(criteria[0])
                if matches(resource, criteria):
                    checked += 1
                    assert wanted is None or set(wanted) & terms, (path.name, param.code, query)
    assert checked > 500


def test_a_parameter_indexed_under_a_wider_one_has_all_its_terms_there() -> None:
    """`family` writes no index items and is looked up in `name`'s (docs/SEARCH.md, "Strings"): sound only if every
    term of a `family` value is also a term `name` writes. Held on every example and on Synthea's resources."""
    narrow = {t: [p for p in params_for(t).values() if p.indexed_under] for t in ("Patient", "Practitioner",
                                                                                  "Organization", "Location")}
    assert {p.code for p in narrow["Patient"]} == {"family", "given", "address-city", "address-state",
                                                   "address-postalcode", "address-country"}
    assert {p.indexed_under for p in narrow["Patient"]} == {"name", "address"}
    resources = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(EXAMPLES.glob("*.json"))]
    resources += [e["resource"] for path in sorted(SYNTHEA.glob("*.json"))[:6]
                  for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    checked = 0
    for resource in resources:
        for param in params_for(resource["resourceType"]).values():
            if param.indexed_under:
                terms = value_terms(param, resource)
                assert index_terms(param, resource) == set()
                assert terms <= index_terms(lookup_param(param), resource), (resource.get("id"), param.code)
                checked += bool(terms)
    assert checked > 200


def _queries_from(kind: str, terms: set[str]) -> list[str]:
    out = []
    for term in sorted(terms)[:6]:
        tag, _, value = term.partition(":")
        if tag == "p" and value:
            out.append(value)
        elif tag in ("c", "u", "s"):
            out.append(value.replace(",", "\\,"))
        elif tag == "r":
            out.append(value)
        elif tag == "in" and value.startswith("T"):
            out += [value[1:], f"ge{value[1:5]}", f"le{value[1:]}", f"ap{value[1:]}", f"sa{value[1:5]}"]
    return out


@st.composite
def stored_and_query(draw: st.DrawFn) -> tuple[DateRange, str, DateRange]:
    base = utc(1700, 1, 1)
    start = base + timedelta(days=draw(st.integers(0, 200_000)), seconds=draw(st.integers(0, 86_399)))
    length = draw(st.sampled_from([timedelta(seconds=1), timedelta(days=1), timedelta(days=40),
                                   timedelta(days=400), timedelta(days=5000), timedelta(days=90_000)]))
    stored = DateRange(start, start + length)
    query_text = draw(st.sampled_from(["%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ"]))
    moment = base + timedelta(days=draw(st.integers(0, 200_000)))
    query = date_range(moment.strftime(query_text))
    assert query is not None
    return stored, draw(st.sampled_from(["eq", "gt", "lt", "ge", "le", "sa", "eb", "ap"])), query


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored_and_query())
def test_date_lookup_never_misses_a_match(case: tuple[DateRange, str, DateRange]) -> None:
    stored, prefix, query = case
    now = utc(2024, 1, 1)
    if date_matches(prefix, query, stored, now=now):
        span = date_span(prefix, query, now=now)
        assert span is not None and date_lookup_terms(span) & date_terms(stored)


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=Decimal("-1e14"), max_value=Decimal("1e14"), places=3, allow_nan=False),
       st.sampled_from(["eq", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
       st.sampled_from(["100", "0.5", "0", "-3", "1e3", "99.9", "0.0001"]))
def test_quantity_lookup_never_misses_a_match(value: Decimal, prefix: str, number: str) -> None:
    observation = {**OBSERVATION, "valueQuantity": {"value": float(value)}}
    criteria = parse_search("Observation", {"value-quantity": [f"{prefix}{number}"]}, lenient=False).criteria
    if matches(observation, criteria):
        assert set(lookup_terms(criteria[0]) or []) & index_terms(params_for("Observation")["value-quantity"],
                                                                   observation)
