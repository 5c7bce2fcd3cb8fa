"""The fakes and builders the tests share; the fixtures in ``conftest.py`` put them together.

* ``TokenMaker``: an issuer's keys and the subject tokens it signs, in-process; ``FakeIssuer``
  serves them as a fake Auth0 tenant over HTTP on 127.0.0.1 (discovery, JWKS).
* ``FakePermissions``: a fake permissions API on loopback whose answers each test sets;
  ``RecordingPermissions`` the same answers in-process, for the unit layer.
* ``base_config``/``ENV``: the test configuration, in the shape of the TOML file.
* ``Sts``: a running token exchange service and an HTTP client for it.
* ``signing_key``/``make_signing_key``: keys of ours, in memory or written to a keys directory.
* ``build_exchange``: the grant wired from static parts (no sockets), for the unit layer.
* ``DpopKey``: a client's DPoP key and the proofs (RFC 9449) it signs.
* ``quick_server``: a loopback HTTP server (pytest-httpserver) that stops in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from token_exchange.config.settings import Settings
from token_exchange.grant.introspection import TokenRegistry
from token_exchange.grant.ratelimit import RateLimiter
from token_exchange.grant.record import RequestRecord
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.grant.upstream import UpstreamVerifier
from token_exchange.oauth.clock import Clock
from token_exchange.oauth.dpop import token_hash
from token_exchange.oauth.jose import StaticKeySource, parse_jwks, thumbprint
from token_exchange.oauth.tokens import KeySource
from token_exchange.sources.keys import (
    MemoryKeyStore,
    Signer,
    SigningKey,
    generate_private_key,
    public_jwk,
    write_key,
)
from token_exchange.sources.permission_sources import build_source
from token_exchange.sources.permissions import Decision, PermissionRequest, PermissionSource
from token_exchange.sources.store import MemoryStore

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS_ISSUER = "https://sts.example.test"
STS_AUDIENCE = "https://sts.example.test/api"
COUNTRIES = "https://countries.example.test"
PROJECTS = "https://projects.example.test"
BACKEND_SECRET = "s3cret-backend-secret"
PERMISSIONS_TOKEN = "perm-api-token"
#: The upstream issuer of the unit layer: nothing listens there, and nothing needs to.
TENANT = "https://tenant.example.test/"
#: A permissions API URL nothing answers at: the unit layer answers in its place, in-process.
UNREACHABLE_PERMISSIONS = "https://permissions.example.test/internal/permissions"
#: The time the unit layer's clock starts at.
T0 = 1_800_000_000.0


class QuickHTTPServer(HTTPServer):
    """pytest-httpserver, but stopping in milliseconds instead of half a second."""

    def thread_target(self) -> None:
        assert self.server is not None
        self.server.serve_forever(poll_interval=0.02)


def quick_server() -> HTTPServer:
    """A started loopback HTTP server; the caller stops it."""
    server = QuickHTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


class TokenMaker:
    """An issuer's keys and the subject tokens it signs with them (RS256), in-process.

    ``clock`` dates the tokens (``iat``, ``exp``): the real time unless a test fixes it.
    """

    def __init__(
        self, issuer: str, keys: list[rsa.RSAPrivateKey], *, clock: Clock = time.time
    ) -> None:
        self.issuer = issuer
        self.clock = clock
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.kid = self.add_key(keys[0])

    def add_key(self, key: rsa.RSAPrivateKey, *, publish: bool = True) -> str:
        kid = thumbprint(public_jwk(key))
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return kid

    def jwks_document(self) -> dict[str, Any]:
        return {
            "keys": [
                {**public_jwk(self.keys[kid]), "kid": kid, "alg": "RS256", "use": "sig"}
                for kid in self.published
            ]
        }

    def key_source(self) -> StaticKeySource:
        """The published keys as an upstream's ``KeySource``: verification without HTTP."""
        return StaticKeySource(parse_jwks(self.jwks_document(), ["RS256"]))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            "sub": "auth0|42",
            "aud": [STS_AUDIENCE, f"{self.issuer}userinfo"],
            "iat": now,
            "exp": now + 3600,
            "given_name": "John",
            "family_name": "Doe",
            "email": "john@example.test",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        key: Any = None,
        kid: str | None = None,
        alg: str = "RS256",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A subject token; claims given as None are left out."""
        kid = kid or self.kid
        key = key if key is not None else self.keys[kid]
        return jwt.encode(
            self.claims(**claims), key, algorithm=alg, headers={"kid": kid, **(headers or {})}
        )


class FakeIssuer(TokenMaker):
    """A fake Auth0 tenant on loopback: discovery, JWKS, and tokens signed with its keys."""

    def __init__(self, server: HTTPServer, keys: list[rsa.RSAPrivateKey]) -> None:
        # Auth0 issuers end with a slash; discovery must cope with that.
        super().__init__(server.url_for("/"), keys)
        self.server = server
        self.down = False
        server.expect_request("/.well-known/openid-configuration").respond_with_handler(
            self._discovery
        )
        server.expect_request("/.well-known/jwks.json").respond_with_handler(self._jwks)

    @property
    def jwks_uri(self) -> str:
        return self.server.url_for("/.well-known/jwks.json")

    def _discovery(self, request: Request) -> Response:
        if self.down:
            return Response("down", status=503)
        body = {"issuer": self.issuer, "jwks_uri": self.jwks_uri}
        return Response(json.dumps(body), content_type="application/json")

    def _jwks(self, request: Request) -> Response:
        if self.down:
            return Response("down", status=503)
        return Response(json.dumps(self.jwks_document()), content_type="application/json")

    def jwks_fetches(self) -> int:
        return sum(1 for req, _ in self.server.log if req.path == "/.well-known/jwks.json")


@dataclass
class FakePermissions:
    """A fake permissions API: records each question, answers with ``answer(question)``."""

    server: HTTPServer
    questions: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], tuple[int, Any, dict[str, str]]] = field(
        default=lambda q: (
            200,
            {"allow": True, "claims": {"custom_access_to_countries": ["nl"]}},
            {},
        )
    )

    @property
    def url(self) -> str:
        return self.server.url_for("/internal/permissions")

    def reply(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.answer = lambda q: (status, body, headers or {})

    def handle(self, request: Request) -> Response:
        question = request.get_json()
        self.questions.append(question)
        self.headers.append(dict(request.headers))
        status, body, headers = self.answer(question)
        payload = body if isinstance(body, str | bytes) else json.dumps(body)
        return Response(payload, status=status, headers=headers, content_type="application/json")


def base_config(issuer: str, permissions_url: str) -> dict[str, Any]:
    """The test configuration, in the shape of the TOML file: upstream ``issuer``, and the
    countries API's permissions answered by the HTTP API at ``permissions_url``."""
    return {
        "issuer": STS_ISSUER,
        "signing": {"keys_dir": "keys", "token_ttl": 300},
        "upstreams": [{"issuer": issuer, "audiences": [STS_AUDIENCE], "algorithms": ["RS256"]}],
        "clients": [
            {
                "client_id": "spa",
                "type": "public",
                "allowed_origins": ["https://app.example.test"],
                "audiences": [COUNTRIES, PROJECTS],
            },
            {
                "client_id": "backend",
                "type": "confidential",
                "secret_env": "BACKEND_SECRET",
                "audiences": [COUNTRIES],
                "allow_delegation": True,
                # Its actor tokens are its own service accounts', of that issuer.
                "actor_conditions": {"iss": issuer, "sub": ["service|batch", "service|other"]},
            },
            {
                "client_id": "countries-api",
                "type": "confidential",
                "secret_env": "COUNTRIES_API_SECRET",
                "audiences": [],
                "introspects": [COUNTRIES],
            },
            {
                "client_id": "reader",
                "type": "public",
                "audiences": [COUNTRIES],
                "scopes": ["countries:read"],
            },
        ],
        "apis": [
            {
                "audience": COUNTRIES,
                "resources": [f"{COUNTRIES}/countries/"],
                "scopes": ["countries:read", "countries:write"],
                "copy_claims": ["given_name", "family_name", "email"],
                "permissions": "webapp",
                "authorization_details_types": ["country_access"],
            },
            {
                "audience": PROJECTS,
                "resources": [f"{PROJECTS}/"],
                "scopes": ["projects:read"],
                "permissions": "static",
            },
        ],
        "permissions": {
            "webapp": {
                "type": "http",
                "url": permissions_url,
                "timeout": 1.0,
                "token_env": "PERMS_TOKEN",
            },
            "static": {
                "type": "static",
                "rules": [
                    {
                        "subject": "auth0|42",
                        "issuer": issuer,
                        "claims": {"projects": [["acme", "web", "editor"]]},
                    },
                ],
            },
        },
    }


