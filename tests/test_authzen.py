"""``type = "authzen"``: an OpenID AuthZEN 1.0 PDP as permissions source, against a real Cerbos.

A real ``cerbos server`` (npm ``@cerbos/cerbos-linux-x64``) runs on loopback with the shipped
example policies (examples/cerbos/policies) for the whole module; fake PDPs on loopback cover
what Cerbos cannot be made to do (no batch endpoint, hostile answers, ``context`` claims).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from token_exchange.config.settings import AuthzenPermissionsSettings
from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.serve.devmode import demo_decision
from token_exchange.sources.authzen import (
    METADATA_TTL,
    AuthzenPermissionSource,
    parse_authzen_settings,
)
from token_exchange.sources.permissions import PermissionRequest

from .cerbos import CerbosProcess
from .fakes import COUNTRIES, ENV, FakeIssuer, FakePermissions, Sts
from .helpers import assert_error, assert_issued, free_port, service_toml

ALICE, BOB = "dev|alice", "dev|bob"
PREFIX = f"{COUNTRIES}/countries/"
PDP_TOKEN = "pdp-bearer-token"


def authzen_source(url: str, **overrides: Any) -> dict[str, Any]:
    """The example's [permissions.pdp] (examples/cerbos/token-exchange.toml) for ``url``."""
    return {
        "type": "authzen",
        "url": url,
        "resource_type": "countries_api",
        "ttl": 60,
        "claims": {
            "custom_access_to_countries": {
                "resource_type": "country",
                "action": "read",
                "candidates_from": "resources",
                "resource_prefix": PREFIX,
                "candidates": ["nl", "de", "be", "fr"],
            }
        },
        **overrides,
    }


def use_pdp(url: str, **overrides: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["permissions"]["pdp"] = authzen_source(url, **overrides)
        config["apis"][0]["permissions"] = "pdp"

    return edit


# -- Cerbos gives the tokens the example permissions API gives --------------------------------

CASES = [
    (ALICE, None, []),
    (ALICE, "countries:read", ["nl"]),
    (ALICE, "countries:read countries:write", ["nl", "de"]),
    (ALICE, "countries:read", ["fr"]),  # refused: not hers
    (BOB, None, []),  # write refused: narrowed to read
    (BOB, "countries:read", ["fr"]),
    (BOB, "countries:write", []),  # every scope refused: invalid_scope
    (BOB, "countries:read", ["fr", "nl"]),  # one refused resource refuses all
]


def outcome(sts: Sts, response: Any) -> tuple[int, Any]:
    if response.status_code != 200:
        return response.status_code, response.json()["error"]
    claims = sts.decode(assert_issued(response)["access_token"])
    return 200, (claims["scope"], claims.get("custom_access_to_countries"))


@pytest.mark.parametrize(("user", "scope", "countries"), CASES)
def test_cerbos_mints_the_tokens_the_example_permissions_api_mints(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    cerbos: CerbosProcess,
    user: str,
    scope: str | None,
    countries: list[str],
) -> None:
    permissions_api.answer = lambda q: (200, demo_decision(q), {})
    with_api = make_sts()
    with_pdp = make_sts(use_pdp(cerbos.url))
    token = issuer.token(sub=user)
    resource = [PREFIX + c for c in countries] or None
    expected = outcome(with_api, with_api.exchange(token, scope=scope, resource=resource))
    got = outcome(with_pdp, with_pdp.exchange(token, scope=scope, resource=resource))
    assert got == expected
    assert permissions_api.questions  # the reference really answered


def test_a_user_the_pdp_grants_no_scope_is_invalid_scope(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, cerbos: CerbosProcess
) -> None:
    """Every scope refused is invalid_scope, as when a permissions API grants no scope (the
    example permissions API refuses an unknown user outright, invalid_target, instead)."""
    sts = make_sts(use_pdp(cerbos.url))
    assert_error(sts.exchange(issuer.token(sub="dev|mallory")), 400, "invalid_scope")


def test_one_batch_call_per_exchange_and_the_second_is_cached(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, cerbos: CerbosProcess
) -> None:
    sts = make_sts(use_pdp(cerbos.url))
    token = issuer.token(sub=ALICE)
    before = cerbos.calls("AccessEvaluationBatch")
    first = sts.decode(assert_issued(sts.exchange(token))["access_token"])
    assert cerbos.calls("AccessEvaluationBatch") == before + 1
    second = sts.decode(assert_issued(sts.exchange(token))["access_token"])
    # The same question again: answered from the cache, Cerbos is not asked.
    assert cerbos.calls("AccessEvaluationBatch") == before + 1
    assert cerbos.calls("AccessEvaluation") == 0
    assert first["custom_access_to_countries"] == second["custom_access_to_countries"]
    metrics = sts.http.get(f"{sts.url}/metrics", timeout=5).text
    assert 'token_exchange_permission_calls_total{outcome="allow",source="pdp"} 1.0' in metrics


def test_pdp_down_is_temporarily_unavailable(
    make_sts: Callable[..., Sts], issuer: FakeIssuer
) -> None:
    sts = make_sts(use_pdp(f"http://127.0.0.1:{free_port()}"))
    response = sts.exchange(issuer.token(sub=ALICE))
    assert_error(response, 503, "temporarily_unavailable")
    assert "Retry-After" in response.headers


def test_without_discovery_the_standard_paths_are_used(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, cerbos: CerbosProcess
) -> None:
    sts = make_sts(use_pdp(cerbos.url, discovery=False, batch=False, ttl=0))
    before = cerbos.calls("AccessEvaluation")
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(sub=BOB)))["access_token"])
    assert (claims["scope"], claims["custom_access_to_countries"]) == ("countries:read", ["fr"])
    # Two scopes and four candidates, one call each; without a cache, every exchange asks.
    assert cerbos.calls("AccessEvaluation") == before + 6


