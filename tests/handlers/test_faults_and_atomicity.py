"""Handlers on moto.mock_aws with faults injected at the AWS call sites."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from esus.container import services
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "name": [{"family": "Atomic"}],
           "telecom": [{"system": "phone", "value": "555-123-4567"}]}
TABLES = ("resources_table", "history_table", "provenance_table", "index_table")
# Every fault test ends with the integrity checker over the whole store (fixture below).
pytestmark = pytest.mark.usefixtures("consistent_after")


def _error(code: str, operation: str = "TransactWriteItems", **extra: Any) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "injected"}, **extra}, operation)


def _counts(local: InProcessStack) -> dict[str, int]:
    return {t: local.count(t) for t in TABLES}


def test_a_failure_inside_the_transaction_stores_nothing(local: InProcessStack) -> None:
    """An extra item that fails its condition, injected into the real TransactWriteItems: DynamoDB
    cancels all of it, so neither the version nor its history, Provenance or index items exist."""
    def poison(kwargs: dict[str, Any]) -> None:
        kwargs["TransactItems"].append({"ConditionCheck": {
            "TableName": kwargs["TransactItems"][0]["Put"]["TableName"],
            "Key": {"pk": {"S": "acme|Patient|never-exists"}},
            "ConditionExpression": "attribute_exists(pk)",
        }})

    local.ddb.faults["transact_write_items"] = poison
    result = local.request("POST", "/Patient", PATIENT)
    assert result.status == 409 and result.headers["Retry-After"]
    assert local.json(result)["resourceType"] == "OperationOutcome"
    assert _counts(local) == dict.fromkeys(TABLES, 0)

    del local.ddb.faults["transact_write_items"]
    created = local.json(local.request("POST", "/Patient", PATIENT))
    before = _counts(local)
    local.ddb.faults["transact_write_items"] = poison
    update = local.request("PUT", f"/Patient/{created['id']}", {**created, "name": [{"family": "Changed"}]})
    assert update.status == 409  # retried (bounded) as a lost race, then reported
    assert _counts(local) == before
    del local.ddb.faults["transact_write_items"]
    assert local.json(local.request("GET", f"/Patient/{created['id']}"))["name"] == [{"family": "Atomic"}]


@pytest.mark.parametrize(("code", "status"), [
    ("ThrottlingException", 429),
    ("ProvisionedThroughputExceededException", 429),
    ("RequestLimitExceeded", 429),
    ("InternalServerError", 503),
    ("ServiceUnavailable", 503),
])
def test_dynamodb_faults_become_retryable_outcomes(local: InProcessStack, code: str, status: int) -> None:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    before = _counts(local)

    def fail(_: dict[str, Any]) -> None:
        raise _error(code, "GetItem")

    local.ddb.faults["get_item"] = fail
    for method, path, body in (("GET", f"/Patient/{created['id']}", None),
                               ("PUT", f"/Patient/{created['id']}", created),
                               ("DELETE", f"/Patient/{created['id']}", None)):
        result = local.request(method, path, body)
        assert result.status == status, (method, result.body)
        assert int(result.headers["Retry-After"]) >= 1
        outcome = local.json(result)
        assert outcome["resourceType"] == "OperationOutcome" and "injected" not in result.body.decode()
    assert _counts(local) == before


def test_transaction_conflicts_are_retried_then_reported(local: InProcessStack) -> None:
    attempts = []

    def conflict(_: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise _error("TransactionCanceledException", CancellationReasons=[
                {"Code": "TransactionConflict"}, {"Code": "None"}, {"Code": "None"}])

    local.ddb.faults["transact_write_items"] = conflict
    result = local.request("POST", "/Patient", PATIENT)
    assert result.status == 201 and len(attempts) == 3  # retried with the same idempotency token

    attempts.clear()
    local.ddb.faults["transact_write_items"] = lambda _: (_ for _ in ()).throw(_error(
        "TransactionCanceledException", CancellationReasons=[{"Code": "TransactionConflict"}]))
    result = local.request("POST", "/Patient", PATIENT)
    assert result.status == 409 and result.headers["Retry-After"]


def test_timeouts_and_secrets_manager_outage(local: InProcessStack) -> None:
    def timeout(_: dict[str, Any]) -> None:
        raise ReadTimeoutError(endpoint_url="https://dynamodb.local")

    local.ddb.faults["get_item"] = timeout
    result = local.request("GET", "/Patient/abc")
    assert result.status == 503 and result.headers["Retry-After"]
    del local.ddb.faults["get_item"]

    def secrets_down(_: dict[str, Any]) -> None:
        raise _error("InternalServiceError", "GetSecretValue")

    local.secrets.faults["get_secret_value"] = secrets_down  # cold start: the root key cannot be fetched
    result = local.request("POST", "/Patient", PATIENT)
    assert result.status == 503
    assert _counts(local) == dict.fromkeys(TABLES, 0)
    del local.secrets.faults["get_secret_value"]
    assert local.request("POST", "/Patient", PATIENT).status == 201


def test_warm_requests_make_no_secrets_manager_call(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    local.secrets.calls.clear()
    local.ddb.calls.clear()
    local.request("GET", f"/Patient/{created['id']}")
    assert local.ddb.calls == ["get_item"]  # read: one round trip
    local.request("PUT", f"/Patient/{created['id']}", created, headers={"If-Match": 'W/"1"'})
    local.request("POST", "/Observation", {"resourceType": "Observation", "status": "final",
                                           "code": {"text": "x"}})
    assert local.secrets.calls == []


def test_unexpected_errors_are_500_with_correlation_id_only(local: InProcessStack) -> None:
    def boom(_: dict[str, Any]) -> None:
        raise RuntimeError("secret detail: Peter Chalmers 555-123-4567")

    local.ddb.faults["get_item"] = boom
    result = local.request("GET", "/Patient/abc")
    assert result.status == 500
    text = result.body.decode()
    assert "correlation id" in text and "Peter" not in text and "RuntimeError" not in text


def test_configured_public_base_url_is_used_for_absolute_urls(local: InProcessStack, monkeypatch) -> None:
    from esus.settings import get_settings

    monkeypatch.setenv("ESUS_PUBLIC_BASE_URL", "https://fhir.example.org/r4/")
    get_settings.cache_clear()
    result = local.request("POST", "/Patient", PATIENT)
    created = local.json(result)
    assert result.headers["Location"] == f"https://fhir.example.org/r4/Patient/{created['id']}/_history/1"
    monkeypatch.delenv("ESUS_PUBLIC_BASE_URL")
    get_settings.cache_clear()
    derived = local.request("POST", "/Patient", PATIENT)
    assert derived.headers["Location"].startswith("https://fhir.test/fhir/Patient/")  # Host + stage-less path


@pytest.fixture
def consistent_after(local: InProcessStack):
    """After the test's faults, the whole store must still satisfy every integrity invariant."""
    yield local
    from esus.ops.verify import verify_all

    for operation in list(local.ddb.faults):
        del local.ddb.faults[operation]
    report = verify_all(services())
    assert report.ok, report.problems