COUNTRIES_API_SECRET = "countries-api-secret"
ENV = {
    "BACKEND_SECRET": BACKEND_SECRET,
    "PERMS_TOKEN": PERMISSIONS_TOKEN,
    "COUNTRIES_API_SECRET": COUNTRIES_API_SECRET,
}


class Sts:
    """A running token exchange service and a client for it."""

    def __init__(self, url: str, app: Any, keys_dir: Path) -> None:
        self.url = url
        self.app = app
        self.keys_dir = keys_dir
        self.http = requests.Session()

    @property
    def services(self) -> Any:
        return self.app.extensions["token_exchange"]

    def exchange(self, subject_token: str | None, **params: Any) -> requests.Response:
        """POST /token with sensible defaults; a parameter given as None is left out."""
        data: dict[str, Any] = {
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
        }
        headers = params.pop("headers", None)
        data.update(params)
        data = {k: v for k, v in data.items() if v is not None}
        return self.http.post(f"{self.url}/token", data=data, headers=headers, timeout=10)

    def jwks(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.url}/.well-known/jwks.json", timeout=5).json())

    def decode(self, token: str, audience: str = COUNTRIES) -> dict[str, Any]:
        """Verify a minted token the way a downstream API would, with PyJWT and our JWKS."""
        header = jwt.get_unverified_header(token)
        jwk = next(k for k in self.jwks()["keys"] if k["kid"] == header["kid"])
        return dict(
            jwt.decode(
                token,
                jwt.PyJWK(jwk),
                algorithms=[jwk["alg"]],
                audience=audience,
                issuer=STS_ISSUER,
            )
        )


