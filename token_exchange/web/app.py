"""The application factory: the only place that builds concrete services and wires them.

``create_app(settings)`` returns a Flask app; ``overrides`` (an ``Overrides``) replaces any
service (the clock, key store, upstream key sources, permission sources, store, HTTP pools) so
tests and the development mode swap parts without patching.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask
from flask.sessions import NullSession, SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config.config_model import CLIENT_ASSERTION_ALGORITHMS
from ..config.settings import Settings
from ..grant.clients import ClientRegistry
from ..grant.introspection import TokenRegistry
from ..grant.pipeline import GrantRegistry, TokenEndpoint
from ..grant.ratelimit import RateLimiter
from ..grant.rfc7523 import JwtBearer
from ..grant.rfc8693 import TokenExchange
from ..grant.upstream import UpstreamVerifier
from ..oauth.clock import SYSTEM_CLOCK, Clock
from ..oauth.jose import StaticKeySource, parse_jwks
from ..oauth.profile import (
    GRANT_TYPE,
    ID_JAG_PROFILE,
    JWT_BEARER_GRANT_TYPE,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    TOKEN_TYPE_TXN_TOKEN,
)
from ..oauth.tokens import KeySource
from ..obs.metrics import Metrics, SigningKeyCollector, scrape_registry
from ..obs.tracing import Tracing
from ..sources.epoch import StoreEpoch
from ..sources.http import CurlPool, new_pool, new_session
from ..sources.jwks import CLIENT_JWKS_FETCHES, RemoteKeySet
from ..sources.keys import DirectoryKeyStore, KeyStore, Signer
from ..sources.permission_sources import build_source
from ..sources.permissions import PermissionSource
from ..sources.resilience import CpuGate, Guard
from ..sources.store import MemoryStore, Store, StoreUnavailable
from ..sources.stores import open_store
from .headers import ResponseHeaders
from .jsclient import bp as jsclient_bp
from .overload import LoadShedder
from .services import Services
from .traced import TracedRequests
from .views import bp


@dataclass(frozen=True)
class Overrides:
    """Services ``create_app`` takes as given instead of building them from the settings.

    Every field is optional: what is left ``None`` (or empty) is built as configured.
    """

    #: The wall clock of every service (token times, key states, caches); ``time.time``.
    clock: Clock | None = None
    metrics: Metrics | None = None
    #: Our signing keys; else ``signing.keys_dir``.
    keys: KeyStore | None = None
    #: Verification keys per upstream issuer; an issuer not named here gets its remote JWKS.
    key_sources: Mapping[str, KeySource] = field(default_factory=dict)
    #: The session for JWKS and discovery fetches.
    jwks_session: requests.Session | None = None
    #: Permission sources by name; a name not given here is built from ``[permissions]``.
    permission_sources: Mapping[str, PermissionSource] = field(default_factory=dict)
    #: The connection pool of the HTTP permission sources.
    permissions_pool: CurlPool | None = None
    store: Store | None = None


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> Flask:
    """Build the app for ``settings``. See ``Overrides`` for ``overrides``."""
    given = overrides or Overrides()
    # `is None`, not `or`: a given service is used even if it is falsy (an empty store, say).
    clock: Clock = SYSTEM_CLOCK if given.clock is None else given.clock
    metrics = Metrics() if given.metrics is None else given.metrics
    keys: KeyStore = (
        given.keys
        if given.keys is not None
        else DirectoryKeyStore(
            settings.signing.keys_dir, clock=clock, reload_interval=settings.signing.reload_interval
        )
    )
    key_sources = given.key_sources
    # JWKS fetches are rare: honour proxy and CA-bundle variables for egress to the issuer.
    jwks_session = given.jwks_session or new_session(trust_env=True, pool_size=4)
    permission_sources = dict(given.permission_sources)
    permissions_pool = given.permissions_pool or new_pool()
    store: Store = (
        given.store
        if given.store is not None
        else open_store(
            settings.store.url,
            timeout=settings.store.timeout,
            max_concurrency=settings.store.max_concurrency,
            breaker_cooldown=settings.store.breaker_cooldown,
            metrics=metrics,
        )
    )

    upstreams = []
    for upstream in settings.upstreams:
        source = key_sources.get(upstream.issuer) or RemoteKeySet(
            issuer=upstream.issuer,
            algorithms=upstream.algorithms,
            session=jwks_session,
            jwks_uri=upstream.jwks_uri,
            discovery_url=None if upstream.jwks_uri else upstream.discovery_url,
            refresh_interval=upstream.jwks_refresh_interval,
            spiffe=upstream.trust_domain is not None,
            cooldown=upstream.jwks_cooldown,
            timeout=upstream.jwks_timeout,
            wait=upstream.jwks_wait,
            max_concurrency=upstream.jwks_max_concurrency,
            breaker_cooldown=upstream.jwks_breaker_cooldown,
            clock=clock,
            metrics=metrics,
        )
        upstreams.append((upstream, source))
    client_keys = client_key_sources(settings, session=jwks_session, clock=clock, metrics=metrics)
    key_sources_in_use = [source for _, source in upstreams] + list(client_keys.values())
    verifier = UpstreamVerifier(
        upstreams,
        clock=clock,
        cache_size=settings.server.verified_token_cache,
        metrics=metrics,
        own_issuer=settings.issuer,
    )
    for name, source_settings in settings.permissions.items():
        permission_sources.setdefault(
            name,
            build_source(
                source_settings,
                store=store,
                pool=permissions_pool,
                clock=clock,
                metrics=metrics,
            ),
        )
    limiter = RateLimiter(store, settings.rate_limits, clock=clock)
    # Revocations and single-use markers are read through the epoch marker (epoch.py); an
    # in-process store lives and dies with its process, and has none.
    durable: Store = store
    if not isinstance(store, MemoryStore):
        durable = StoreEpoch(
            store, lifetime=settings.signing.token_ttl, clock=clock, metrics=metrics
        )
        _read_epoch(durable)
    tokens = TokenRegistry(settings, keys, durable, clock=clock)

    clients = ClientRegistry(
        settings.clients,
        key_sources=client_keys,
        # RFC 7523 §3 item 3: our issuer or our token endpoint URL, nothing else.
        audiences=(settings.issuer, settings.token_endpoint),
        store=durable,
        clock=clock,
    )
    exchange = TokenExchange(
        settings,
        verifier=verifier,
        permission_sources=permission_sources,
        signer=Signer(keys),
        limiter=limiter,
        clock=clock,
        metrics=metrics,
        revocations=tokens,
        replay=durable,
    )
    grants = GrantRegistry(
        [exchange, *_assertion_grants(settings, exchange, durable, limiter, clock, metrics)]
    )
    services = Services(
        settings=settings,
        clients=clients,
        exchange=exchange,
        endpoint=TokenEndpoint(grants, clients=clients, limiter=limiter, proofs=exchange.proofs),
        keys=keys,
        verifier=verifier,
        store=store,
        limiter=limiter,
        tokens=tokens,
        metrics=metrics,
        scrape_registry=scrape_registry(
            metrics, [SigningKeyCollector(keys, clock)] if keys is not None else []
        ),
        metadata=authorization_server_metadata(settings, grants.grant_types),
        cors_origins=frozenset(o for c in settings.clients for o in c.allowed_origins),
        guards=_guards([store, *key_sources_in_use, *permission_sources.values()]),
    )
    app = Flask("token_exchange")
    app.session_interface = NoSessions()
    if settings.server.trusted_proxies:
        # Believe X-Forwarded-For only as far back as there are proxies we run.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.server.trusted_proxies
        )
    # Next to outermost, so a shed request costs as little as possible; its answer gets the
    # request id and CORS headers of every answer from the layer outside it.
    app.wsgi_app = LoadShedder(  # type: ignore[method-assign]
        app.wsgi_app,
        max_in_flight=settings.server.max_in_flight,
        metrics=metrics,
        waiting=lambda: sum(guard.bulkhead.in_flight for guard in services.guards),
        gate=CpuGate(),
        max_body_bytes=settings.server.max_body_bytes,
    )
    app.wsgi_app = ResponseHeaders(app.wsgi_app, services)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.extensions["token_exchange"] = services
    app.register_blueprint(bp)
    app.register_blueprint(jsclient_bp)
    # What the OTEL_* variables ask for: nothing unless they do.
    if (tracing := Tracing.from_environment(os.environ)) is not None:
        # Outermost: a shed request is traced too.
        app.wsgi_app = TracedRequests(  # type: ignore[method-assign]
            app.wsgi_app,
            tracing,
            routes=[rule.rule for rule in app.url_map.iter_rules() if not rule.arguments],
            skip_paths=settings.tracing.skip_paths,
            trust_incoming=settings.tracing.trust_incoming,
        )
        app.extensions["token_exchange.tracing"] = tracing
    _prefetch_upstream_keys(verifier)
    _prefetch(client_keys.values())
    return app


class NoSessions(SessionInterface):
    """The service keeps no cookie sessions: every request gets the one null session (which
    refuses to be written to), and nothing is ever saved. Flask's default would look for a
    secret key and build a null session per request."""

    null = NullSession()

    def open_session(self, app: Flask, request: Any) -> NullSession:
        return self.null

    def is_null_session(self, obj: object) -> bool:
        return True

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


def client_key_sources(
    settings: Settings, *, session: requests.Session, clock: Clock, metrics: Metrics
) -> dict[str, KeySource]:
    """The public keys of each private_key_jwt client: its inline ``jwks``, or its
    ``jwks_uri`` fetched as an issuer's keys are (cached, cooldown, breaker, bounded)."""
    sources: dict[str, KeySource] = {}
    for client in settings.clients:
        if client.jwks is not None:
            keyset = parse_jwks(dict(client.jwks), CLIENT_ASSERTION_ALGORITHMS)
            sources[client.client_id] = StaticKeySource(keyset)
        elif client.jwks_uri is not None:
            sources[client.client_id] = RemoteKeySet(
                issuer=f"client:{client.client_id}",
                algorithms=CLIENT_ASSERTION_ALGORITHMS,
                session=session,
                jwks_uri=client.jwks_uri,
                clock=clock,
                metrics=metrics,
                max_concurrency=CLIENT_JWKS_FETCHES,
            )
    return sources