@pytest.mark.parametrize(("operation", "method", "path"), [
    ("query", "GET", "/Patient?phone=555-123-4567"),
    ("batch_get_item", "GET", "/Patient?phone=555-123-4567"),
    ("query", "GET", "/Patient/{id}/_history"),
    ("query", "GET", "/Patient/_history"),
    ("batch_get_item", "GET", "/_history"),
    ("transact_write_items", "POST", "/Patient"),
    ("transact_write_items", "PUT", "/Patient/{id}"),
    ("transact_write_items", "DELETE", "/Patient/{id}"),
    ("get_item", "PATCH", "/Patient/{id}"),
])
@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
def test_faults_at_every_call_site_leave_the_store_consistent(
    consistent_after: InProcessStack, operation: str, method: str, path: str, code: str
) -> None:
    local = consistent_after
    created = local.json(local.request("POST", "/Patient", PATIENT))
    local.request("PUT", f"/Patient/{created['id']}", {**created, "active": True})

    def fail(_: dict[str, Any]) -> None:
        raise _error(code, operation)

    local.ddb.faults[operation] = fail
    body: Any = None
    headers = None
    if method in ("POST", "PUT"):
        body = {**created, "gender": "other"}
    if method == "PATCH":
        body, headers = [{"op": "add", "path": "/gender", "value": "other"}], {
            "Content-Type": "application/json-patch+json"}
    result = local.request(method, path.format(id=created["id"]), body, headers=headers)
    assert result.status == (429 if code == "ThrottlingException" else 503), (operation, result.body[:200])
    assert result.headers["Retry-After"] and local.json(result)["resourceType"] == "OperationOutcome"


def test_secrets_manager_outage_after_cold_start(consistent_after: InProcessStack,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    local = consistent_after
    assert local.request("POST", "/Patient", PATIENT).status == 201  # root key fetched and cached
    monkeypatch.setattr(services().keyring, "_max_age", -1)  # the cached root key is now due for a re-read

    def secrets_down(_: dict[str, Any]) -> None:
        raise ReadTimeoutError(endpoint_url="https://secretsmanager.local")

    local.secrets.faults["get_secret_value"] = secrets_down
    result = local.request("POST", "/Patient", PATIENT)
    assert result.status == 503 and result.headers["Retry-After"]
    del local.secrets.faults["get_secret_value"]
    assert local.request("POST", "/Patient", PATIENT).status == 201