def signing_key(alg: str = "ES256", *, now: float | None = None) -> SigningKey:
    """A key of ours that signs from ``now`` (the real time by default) on."""
    now = time.time() if now is None else now
    return SigningKey(
        alg=alg, private_key=generate_private_key(alg, rsa_bits=2048), publish_at=now,
        activate_at=now, created_at=now,
    )  # fmt: skip


def make_signing_key(keys_dir: Path, alg: str = "ES256") -> SigningKey:
    """A signing key, written to ``keys_dir`` as ``token-exchange keys generate`` would."""
    key = signing_key(alg)
    write_key(keys_dir, key)
    return key


@dataclass
class RecordingPermissions:
    """A permission source in-process: records each question, answers ``decision``."""

    decision: Decision = field(
        default_factory=lambda: Decision(allow=True, claims={"custom_access_to_countries": ["nl"]})
    )
    questions: list[PermissionRequest] = field(default_factory=list)

    def decide(self, request: PermissionRequest) -> Decision:
        self.questions.append(request)
        return self.decision


def audited(record: RequestRecord) -> dict[str, Any]:
    """The audit fields a grant recorded: the record's, but ``client_id``, which the pipeline
    records (a grant called directly has none)."""
    fields = record.as_audit()
    if fields["client_id"] is None:
        del fields["client_id"]
    return fields


def build_exchange(
    settings: Settings,
    *,
    clock: Clock,
    key_sources: Mapping[str, KeySource],
    permission_sources: Mapping[str, PermissionSource] | None = None,
    keys: MemoryKeyStore | None = None,
) -> TokenExchange:
    """The grant as ``create_app`` wires it, from parts that need no socket: upstream keys
    held in-process, a memory store and key store, the permission sources of ``settings``
    unless ``permission_sources`` replaces them, and ``clock`` for every one of them."""
    keys = keys or MemoryKeyStore([signing_key(now=clock() - 60)], clock=clock)
    store = MemoryStore(clock=clock)
    sources: dict[str, PermissionSource] = {
        name: build_source(source, store=store, clock=clock)
        for name, source in settings.permissions.items()
    }
    # An HTTP source left in place would open a socket when asked, which the unit layer forbids.
    sources.update(permission_sources or {})
    verifier = UpstreamVerifier(
        [(upstream, key_sources[upstream.issuer]) for upstream in settings.upstreams],
        clock=clock,
        own_issuer=settings.issuer,
    )
    return TokenExchange(
        settings,
        verifier=verifier,
        permission_sources=sources,
        signer=Signer(keys),
        revocations=TokenRegistry(settings, keys, store, clock=clock),
        limiter=RateLimiter(store, settings.rate_limits, clock=clock),
        clock=clock,
        replay=store,
    )