# -- A fake PDP on loopback ---------------------------------------------------------------------


@dataclass
class FakePdp:
    """An AuthZEN PDP: metadata as set, and a decision per evaluation from ``decide``."""

    server: HTTPServer
    batch: bool = True
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    raw_answer: Any = None
    status: int = 200
    delay: float = 0.0
    metadata_status: int = 200
    metadata_reads: int = 0
    decide: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda e: {"decision": True})

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    def handle_metadata(self, request: Request) -> Response:
        self.metadata_reads += 1
        if self.metadata_status != 200:
            return Response("down", status=self.metadata_status)
        document = self.metadata or {
            "policy_decision_point": self.url,
            "access_evaluation_endpoint": f"{self.url}/access/v1/evaluation",
            **({"access_evaluations_endpoint": f"{self.url}/pdp/batch"} if self.batch else {}),
        }
        return Response(json.dumps(document), content_type="application/json")

    def handle_single(self, request: Request) -> Response:
        body = request.get_json()
        self.calls.append(("single", body))
        self.headers.append(dict(request.headers))
        return Response(json.dumps(self.decide(body)), content_type="application/json")

    def handle_batch(self, request: Request) -> Response:
        body = request.get_json()
        self.calls.append(("batch", body))
        self.headers.append(dict(request.headers))
        time.sleep(self.delay)
        if self.status != 200:
            return Response("down", status=self.status)
        if self.raw_answer is not None:
            return Response(json.dumps(self.raw_answer), content_type="application/json")
        shared = {k: v for k, v in body.items() if k != "evaluations"}
        answers = [self.decide({**shared, **e}) for e in body["evaluations"]]
        return Response(json.dumps({"evaluations": answers}), content_type="application/json")


@pytest.fixture
def fake_pdp() -> Iterator[FakePdp]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    pdp = FakePdp(server)
    server.expect_request("/.well-known/authzen-configuration").respond_with_handler(
        pdp.handle_metadata
    )
    server.expect_request("/access/v1/evaluation", method="POST").respond_with_handler(
        pdp.handle_single
    )
    server.expect_request("/pdp/batch", method="POST").respond_with_handler(pdp.handle_batch)
    yield pdp
    server.clear()
    server.stop()


