"""Configuration: the example file is valid, every problem is reported at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from token_exchange.settings import (
    ConfigError,
    HttpPermissionsSettings,
    StaticPermissionsSettings,
    load_settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
EXAMPLE_ENV = {
    "REPORTING_JOB_SECRET": "x" * 32,
    "PERMISSIONS_API_TOKEN": "t" * 32,
    "COUNTRIES_API_SECRET": "c" * 32,
}

MINIMAL: dict[str, Any] = {
    "issuer": "https://sts.example.test",
    "upstreams": [{"issuer": "https://tenant.example.test/", "audiences": ["https://sts.example.test"]}],
    "clients": [{"client_id": "spa", "audiences": ["https://api.example.test"]}],
    "apis": [{"audience": "https://api.example.test", "scopes": ["read"], "permissions": "web"}],
    "permissions": {"web": {"type": "http", "url": "https://app.example.test/perms"}},
}  # fmt: skip


def parse(raw: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_settings(raw, env=env or {}, base_dir=Path("/etc/token-exchange"))


def problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(raw, env)
    return raised.value.problems


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    assert settings.issuer == "https://sts.example.com"
    assert settings.signing.keys_dir == ROOT / "keys"
    assert settings.clients[1].introspects == ("https://countries.example.com",)
    assert settings.clients[2].secret == EXAMPLE_ENV["REPORTING_JOB_SECRET"]
    webapp = settings.permissions["webapp"]
    assert isinstance(webapp, HttpPermissionsSettings)
    assert webapp.token == EXAMPLE_ENV["PERMISSIONS_API_TOKEN"]
    fixed = settings.permissions["fixed"]
    assert isinstance(fixed, StaticPermissionsSettings)
    assert fixed.rules[0].claims == {"permissions": [["acme", "website", "editor"]]}
    assert fixed.rules[1].allow is False


def test_defaults() -> None:
    settings = parse(MINIMAL)
    assert settings.store.url == "memory://"
    assert settings.signing.algorithm == "ES256"
    assert settings.signing.token_ttl == 300
    upstream = settings.upstreams[0]
    assert upstream.algorithms == ("RS256",)
    assert upstream.jwks_uri is None
    assert upstream.discovery_url == "https://tenant.example.test/.well-known/openid-configuration"
    assert settings.permissions["web"].timeout == 2.0
    client = settings.clients[0]
    assert (client.type, client.allowed_origins, client.scopes) == ("public", (), None)
    assert settings.apis[0].resources == settings.apis[0].copy_claims == ()


def test_every_problem_is_reported_at_once() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["issuer"] = "http://sts.example.test"
    raw["upstreams"][0]["algorithms"] = ["HS256", "none"]
    raw["clients"][0]["audiences"] = ["https://unknown.example.test"]
    raw["clients"].append({"client_id": "job", "type": "confidential", "secret_env": "JOB_SECRET",
                           "audiences": ["https://api.example.test"]})  # fmt: skip
    raw["apis"][0]["copy_claims"] = ["sub"]
    raw["signing"] = {"algorithm": "HS256", "token_ttl": 0}
    found = problems(raw)
    expected = [
        "issuer: must use https",
        "'HS256' is not allowed",
        "'none' is not allowed",
        "is not an [[apis]] audience",
        "JOB_SECRET is not set",
        "'sub' is a registered claim",
        "signing.algorithm",
        "signing.token_ttl",
    ]
    for text in expected:
        assert any(text in p for p in found), (text, found)


def test_secrets_in_the_file_are_refused() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0]["client_secret"] = "hunter2"
    raw["permissions"]["web"]["token"] = "abc"
    found = problems(raw)
    assert sum("never read from the file" in p for p in found) == 2


def test_unknown_keys_are_reported_with_the_closest_known_one() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["apis"][0]["audiences"] = ["typo"]
    raw["permissions"]["web"]["tokn_env"] = "X"
    raw["upstream"] = []
    raw["signing"] = {"zzz": 1}
    assert problems(raw) == [
        "signing.zzz: unknown key (known: algorithm, jwks_max_age, keys_dir, reload_interval, "
        "token_ttl)",
        'apis["https://api.example.test"].audiences: unknown key, did you mean audience?',
        "permissions.web.tokn_env: unknown key, did you mean token_env?",
        "upstream: unknown key, did you mean upstreams?",
    ]


def test_confidential_client_needs_its_secret_env() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0]["type"] = "confidential"
    assert any("secret_env: is required" in p for p in problems(raw))
    raw["clients"][0]["secret_env"] = "SPA_SECRET"
    assert any("SPA_SECRET is not set" in p for p in problems(raw, {"SPA_SECRET": ""}))
    settings = parse(raw, {"SPA_SECRET": "s"})
    assert settings.clients[0].secret == "s"


def test_several_upstreams_need_distinct_subject_prefixes() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"].append({"issuer": "https://other.example.test/", "audiences": ["a"]})
    assert any("subject_prefix: is required" in p for p in problems(raw))
    raw["upstreams"][0]["subject_prefix"] = "a|"
    raw["upstreams"][1]["subject_prefix"] = "a|b|"
    assert any("overlaps" in p for p in problems(raw))
    raw["upstreams"][1]["subject_prefix"] = "b|"
    assert [u.subject_prefix for u in parse(raw).upstreams] == ["a|", "b|"]


def test_resource_prefixes_of_two_apis_may_not_overlap() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["apis"][0]["resources"] = ["https://api.example.test/"]
    raw["apis"].append(
        {
            "audience": "https://other.example.test",
            "scopes": ["x"],
            "resources": ["https://api.example.test/v2/"],
            "permissions": "web",
        }
    )
    assert any("overlaps" in p for p in problems(raw))


def test_jwks_cooldown_is_at_most_30_seconds() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["jwks_cooldown"] = 31
    assert any("jwks_cooldown" in p for p in problems(raw))


def test_store_url_from_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text())
    env = {**EXAMPLE_ENV, "TOKEN_EXCHANGE_STORE_URL": "memory://other"}
    assert load_settings(path, env=env).store.url == "memory://other"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("issuer = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.test/", "https://app.example.test/path", "http://app.example.test", "*"],
)
def test_allowed_origins_must_be_origins(origin: str) -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0]["allowed_origins"] = [origin]
    assert any("allowed_origins" in p for p in problems(raw))


def test_static_claims_must_be_json() -> None:
    import datetime

    raw = copy.deepcopy(MINIMAL)
    raw["permissions"]["static"] = {
        "type": "static",
        "rules": [{"claims": {"when": datetime.datetime(2026, 1, 1)}}],
    }
    assert any("claims" in p and "JSON" in p for p in problems(raw))


def test_jwks_cooldown_is_at_least_one_second() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["jwks_cooldown"] = 0
    assert any("jwks_cooldown" in p for p in problems(raw))


def test_static_rules_name_their_issuer_when_there_are_several() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["subject_prefix"] = "a|"
    raw["upstreams"].append(
        {"issuer": "https://other.example.test/", "audiences": ["a"], "subject_prefix": "b|"}
    )
    raw["permissions"]["static"] = {"type": "static", "rules": [{"subject": "auth0|42"}]}
    assert any("rules[0].issuer" in p for p in problems(raw))
    raw["permissions"]["static"]["rules"][0]["issuer"] = "https://other.example.test/"
    parse(raw)


def test_a_client_scope_no_api_of_it_defines_is_a_problem() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0]["scopes"] = ["read", "raed"]
    found = problems(raw)
    assert any('clients["spa"].scopes' in p and "raed" in p for p in found), found
    assert not any("'read'" in p for p in found), found


def test_a_static_rule_for_an_unknown_audience_or_scope_is_a_problem() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["permissions"]["web"] = {
        "type": "static",
        "rules": [
            {"audience": "https://nowhere.example.test"},
            {"audience": "https://api.example.test", "scopes": ["read", "no:such-scope"]},
            {"scopes": ["also:missing"]},
            {"audience": "https://api.example.test", "scopes": ["read"]},
        ],
    }
    found = problems(raw)
    assert any("rules[0].audience" in p for p in found), found
    assert any("rules[1].scopes" in p and "no:such-scope" in p for p in found), found
    assert any("rules[2].scopes" in p and "also:missing" in p for p in found), found
    assert not any("rules[3]" in p for p in found), found
