"""Configuration: the example file is valid, every problem is reported at once."""

from __future__ import annotations

import copy
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from token_exchange.config.config_model import GrantTypeName
from token_exchange.config.settings import (
    ConfigError,
    HttpPermissionsSettings,
    StaticPermissionsSettings,
    load_settings,
    parse_settings,
)
from token_exchange.oauth.profile import GRANT_TYPES

ROOT = Path(__file__).resolve().parents[2]
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
    # A SQLite file shared by serve's workers, next to the config file (issue 21).
    assert settings.store.url == "sqlite:///etc/token-exchange/state/store.db"
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


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("sqlite:state.db", "sqlite:///etc/token-exchange/state.db"),
        ("sqlite:../var/my%20state.db", "sqlite:///etc/token-exchange/../var/my%20state.db"),
        ("sqlite:///var/lib/token-exchange/store.db", "sqlite:///var/lib/token-exchange/store.db"),
        ("memory://", "memory://"),
    ],
)
def test_a_relative_sqlite_path_is_relative_to_the_config_file(url: str, resolved: str) -> None:
    raw = {**MINIMAL, "store": {"url": url}}
    assert parse(raw).store.url == resolved
    assert parse(MINIMAL, env={"TOKEN_EXCHANGE_STORE_URL": url}).store.url == resolved


@pytest.mark.parametrize("url", ["sqlite://state.db", "sqlite:", "sqlite:///x.db?mode=ro"])
def test_other_sqlite_url_forms_are_problems(url: str) -> None:
    [problem] = problems({**MINIMAL, "store": {"url": url}})
    assert problem.startswith("store.url: a SQLite store is sqlite:///absolute/path.db"), problem


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


# -- problems name what the operator wrote ---------------------------------------------------------


def test_problems_name_entries_by_their_identifying_key() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"].append({"client_id": "job", "type": "confidential", "secret_env": "JOB_SECRET",
                           "audiences": ["https://api.example.test"]})  # fmt: skip
    raw["apis"][0]["scopes"] = ["no spaces"]
    raw["upstreams"][0]["leeway"] = -1
    raw["permissions"]["web"]["timeout"] = 0
    raw["permissions"]["fixed"] = {"type": "static", "rules": [{"allow": "yes"}]}
    assert problems(raw) == [
        'upstreams["https://tenant.example.test/"].leeway: must be a whole number from 0 to 300',
        'clients["job"].secret_env: environment variable JOB_SECRET is not set or empty',
        "apis[\"https://api.example.test\"].scopes[0]: 'no spaces' is not a valid scope token",
        "permissions.web.timeout: must be a number of seconds, above 0, <= 30",
        "permissions.fixed.rules[0].allow: must be true or false",
    ]


def test_entries_without_a_unique_identifying_key_are_named_by_index() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"] = [
        {"audiences": ["https://api.example.test"]},
        {"client_id": "twice", "audiences": ["https://api.example.test"], "scopes": ["raed"]},
        {"client_id": "twice", "audiences": ["https://api.example.test"]},
    ]
    found = problems(raw)
    assert "clients[0].client_id: is required" in found, found
    assert (
        "clients[1].scopes: 'raed' is not a scope of any API client twice may get tokens for"
        in (found)
    )
    assert "clients: client_id twice is configured twice" in found, found


def test_cross_field_problems_name_entries_too() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0].update(type="confidential", introspects=["https://other.example.test"])
    raw["apis"][0]["permissions"] = "nowhere"
    assert sorted(problems(raw)) == [
        'apis["https://api.example.test"].permissions: no [permissions.nowhere] table',
        'clients["spa"].introspects: https://other.example.test is not an [[apis]] audience',
        'clients["spa"].secret_env: is required for a confidential client',
    ]


@pytest.mark.parametrize("audiences", ["https://api.example.test", [1, 2], [""], {"a": "b"}])
def test_a_wrong_type_for_audiences_is_one_problem(audiences: Any) -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["clients"][0]["audiences"] = audiences
    assert problems(raw) == ['clients["spa"].audiences: must be a list of non-empty strings']


def test_each_value_a_list_refuses_is_named() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["algorithms"] = ["RS256", "HS256", "none"]
    found = problems(raw)
    upstream = 'upstreams["https://tenant.example.test/"]'
    assert [p.split(": ")[0] for p in found] == [
        f"{upstream}.algorithms[1]",
        f"{upstream}.algorithms[2]",
    ]