def bob_policy(evaluation: dict[str, Any]) -> dict[str, Any]:
    action, resource = evaluation["action"]["name"], evaluation["resource"]
    allowed = (resource["type"], action, resource["id"]) in {
        ("countries_api", "countries:read", COUNTRIES),
        ("country", "read", "fr"),
    }
    return {"decision": allowed}


def test_batch_endpoint_from_discovery(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    fake_pdp.decide = bob_policy
    sts = make_sts(
        use_pdp(fake_pdp.url, token_env="PDP_TOKEN"), env={**ENV, "PDP_TOKEN": PDP_TOKEN}
    )
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(sub=BOB)))["access_token"])
    assert (claims["scope"], claims["custom_access_to_countries"]) == ("countries:read", ["fr"])
    assert [kind for kind, _ in fake_pdp.calls] == ["batch"]
    body = fake_pdp.calls[0][1]
    assert body["subject"] == {"type": "user", "id": BOB}
    assert body["context"]["client_id"] == "spa"
    assert body["context"]["audience"] == COUNTRIES
    assert len(body["evaluations"]) == 2 + 4
    assert fake_pdp.headers[0]["Authorization"] == f"Bearer {PDP_TOKEN}"


def test_single_evaluations_when_discovery_has_no_batch_endpoint(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    fake_pdp.batch = False
    fake_pdp.decide = bob_policy
    sts = make_sts(use_pdp(fake_pdp.url))
    claims = sts.decode(assert_issued(sts.exchange(issuer.token(sub=BOB)))["access_token"])
    assert (claims["scope"], claims["custom_access_to_countries"]) == ("countries:read", ["fr"])
    assert [kind for kind, _ in fake_pdp.calls] == ["single"] * 6
    assert all(body["subject"]["id"] == BOB for _, body in fake_pdp.calls)


def test_claim_from_the_decision_context_and_subject_properties(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    def decide(evaluation: dict[str, Any]) -> dict[str, Any]:
        roles = evaluation["subject"]["properties"]["roles"]
        return {"decision": True, "context": {"claims": {"tenant": roles[0]}}, "extra": 1}

    fake_pdp.decide = decide
    sts = make_sts(
        use_pdp(
            fake_pdp.url,
            subject_properties=["roles"],
            claims={"custom_tenant": {"from_context": "claims.tenant"}},
        )
    )
    first = sts.decode(
        assert_issued(sts.exchange(issuer.token(sub=ALICE, roles=["acme"])))["access_token"]
    )
    assert first["custom_tenant"] == "acme"
    # subject_properties are part of the question, so of the cache key: other roles, other answer.
    second = sts.decode(
        assert_issued(sts.exchange(issuer.token(sub=ALICE, roles=["globex"])))["access_token"]
    )
    assert second["custom_tenant"] == "globex"
    assert len(fake_pdp.calls) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"evaluations": [{"decision": "true"}] * 6},  # a string is not a decision
        {"evaluations": [{"decision": 1}] * 6},
        {"evaluations": [{"decision": True}] * 5},  # one missing
        {"evaluations": [{"decision": True}] * 7},  # one we never asked
        {"evaluations": [{"decision": True, "context": []}] * 6},
        {"evaluations": "all"},
        [],
        {"evaluations": [{"decision": True, "context": {"pad": "x" * 300_000}}] * 6},  # too large
    ],
)
def test_a_malformed_answer_is_temporarily_unavailable(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp, answer: Any
) -> None:
    fake_pdp.raw_answer = answer
    sts = make_sts(use_pdp(fake_pdp.url))
    assert_error(sts.exchange(issuer.token(sub=ALICE)), 503, "temporarily_unavailable")