#: RFC 7523 §2.2.
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STS_TOKEN_ENDPOINT = f"{STS_ISSUER}/token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ClientAssertions:
    """A private_key_jwt client (RFC 7523 §2.2): its key pair, its public JWK Set, and the
    client assertions it signs, dated by ``clock``. ``key``: any private key (ES256 default)."""

    def __init__(
        self, client_id: str, key: Any = None, *, alg: str = "ES256", clock: Clock = time.time
    ) -> None:
        self.client_id = client_id
        self.alg = alg
        self.key = key if key is not None else generate_private_key(alg)
        self.kid = thumbprint(public_jwk(self.key))
        self.clock = clock

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**public_jwk(self.key), "kid": self.kid, "use": "sig"}]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": STS_TOKEN_ENDPOINT,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def assertion(
        self, *, key: Any = None, alg: str | None = None, kid: str | None = None, **claims: Any
    ) -> str:
        """A signed assertion; claims given as None are left out."""
        return jwt.encode(
            self.claims(**claims),
            key if key is not None else self.key,
            algorithm=alg or self.alg,
            headers={"kid": kid or self.kid},
        )

    def unsafe_assertion(self, alg: str, secret: bytes = b"", **claims: Any) -> str:
        """An assertion PyJWT refuses to make: ``alg`` "none" (unsigned) or HS256 keyed with
        ``secret`` (the attack that takes the public key as an HMAC secret)."""
        header = _b64(json.dumps({"alg": alg, "kid": self.kid, "typ": "JWT"}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        signing_input = f"{header}.{payload}"
        if alg == "none":
            return signing_input + "."
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def form(self, assertion: str | None = None, **claims: Any) -> dict[str, str]:
        """The body parameters of RFC 7523 §2.2."""
        return {
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "client_assertion": assertion if assertion is not None else self.assertion(**claims),
        }


#: The URL of our token endpoint as clients know it (the configured issuer's), for DPoP proofs.
TOKEN_ENDPOINT = STS_TOKEN_ENDPOINT


class DpopKey:
    """A client's DPoP key pair (RFC 9449) and the proofs it signs; every proof a fresh jti.

    ``proof`` makes a valid proof for POST to our token endpoint unless told otherwise:
    ``claims`` given as None are left out, ``headers`` replace the JOSE header's members (None
    drops one), ``token`` adds its ``ath``.
    """

    def __init__(self, alg: str = "ES256", *, clock: Clock = time.time) -> None:
        self.alg = alg
        self.clock = clock
        self.private_key = generate_private_key(alg, rsa_bits=2048)
        self.jwk = public_jwk(self.private_key)
        self.jkt = thumbprint(self.jwk)

    def proof(
        self,
        htu: str = TOKEN_ENDPOINT,
        htm: str = "POST",
        *,
        token: str | None = None,
        key: Any = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        payload: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": htm,
            "htu": htu,
            "iat": int(self.clock()),
        }
        if token is not None:
            payload["ath"] = token_hash(token)
        payload.update(claims)
        header: dict[str, Any] = {"typ": "dpop+jwt", "jwk": self.jwk, **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            self.private_key if key is None else key,
            algorithm=alg or self.alg,
            headers=header,
        )


class SharedStore:
    """Stands in for a Redis shared by processes (not a ``MemoryStore``, which lives and dies
    with one process): ``forget()`` is a restart without persistence."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.data = MemoryStore(clock=clock)
        self.reads: list[str] = []

    def forget(self) -> None:
        self.data = MemoryStore(clock=self.clock)

    def get(self, key: str) -> bytes | None:
        self.reads.append(key)
        return self.data.get(key)

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self.data.set(key, value, ttl, durable=durable)

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        return self.data.add(key, value, ttl)

    def incr(self, key: str, ttl: float) -> int:
        return self.data.incr(key, ttl)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