def test_no_pydantic_wording_reaches_the_operator() -> None:
    raw: dict[str, Any] = {
        "issuer": 1, "store": [], "signing": {"token_ttl": "300", "algorithm": 256},
        "server": {"max_body_bytes": 1.5}, "metrics": {"port": True}, "rate_limits": 1,
        "upstreams": [1, {"issuer": None}], "clients": {}, "apis": [{}],
        "permissions": {"a": 1, "b": {}, "c": {"type": "http", "url": [], "timeout": "2"}},
    }  # fmt: skip
    found = problems(raw)
    assert len(found) >= 15, found
    for problem in found:
        path, _, what = problem.partition(": ")
        assert path, problem
        assert what, problem
        for pydantic_words in ("Input should", "Field required", "pydantic", "errors.pydantic.dev"):
            assert pydantic_words not in problem, problem
    assert 'permissions.b.type: must be "http" or "static" or "authzen"' in found
    assert "upstreams[0]: must be a table" in found
    assert "upstreams[1].issuer: must be a non-empty string" in found
    assert "clients: must be an array of tables ([[clients]])" in found
    assert "apis[0].audience: is required" in found


def test_the_signing_section_is_kept_when_others_are_wrong() -> None:
    raw = {"issuer": "https://sts.example.test", "signing": {"keys_dir": "k", "algorithm": "EdDSA"}}
    with pytest.raises(ConfigError) as raised:
        parse(raw)
    assert raised.value.signing is not None
    assert raised.value.signing.keys_dir == Path("/etc/token-exchange/k")
    assert raised.value.signing.algorithm == "EdDSA"
    raw["signing"]["algorithm"] = "HS256"
    with pytest.raises(ConfigError) as raised:
        parse(raw)
    # A broken [signing] is not silently replaced by defaults.
    assert raised.value.signing is None


def test_dataclass_defaults_are_the_declared_ones() -> None:
    from token_exchange.config.settings import ClientSettings, UpstreamSettings

    settings = parse(MINIMAL)
    assert settings.upstreams[0] == UpstreamSettings(
        issuer="https://tenant.example.test/", audiences=("https://sts.example.test",)
    )
    assert settings.clients[0] == ClientSettings(
        client_id="spa", type="public", audiences=("https://api.example.test",)
    )


# -- the JSON Schema ------------------------------------------------------------------------------

SCHEMA = ROOT / "token_exchange" / "config.schema.json"
STARTER = ROOT / "config.starter.toml"


def test_the_checked_in_schema_is_the_models() -> None:
    from token_exchange.config.config_model import json_schema_text

    assert SCHEMA.read_text() == json_schema_text(), (
        "token_exchange/config.schema.json is not the schema of the configuration model; "
        "regenerate it: token-exchange config-schema > token_exchange/config.schema.json"
    )


def test_the_config_schema_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    from token_exchange.serve.cli import main

    assert main(["config-schema"]) == 0
    assert capsys.readouterr().out == SCHEMA.read_text()


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    tables = [("", schema), *((name, d) for name, d in schema["definitions"].items())]
    return [(f"{table}.{key}", p) for table, d in tables for key, p in d["properties"].items()]


def test_every_key_in_the_schema_is_described_with_its_default_and_range() -> None:
    schema = json.loads(SCHEMA.read_text())
    definitions = schema["definitions"]
    for where, prop in _properties(schema):
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        assert prop.get("description") or definitions.get(ref, {}).get("description"), where
    depth = definitions["ClientConfig"]["properties"]["max_delegation_depth"]
    assert (depth["minimum"], depth["maximum"], depth["default"]) == (1, 10, 4)
    timeout = definitions["HttpSourceConfig"]["properties"]["timeout"]
    assert (timeout["exclusiveMinimum"], timeout["maximum"], timeout["default"]) == (0, 30, 2.0)
    assert definitions["SigningConfig"]["properties"]["algorithm"]["enum"] == [
        "ES256", "RS256", "PS256", "EdDSA"
    ]  # fmt: skip
    assert definitions["ClientConfig"]["additionalProperties"] is False
    assert schema["required"] == ["issuer", "upstreams", "clients", "apis"]


@pytest.mark.parametrize("path", [EXAMPLE, STARTER], ids=lambda p: p.name)
def test_the_shipped_configs_validate_against_the_schema(path: Path) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    document = tomllib.loads(path.read_text())
    assert [e.message for e in validator.iter_errors(document)] == []
    # ... and the schema does refuse what the model refuses.
    document["signing"] = {"token_ttl": 0, "keysdir": "x"}
    assert len(list(validator.iter_errors(document))) == 2
    # Editors (taplo, Even Better TOML) find the schema from the file's first line.
    directive = path.read_text().splitlines()[0]
    assert directive == "#:schema ./token_exchange/config.schema.json"
    assert (path.parent / directive.split(" ", 1)[1]).resolve() == SCHEMA