def test_metadata_for_another_origin_is_not_used(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    """Our bearer token and the user's claims go only where the configuration says."""
    fake_pdp.metadata = {
        "policy_decision_point": fake_pdp.url,
        "access_evaluation_endpoint": "https://evil.example.test/access/v1/evaluation",
    }
    sts = make_sts(use_pdp(fake_pdp.url))
    assert_error(sts.exchange(issuer.token(sub=ALICE)), 503, "temporarily_unavailable")
    assert fake_pdp.calls == []


# -- the guarantees of the http source: cache, stale-if-error, timeout, breaker, audit --------


def test_stale_answer_serves_while_the_pdp_is_down(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    sts = make_sts(use_pdp(fake_pdp.url, ttl=1, stale_if_error=300))
    token = issuer.token(sub=ALICE)
    assert_issued(sts.exchange(token))
    fake_pdp.status = 500
    time.sleep(1.1)
    assert_issued(sts.exchange(token))  # expired, the PDP is down: the stale answer serves
    assert len(fake_pdp.calls) == 2
    assert_error(sts.exchange(issuer.token(sub=BOB)), 503, "temporarily_unavailable")


def test_a_slow_pdp_costs_at_most_its_timeout(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    fake_pdp.delay = 1.5
    sts = make_sts(use_pdp(fake_pdp.url, timeout=0.3))
    started = time.monotonic()
    assert_error(sts.exchange(issuer.token(sub=ALICE)), 503, "temporarily_unavailable")
    assert time.monotonic() - started < 1.2


def test_a_hanging_pdp_gets_only_its_share(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    """Its bulkhead admits max_concurrency calls; the next exchange is refused at once."""
    fake_pdp.delay = 1.0
    sts = make_sts(use_pdp(fake_pdp.url, max_concurrency=1, timeout=3))
    hanging = threading.Thread(target=sts.exchange, args=(issuer.token(sub=ALICE),))
    hanging.start()
    deadline = time.monotonic() + 5
    while not fake_pdp.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert_error(sts.exchange(issuer.token(sub=BOB)), 503, "temporarily_unavailable")
    assert time.monotonic() - started < 0.5
    hanging.join(5)
    assert len(fake_pdp.calls) == 1


def test_the_breaker_opens_after_failures_in_a_row(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    fake_pdp.status = 500
    sts = make_sts(use_pdp(fake_pdp.url, breaker_failures=2, breaker_cooldown=60))
    for _ in range(4):
        assert_error(sts.exchange(issuer.token(sub=ALICE)), 503, "temporarily_unavailable")
    assert len(fake_pdp.calls) == 2  # then refused at once, without a call
    metrics = sts.http.get(f"{sts.url}/metrics", timeout=5).text
    assert 'token_exchange_dependency_breaker_state{dependency="permissions:pdp"} 2.0' in metrics
    assert 'token_exchange_permission_calls_total{outcome="error",source="pdp"} 2.0' in metrics


def test_log_lines_name_the_source(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    fake_pdp: FakePdp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="token_exchange.sources.authzen")
    sts = make_sts(
        use_pdp(fake_pdp.url, token_env="PDP_TOKEN"), env={**ENV, "PDP_TOKEN": PDP_TOKEN}
    )
    assert_issued(sts.exchange(issuer.token(sub=ALICE)))
    fake_pdp.status = 503
    assert_error(sts.exchange(issuer.token(sub=BOB)), 503, "temporarily_unavailable")
    lines = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    assert lines["authzen_decision"]["source"] == "pdp"
    assert lines["authzen_decision"]["mode"] == "batch"
    assert lines["authzen_unavailable"]["source"] == "pdp"
    assert PDP_TOKEN not in caplog.text


def test_metadata_is_read_again_later_and_the_last_good_endpoints_kept(fake_pdp: FakePdp) -> None:
    now = [0.0]
    source = AuthzenPermissionSource(settings_for(fake_pdp.url), metadata_clock=lambda: now[0])
    assert source.decide(question()).allow
    assert source.decide(question()).allow
    assert fake_pdp.metadata_reads == 1
    now[0] = METADATA_TTL + 1
    fake_pdp.metadata_status = 500
    assert source.decide(question()).allow  # the metadata is down, the PDP is not
    assert (fake_pdp.metadata_reads, len(fake_pdp.calls)) == (2, 3)


def test_a_pdp_refusing_our_credential_is_unavailable_not_a_refusal(fake_pdp: FakePdp) -> None:
    fake_pdp.status = 401
    source = AuthzenPermissionSource(settings_for(fake_pdp.url))
    with pytest.raises(UpstreamUnavailable, match="HTTP 401"):
        source.decide(question())


# -- check-config -------------------------------------------------------------------------------


@pytest.mark.slow
def test_check_config_reports_authzen_mistakes(tmp_path: Path, issuer: FakeIssuer) -> None:
    extra = """
[permissions.pdp]
type = "authzen"
url = "http://pdp.example.test"
token = "inline"
timeout = 0
ttl = -1
batch = "yes"
token_env = "NOT_SET_ANYWHERE"
actions = { "countries:reed" = "read" }
[permissions.pdp.claims.scope]
from_context = "x"
[permissions.pdp.claims.custom_countries]
candidates_from = "everything"
[permissions.pdp.claims.custom_paths]
from_context = "a..b"
[permissions.pdp.claims.custom_ids]
resource_type = "country"
candidates_from = "resources"
resource_prefix = "https://countries.example.test/countries"
"""
    config = tmp_path / "config.toml"
    config.write_text(
        service_toml(issuer.issuer, "http://127.0.0.1:1/p", extra=extra).replace(
            'permissions = "webapp"', 'permissions = "pdp"'
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PERMS_TOKEN": "x"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    for where in [
        "permissions.pdp.url: must use https",
        "permissions.pdp.token: secrets are never read from the file",
        "permissions.pdp.timeout",
        "permissions.pdp.ttl",
        "permissions.pdp.batch",
        "permissions.pdp.token_env: environment variable NOT_SET_ANYWHERE",
        "permissions.pdp.claims.custom_countries.candidates_from",
        "permissions.pdp.claims.custom_paths.from_context",
        "permissions.pdp.claims.custom_ids.resource_prefix: must end with '/'",
    ]:
        assert where in result.stderr
    assert "Traceback" not in result.stderr
    # What the keys get wrong together is checked once each key is right.
    fixed = "\n".join(
        line
        for line in config.read_text().splitlines()
        if not line.startswith(("token =", "timeout =", "ttl =", "batch =", "token_env ="))
    )
    fixed = fixed.replace('url = "http://pdp', 'url = "https://pdp').replace("a..b", "a.b")
    fixed = fixed.replace('candidates_from = "everything"', 'candidates = ["x"]')
    config.write_text(fixed.replace('/countries"', '/countries/"'))
    result = subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    for where in [
        'permissions.pdp.actions."countries:reed": is not a scope of any API using this source',
        "permissions.pdp.claims.scope: is a registered claim",
        "permissions.pdp.claims.custom_countries.resource_type: is required for candidates",
    ]:
        assert where in result.stderr
    assert "custom_paths" not in result.stderr
    assert "custom_ids" not in result.stderr


# -- the pure core ------------------------------------------------------------------------------


def settings_for(url: str, **overrides: Any) -> AuthzenPermissionsSettings:
    parsed, problems = parse_authzen_settings("pdp", authzen_source(url, **overrides), {})
    assert not problems
    return parsed


def settings(**overrides: Any) -> AuthzenPermissionsSettings:
    raw = authzen_source("https://pdp.example.test", **overrides)
    parsed, problems = parse_authzen_settings("pdp", raw, {})
    assert not problems
    return parsed


def question(**overrides: Any) -> PermissionRequest:
    fields: dict[str, Any] = {
        "subject": ALICE, "issuer": "https://issuer.test/", "client_id": "spa",
        "audience": COUNTRIES, "scopes": ("countries:read",), "resources": (),
        "authorization_details": (), "subject_claims": {"sub": ALICE},
    }  # fmt: skip
    fields.update(overrides)
    return PermissionRequest(**fields)


@pytest.mark.parametrize("resource", [PREFIX + "nl/x", PREFIX + "nl?all=1", PREFIX + "n" * 300])
def test_a_resource_that_is_not_one_id_is_refused_without_asking(
    resource: str, make_sts: Callable[..., Sts], issuer: FakeIssuer, fake_pdp: FakePdp
) -> None:
    sts = make_sts(use_pdp(fake_pdp.url))
    assert_error(sts.exchange(issuer.token(sub=ALICE), resource=resource), 400, "invalid_target")
    assert fake_pdp.calls == []