def _prefetch(sources: Iterable[KeySource]) -> None:
    for source in sources:
        if not source.loaded:
            threading.Thread(target=source.ensure_loaded, name="jwks-prefetch", daemon=True).start()


def _guards(dependencies: Iterable[object]) -> tuple[Guard, ...]:
    """The guards of ``dependencies``: what serve's threads are counted from (overload.py)."""
    return tuple(
        guard
        for guard in (getattr(d, "guard", None) for d in dependencies)
        if isinstance(guard, Guard)
    )


def _read_epoch(epoch: StoreEpoch) -> None:
    """Learn the store's epoch at start-up, so that tokens minted from now on are judged
    against it; a store that is down now is read at its first use instead."""
    with contextlib.suppress(StoreUnavailable):
        epoch.check()


def _prefetch_upstream_keys(verifier: UpstreamVerifier) -> None:
    """Load each issuer's keys in the background, so start-up never waits on (or fails with)
    an issuer that is down; exchanges for it answer 503 until its keys load."""
    _prefetch(verifier.key_sources.values())


def _assertion_grants(
    settings: Settings,
    exchange: TokenExchange,
    replay: Store,
    limiter: RateLimiter,
    clock: Clock,
    metrics: Metrics,
) -> list[JwtBearer]:
    """The jwt-bearer grant (RFC 7523), when a client may use it: sharing the exchange's
    verification and minting, so that an assertion is checked and a token minted as for an
    exchange."""
    if not any(JWT_BEARER_GRANT_TYPE in c.grant_types for c in settings.clients):
        return []
    return [
        JwtBearer(
            settings,
            verification=exchange.verification,
            minter=exchange.minter,
            replay=replay,
            limiter=limiter,
            clock=clock,
            metrics=metrics,
        )
    ]


