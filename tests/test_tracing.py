"""OpenTelemetry traces (issue 27), exported to a collector stand-in that decodes the real OTLP
protobuf: the spans of one exchange and their parentage, the traceparent the permissions API
receives, what spans may and may not carry, a hanging dependency's span, gRPC export, and the
trace id in the audit line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.obs import tracing
from token_exchange.obs.tracing import Tracing

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    ENV,
    GRANT,
    PERMISSIONS_TOKEN,
    FakeIssuer,
    FakePermissions,
    Sts,
    quick_server,
)
from .hanging import HangingServer, wait_until
from .helpers import (
    assert_error,
    assert_issued,
    dev_process,
    free_port,
    serve_process,
    service_toml,
)
from .otlp import GrpcCollector, HttpCollector
from .test_authzen import BOB, PDP_TOKEN, FakePdp, bob_policy, fake_pdp, use_pdp
from .test_operations import audit_lines
from .test_rotation import cli

__all__ = ["fake_pdp"]  # a fixture of test_authzen's, used here

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
GATEWAY_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{GATEWAY_SPAN}-01"
SPA = "https://app.example.test"


@pytest.fixture
def collector() -> Iterator[HttpCollector]:
    server = quick_server()
    yield HttpCollector(server)
    server.clear()
    server.stop()


@pytest.fixture
def traced_sts(
    make_sts: Callable[..., Sts], collector: HttpCollector, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Sts]]:
    """A service whose OTEL_* variables send its spans to ``collector`` over OTLP/HTTP."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sts-under-test")
    started: list[Sts] = []

    def start(*args: Any, **kwargs: Any) -> Sts:
        started.append(make_sts(*args, **kwargs))
        return started[-1]

    yield start
    for sts in started:  # before the collector stops
        tracing_of(sts).shutdown()


def flushed(sts: Sts) -> None:
    tracing_of(sts).provider.force_flush()


def tracing_of(sts: Sts) -> Tracing:
    found: Tracing = sts.app.extensions["token_exchange.tracing"]
    return found


