"""Settings come from keyword arguments, then ESUS_<NAME> environment variables, then defaults, parsed and bounded
(the rules the pydantic-settings model had, kept by the plain dataclass that replaced it for cold start)."""

from __future__ import annotations

import pytest

from esus.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("ESUS_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.resources_table == "esus-resources"
    assert settings.public_base_url is None
    assert settings.require_if_match is False
    assert settings.root_key_max_age_seconds == 300
    assert settings.update_retry_attempts == 5


def test_environment_is_parsed_to_each_fields_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESUS_RESOURCES_TABLE", "stack-Resources-1")
    monkeypatch.setenv("ESUS_REQUIRE_IF_MATCH", "true")
    monkeypatch.setenv("ESUS_ROOT_KEY_MAX_AGE_SECONDS", " 0 ")
    monkeypatch.setenv("esus_page_size_max", "50")  # any case, as before
    monkeypatch.setenv("ESUS_PUBLIC_BASE_URL", "https://fhir.example.org/fhir")
    monkeypatch.setenv("ESUS_NOT_A_SETTING", "ignored")
    settings = Settings()
    assert settings.resources_table == "stack-Resources-1"
    assert settings.require_if_match is True
    assert settings.root_key_max_age_seconds == 0
    assert settings.page_size_max == 50
    assert settings.public_base_url == "https://fhir.example.org/fhir"


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("No", False), ("off", False),
                                               ("TRUE", True), ("1", True), ("yes", True), ("on", True)])
def test_booleans_take_the_usual_words(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("ESUS_REQUIRE_IF_MATCH", raw)
    assert Settings().require_if_match is expected


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESUS_JWT_ISSUER", "https://from-env")
    monkeypatch.setenv("ESUS_JWKS_URL", "https://idp/jwks")
    settings = Settings(jwt_issuer="https://from-argument", jwks_url=None, page_size_default="20", unknown=1)
    assert settings.jwt_issuer == "https://from-argument"
    assert settings.jwks_url is None
    assert settings.page_size_default == 20


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("ESUS_UPDATE_RETRY_ATTEMPTS", "0", "ESUS_UPDATE_RETRY_ATTEMPTS must be >= 1"),
    ("ESUS_UPDATE_RETRY_ATTEMPTS", "21", "ESUS_UPDATE_RETRY_ATTEMPTS must be <= 20"),
    ("ESUS_TOKEN_BITS_PHONE", "4", "ESUS_TOKEN_BITS_PHONE must be >= 8"),
    ("ESUS_PAGE_SIZE_MAX", "many", "ESUS_PAGE_SIZE_MAX must be an integer"),
    ("ESUS_REQUIRE_IF_MATCH", "maybe", "ESUS_REQUIRE_IF_MATCH must be true or false"),
])
def test_bad_values_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str,
                                                    message: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=message):
        Settings()


def test_bounds_hold_for_arguments_too() -> None:
    with pytest.raises(ValueError, match="ESUS_JWKS_CACHE_SECONDS must be <= 3600"):
        Settings(jwks_cache_seconds=7200)
    with pytest.raises(ValueError, match="ESUS_PAGE_SIZE_MAX must be an integer"):
        Settings(page_size_max=True)


def test_get_settings_reads_the_environment_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("ESUS_INDEX_TABLE", "first")
    try:
        assert get_settings().index_table == "first"
        monkeypatch.setenv("ESUS_INDEX_TABLE", "second")
        assert get_settings().index_table == "first"
    finally:
        get_settings.cache_clear()