def authorization_server_metadata(
    settings: Settings, grant_types: Sequence[str] = (GRANT_TYPE,)
) -> dict[str, Any]:
    """RFC 8414 §2 metadata for this token service, whose token endpoint answers
    ``grant_types`` (``GrantRegistry.grant_types``)."""
    assertion_algs = list(CLIENT_ASSERTION_ALGORITHMS)
    metadata: dict[str, Any] = {
        "issuer": settings.issuer,
        # It refuses every request (web.views.authorize): published for clients whose metadata
        # models require one (MCP's SDKs); response_types_supported below names no type.
        "authorization_endpoint": f"{settings.issuer}/authorize",
        "token_endpoint": settings.token_endpoint,
        "revocation_endpoint": f"{settings.issuer}/revoke",
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint": f"{settings.issuer}/introspect",
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "jwks_uri": settings.jwks_uri,
        "grant_types_supported": list(grant_types),
        # No response type: this service issues tokens at its token endpoint only.
        "response_types_supported": [],
        # Nor any response mode (RFC 8414 §2: omitted, it would mean ["query", "fragment"]).
        "response_modes_supported": [],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        # RFC 8414 §2: what private_key_jwt assertions may be signed with (never HS* or none).
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "scopes_supported": sorted({s for api in settings.apis for s in api.scopes}),
        # RFC 9449 §5.1.
        "dpop_signing_alg_values_supported": list(settings.dpop.algorithms),
        "authorization_details_types_supported": sorted(
            {t for api in settings.apis for t in api.authorization_details_types}
        ),
    }
    if JWT_BEARER_GRANT_TYPE in grant_types and any(
        "id-jag" in u.assertions for u in settings.upstreams
    ):
        # draft-ietf-oauth-identity-assertion-authz-grant-04 §8.1; which issuers, not said.
        metadata["authorization_grant_profiles_supported"] = [ID_JAG_PROFILE]
    # Ours (no registry defines one): what requested_token_type may name (RFC 8693 §3), the
    # Txn-Token type when this service is its trust domain's Txn-Token service.
    metadata["requested_token_types_supported"] = [
        TOKEN_TYPE_ACCESS_TOKEN,
        TOKEN_TYPE_JWT,
        *([TOKEN_TYPE_TXN_TOKEN] if settings.transaction_tokens is not None else []),
    ]
    actor_profiles = sorted(
        {p for c in settings.clients for p in (c.actor_sub_profile or "").split()}
    )
    if actor_profiles:
        # OAuth 2.0 Entity Profiles §5: the kinds of actor our tokens' act.sub_profile names
        # (empty arrays are left out).
        metadata["entity_profiles_supported"] = {"actor": actor_profiles}
    return metadata