def test_an_exchange_is_one_trace_that_the_gateway_started_and_the_permissions_api_joins(
    traced_sts: Callable[..., Sts],
    collector: HttpCollector,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    rsa_keys: list[rsa.RSAPrivateKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["upstreams"][0]["jwks_cooldown"] = 1

    sts = traced_sts(edit)
    assert_issued(sts.exchange(issuer.token()))  # the issuer's keys are loaded
    time.sleep(1.1)  # past the cooldown: a token signed by a new key makes the keys refetched
    kid = issuer.add_key(rsa_keys[2])
    subject_token = issuer.token(kid=kid)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        answer = sts.exchange(
            subject_token, headers={"traceparent": TRACEPARENT, "baggage": "user=auth0%7C42"}
        )
    issued = assert_issued(answer)
    flushed(sts)

    server = next(s for s in collector.named("POST /token") if s.trace_id == TRACE_ID)
    assert server.kind == "SERVER"
    assert server.parent_span_id == GATEWAY_SPAN
    assert server.resource["service.name"] == "sts-under-test"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/token"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["token_exchange.client_id"] == "spa"
    assert server.attributes["token_exchange.audience"] == COUNTRIES
    assert server.attributes["token_exchange.outcome"] == "issued"
    assert server.status_code == 0  # unset: not an error
    assert server.attributes["client.address"] == "127.0.0.1"

    in_trace = [s for s in collector.spans if s.trace_id == TRACE_ID]
    by_name = {s.name: s for s in in_trace}
    for name in ("verify subject_token", "trust policy", "permissions", "mint"):
        assert by_name[name].parent_span_id == server.span_id, name
        assert by_name[name].kind == "INTERNAL"
    # The issuer's keys, fetched while the subject token was verified: a client span below it.
    jwks = [
        s
        for s in collector.children(by_name["verify subject_token"])
        if s.attributes.get("url.full") == issuer.jwks_uri
    ]
    assert len(jwks) == 1
    assert jwks[0].kind == "CLIENT"
    assert jwks[0].name == "GET"
    assert jwks[0].attributes["http.response.status_code"] == 200
    # The permissions API's question: a client span whose context the request carried.
    below = collector.children(by_name["permissions"])
    (question,) = [s for s in below if "http.request.method" in s.attributes]
    assert question.kind == "CLIENT"
    assert question.name == "POST"
    assert question.attributes["url.full"] == permissions_api.url
    assert question.attributes["server.address"] == "127.0.0.1"
    assert question.attributes["http.response.status_code"] == 200
    assert permissions_api.headers[-1]["Traceparent"] == f"00-{TRACE_ID}-{question.span_id}-01"
    # What a caller sends as baggage goes no further; the issuer, a third party, gets no
    # trace context at all.
    assert "Baggage" not in permissions_api.headers[-1]
    fetches = [r for r, _ in issuer.server.log if r.path.endswith("jwks.json")]
    assert fetches
    assert all("traceparent" not in r.headers for r in fetches)
    # The store (SQLite by default): client spans in the database conventions.
    store = [s for s in in_trace if s.attributes.get("db.system.name") == "sqlite"]
    assert store
    assert all(s.kind == "CLIENT" for s in store)
    # The cached answers looked up in the store, below the question.
    assert {s.attributes["db.operation.name"] for s in below if s in store} == {"SELECT"}

    (line,) = [a for a in audit_lines(caplog) if a["event"] == "token_exchange"]
    assert line["trace_id"] == TRACE_ID
    assert line["jti"] == sts.decode(issued["access_token"])["jti"]

    # Nothing a span carries is a token, a secret or a claim's value.
    text = collector.as_text()
    for secret in (
        subject_token,
        *subject_token.split("."),
        issued["access_token"],
        *issued["access_token"].split(".")[1:],
        *ENV.values(),
        "auth0|42",  # the subject (sub)
        "custom_access_to_countries",
    ):
        assert secret not in text


def test_an_authzen_pdp_is_asked_in_a_client_span_and_joins_the_trace(
    traced_sts: Callable[..., Sts],
    collector: HttpCollector,
    issuer: FakeIssuer,
    fake_pdp: FakePdp,
) -> None:
    fake_pdp.decide = bob_policy
    sts = traced_sts(
        use_pdp(fake_pdp.url, token_env="PDP_TOKEN"), env={**ENV, "PDP_TOKEN": PDP_TOKEN}
    )
    answer = sts.exchange(issuer.token(sub=BOB), headers={"traceparent": TRACEPARENT})
    assert_issued(answer)
    flushed(sts)
    permissions = next(s for s in collector.named("permissions") if s.trace_id == TRACE_ID)
    calls = {s.name: s for s in collector.children(permissions) if s.kind == "CLIENT"}
    # Its metadata (discovery), then the batch of evaluations.
    assert (
        calls["GET"].attributes["url.full"] == f"{fake_pdp.url}/.well-known/authzen-configuration"
    )
    batch = calls["POST"]
    assert batch.kind == "CLIENT"
    assert batch.attributes["url.full"] == f"{fake_pdp.url}/pdp/batch"
    assert fake_pdp.headers[-1]["Traceparent"] == f"00-{TRACE_ID}-{batch.span_id}-01"
    assert PDP_TOKEN not in collector.as_text()


def test_a_refusal_names_its_outcome_and_reason_and_is_no_server_error(
    traced_sts: Callable[..., Sts], collector: HttpCollector, issuer: FakeIssuer
) -> None:
    sts = traced_sts()
    answer = sts.exchange(issuer.token(exp=int(time.time()) - 600))
    assert_error(answer, 400, "invalid_request")
    flushed(sts)
    server = collector.one("POST /token")
    assert server.attributes["token_exchange.outcome"] == "invalid_request"
    assert server.attributes["token_exchange.reason"] == "expired"
    assert server.attributes["http.response.status_code"] == 400
    assert server.status_code == 0  # the caller's error, not ours
    verify = collector.one("verify subject_token")
    assert verify.parent_span_id == server.span_id
    assert verify.attributes["token_exchange.reason"] == "expired"
    assert verify.status_code == 0  # the caller's token, not our failure
    assert "error.type" not in verify.attributes


def test_a_hanging_permissions_api_shows_as_a_span_that_ends_with_its_timeout(
    traced_sts: Callable[..., Sts], collector: HttpCollector, issuer: FakeIssuer
) -> None:
    hanging = HangingServer()
    try:

        def edit(config: dict[str, Any]) -> None:
            config["permissions"]["webapp"]["url"] = hanging.url("/internal/permissions")
            config["permissions"]["webapp"]["timeout"] = 0.5

        sts = traced_sts(edit)
        answer = sts.exchange(issuer.token())
        assert_error(answer, 503, "temporarily_unavailable")
    finally:
        hanging.release()
        hanging.close()
    flushed(sts)
    server = collector.one("POST /token")
    assert server.attributes["http.response.status_code"] == 503
    assert server.status_code == 2  # ours: an error
    assert server.attributes["token_exchange.reason"] == "permissions_unavailable"
    question = next(s for s in collector.named("POST") if s.attributes.get("server.port"))
    assert question.attributes["error.type"] == "UpstreamUnavailable"
    assert question.status_code == 2
    assert 0.5 <= question.seconds < 1.5
    permissions = collector.one("permissions")
    assert permissions.attributes["error.type"] == "UpstreamUnavailable"


def test_a_request_the_sampler_leaves_out_records_nothing_but_passes_its_trace_on(
    traced_sts: Callable[..., Sts],
    collector: HttpCollector,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sts = traced_sts()
    unsampled = f"00-{TRACE_ID}-{GATEWAY_SPAN}-00"  # the gateway sampled it out
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        assert_issued(sts.exchange(issuer.token(), headers={"traceparent": unsampled}))
    flushed(sts)
    assert collector.spans == []
    # The permissions API still learns the trace, and that it is not sampled.
    sent = permissions_api.headers[-1]["Traceparent"]
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")
    assert audit_lines(caplog)[-1]["trace_id"] == TRACE_ID


def test_a_hanging_collector_costs_no_exchange(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans are exported from a thread of their own: a collector that never answers holds
    that thread, never a request (the queue bounds what waits, then drops)."""
    collector = HangingServer()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url("/v1/traces"))
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1")
        monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
        monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2")  # seconds, in this SDK
        sts = make_sts()
        token = issuer.token()
        assert_issued(sts.exchange(token))
        wait_until(lambda: collector.held == 1)  # an export is stuck
        for _ in range(30):  # more spans than the queue holds
            answer = sts.http.post(
                f"{sts.url}/token",
                data={
                    "grant_type": GRANT,
                    "client_id": "spa",
                    "subject_token": token,
                    "subject_token_type": ACCESS_TOKEN,
                    "audience": COUNTRIES,
                },
                timeout=2,
            )
            assert_issued(answer)
        assert collector.held >= 1  # still stuck
    finally:
        collector.mode = "ok"  # what is queued is then exported at once, and the test ends
        collector.release()
        collector.close()
    tracing_of(sts).shutdown()


def test_callers_that_are_not_trusted_get_a_trace_of_their_own_linked_to_theirs(
    traced_sts: Callable[..., Sts], collector: HttpCollector, issuer: FakeIssuer
) -> None:
    sts = traced_sts(lambda config: config.update(tracing={"trust_incoming": False}))
    assert_issued(sts.exchange(issuer.token(), headers={"traceparent": TRACEPARENT}))
    flushed(sts)
    server = collector.one("POST /token")
    assert server.trace_id != TRACE_ID
    assert server.parent_span_id == ""
    assert server.links == [(TRACE_ID, GATEWAY_SPAN)]


def test_probes_and_scrapes_are_not_traced_and_unknown_paths_name_no_route(
    traced_sts: Callable[..., Sts], collector: HttpCollector
) -> None:

    sts = traced_sts()
    for path in ("/healthz", "/readyz", "/metrics", "/nowhere?token=secret-in-url"):
        requests.get(sts.url + path, timeout=5)
    flushed(sts)
    assert [s.name for s in collector.spans] == ["GET"]
    (unknown,) = collector.spans
    assert unknown.attributes["url.path"] == "/nowhere"
    assert "http.route" not in unknown.attributes
    assert "secret-in-url" not in collector.as_text()


def test_hostile_bytes_in_the_path_and_headers_spoil_no_export(
    traced_sts: Callable[..., Sts], collector: HttpCollector, issuer: FakeIssuer
) -> None:
    """What a caller writes reaches spans as text (PEP 3333's latin-1), so that no span of a
    batch makes its encoding fail and the batch lost."""
    sts = traced_sts()
    requests.get(
        sts.url + "/%ff%fe%00" + "x" * 2000,
        headers={"User-Agent": b"\xff\xfe\x00 agent", "traceparent": b"00-\xff"},
        timeout=5,
    )
    assert_issued(sts.exchange(issuer.token(), headers={"traceparent": TRACEPARENT}))
    flushed(sts)
    assert collector.one("POST /token").trace_id == TRACE_ID
    (hostile,) = [s for s in collector.spans if s.name == "GET"]
    assert len(hostile.attributes["url.path"]) == 512
    assert len(hostile.attributes["user_agent.original"]) <= 256


def test_spans_are_exported_over_grpc_when_the_protocol_says_so(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    grpc_collector = GrpcCollector()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_collector.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        sts = make_sts()
        try:
            assert_issued(sts.exchange(issuer.token(), headers={"traceparent": TRACEPARENT}))
            flushed(sts)
        finally:
            tracing_of(sts).shutdown()
        server = grpc_collector.one("POST /token")
        assert server.trace_id == TRACE_ID
        assert server.resource["service.name"] == "token-exchange"
        assert {s.name for s in grpc_collector.children(server)} >= {"verify subject_token", "mint"}
    finally:
        grpc_collector.stop()


def test_without_the_variables_nothing_is_traced(
    sts: Sts, issuer: FakeIssuer, permissions_api: FakePermissions, caplog: pytest.LogCaptureFixture
) -> None:
    assert "token_exchange.tracing" not in sts.app.extensions
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        assert_issued(sts.exchange(issuer.token(), headers={"traceparent": TRACEPARENT}))
    assert "trace_id" not in audit_lines(caplog)[-1]
    assert "Traceparent" not in permissions_api.headers[-1]
    assert tracing.span("x").__enter__() is tracing.NO_SPAN


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_serve_workers_export_their_spans_and_flush_them_when_stopped(
    server: str,
    tmp_path: Path,
    collector: HttpCollector,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
) -> None:
    """``token-exchange serve`` with two workers, each tracing after its fork; the batch delay
    is long, so the spans reach the collector only because each worker exports what it holds
    when it is stopped."""
    cli("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    config = tmp_path / "config.toml"
    config.write_text(service_toml(issuer.issuer, permissions_api.url))
    env = {
        "PERMS_TOKEN": PERMISSIONS_TOKEN,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing exported before the end
    }
    parents = [f"{i:016x}" for i in range(1, 9)]
    with (
        serve_process(config, env, workers=2, server=server) as url,
        requests.Session() as session,
    ):
        for parent in parents:
            answer = session.post(
                f"{url}/token",
                data={
                    "grant_type": GRANT,
                    "client_id": "spa",
                    "subject_token": issuer.token(aud=["https://sts.example.test/api"]),
                    "subject_token_type": ACCESS_TOKEN,
                    "audience": COUNTRIES,
                },
                headers={"traceparent": f"00-{TRACE_ID}-{parent}-01"},
                timeout=10,
            )
            assert_issued(answer)
        assert collector.spans == []
    servers = collector.named("POST /token")
    assert sorted(s.parent_span_id for s in servers) == parents
    assert {s.trace_id for s in collector.spans} == {TRACE_ID}


@pytest.mark.slow
def test_dev_exports_what_it_holds_when_it_is_killed(collector: HttpCollector) -> None:
    """``kill`` (SIGTERM) ends ``dev`` as Ctrl-C does, through the exit handlers that export
    the spans still queued (the batch delay is long here)."""
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    with dev_process(free_port(), env) as url, requests.Session() as session:
        login = session.post(f"{url}/dev/login", data={"user": "alice"}, timeout=10)
        answer = session.post(
            f"{url}/token",
            data={
                "grant_type": GRANT,
                "client_id": "spa",
                "subject_token": login.json()["access_token"],
                "subject_token_type": ACCESS_TOKEN,
                "audience": COUNTRIES,
            },
            headers={"traceparent": TRACEPARENT},
            timeout=10,
        )
        assert_issued(answer)
        assert collector.spans == []
    server = next(s for s in collector.named("POST /token") if s.trace_id == TRACE_ID)
    assert server.attributes["token_exchange.outcome"] == "issued"