def test_the_schema_ships_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "config.schema.json" in pyproject["tool"]["setuptools"]["package-data"]["token_exchange"]


# -- the starter config ----------------------------------------------------------------------------


def test_the_starter_config_needs_no_secret() -> None:
    settings = load_settings(STARTER, env={})
    assert [c.type for c in settings.clients] == ["public"]
    assert [p.type for p in settings.permissions.values()] == ["static"]
    assert settings.upstreams[0].issuer.endswith(".auth0.com/")


def test_check_config_passes_on_the_starter_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from token_exchange.serve.cli import main

    config = tmp_path / "config.toml"
    config.write_text(STARTER.read_text())
    for name in EXAMPLE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["keys", "generate", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["check-config", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"{config}: ok (1 upstreams, 1 clients, 1 APIs)" in out
    assert err == ""


def test_the_readme_explains_the_starter_and_the_editor_setup() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    for text in ("config.starter.toml", "token-exchange config-schema", "#:schema", ".taplo.toml",
                 "Even Better TOML"):  # fmt: skip
        assert text in section, text


def test_an_api_naming_a_source_when_there_are_none_is_a_problem() -> None:
    raw = copy.deepcopy(MINIMAL)
    del raw["permissions"]
    assert problems(raw) == [
        'apis["https://api.example.test"].permissions: no [permissions.web] table'
    ]


def test_a_source_name_that_is_not_a_bare_key_is_quoted_as_toml_does() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["apis"][0]["permissions"] = "web app"
    raw["permissions"] = {"web app": {"type": "static", "rules": [{"scopes": ["write"]}, {"x": 1}]}}
    assert problems(raw) == [
        'permissions."web app".rules[1].x: unknown key (known: actor, actor_client_id, '
        "actor_issuer, allow, audience, claims, client_id, issuer, resources, scopes, subject)",
    ]
    del raw["permissions"]["web app"]["rules"][1]
    assert problems(raw) == [
        "permissions.\"web app\".rules[0].scopes: 'write' is not a scope of any API",
    ]


# -- the jwt-bearer grant (issue 23): grant_types per client, assertions per upstream ------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def with_agent(grant_types: list[str], *, assertions: list[str], **client: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["assertions"] = assertions
    raw["clients"].append(
        {"client_id": "agent", "type": "confidential", "secret_env": "AGENT_SECRET",
         "audiences": ["https://api.example.test"], "grant_types": grant_types, **client}
    )  # fmt: skip
    return raw


def test_a_client_uses_token_exchange_only_and_an_upstream_redeems_nothing_by_default() -> None:
    settings = parse(MINIMAL)
    assert settings.clients[0].grant_types == (EXCHANGE,)
    assert settings.upstreams[0].assertions == ()
    assert settings.upstreams[0].assertion_max_lifetime == 300


def test_a_confidential_client_may_redeem_an_upstreams_id_jags() -> None:
    settings = parse(
        with_agent([EXCHANGE, JWT_BEARER], assertions=["id-jag", "workload"]),
        {"AGENT_SECRET": "s3cret-value"},
    )
    assert settings.clients[1].grant_types == (EXCHANGE, JWT_BEARER)
    assert settings.upstreams[0].assertions == ("id-jag", "workload")


def test_jwt_bearer_needs_a_confidential_client_and_an_upstream_with_assertions() -> None:
    public = with_agent([JWT_BEARER], assertions=[], type="public", secret_env=None)
    del public["clients"][1]["secret_env"]
    assert problems(public) == [
        'clients["agent"].grant_types: only a confidential client may use jwt-bearer',
        'clients["agent"].grant_types: lists jwt-bearer, but no [[upstreams]] has assertions '
        "to redeem",
    ]


def test_unknown_grant_types_and_assertion_kinds_are_problems() -> None:
    raw = with_agent(["client_credentials"], assertions=["saml"])
    found = problems(raw, {"AGENT_SECRET": "s3cret-value"})
    kinds = 'must be a list of "id-jag" and "workload"'
    assert f'upstreams["https://tenant.example.test/"].assertions: {kinds}' in found
    assert (
        'clients["agent"].grant_types: must be a non-empty list of '
        f"{EXCHANGE}, {JWT_BEARER}" in found
    )


def test_the_grant_type_names_of_the_model_are_the_protocol_table() -> None:
    assert typing.get_args(GrantTypeName) == GRANT_TYPES
