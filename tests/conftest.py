"""Fixtures that build the world over real HTTP on 127.0.0.1.

* ``issuer``: a fake Auth0 tenant with its own RSA keys, serving OIDC discovery and a JWKS.
* ``permissions_api``: a fake permissions API whose answers each test sets.
* ``sts`` / ``make_sts``: the token exchange service itself, served by a real WSGI server in a
  thread, configured through the same settings parser users' TOML goes through.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from token_exchange.app import create_app
from token_exchange.keys import SigningKey, generate_private_key, public_jwk, thumbprint, write_key
from token_exchange.settings import parse_settings

from .devworld import DevWorld, start_dev_world
from .helpers import serve
from .redis_servers import REDIS_CLI, REDIS_SERVER, RedisClusterProcesses, RedisProcess

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS_ISSUER = "https://sts.example.test"
STS_AUDIENCE = "https://sts.example.test/api"
COUNTRIES = "https://countries.example.test"
PROJECTS = "https://projects.example.test"
BACKEND_SECRET = "s3cret-backend-secret"
PERMISSIONS_TOKEN = "perm-api-token"


@pytest.fixture(scope="session")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    """A few RSA keys generated once; tests take them instead of generating their own."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


class _QuickHTTPServer(HTTPServer):
    """pytest-httpserver, but stopping in milliseconds instead of half a second."""

    def thread_target(self) -> None:
        assert self.server is not None
        self.server.serve_forever(poll_interval=0.02)


def _server() -> HTTPServer:
    server = _QuickHTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


class FakeIssuer:
    """A fake Auth0 tenant on loopback: discovery, JWKS, and tokens signed with its keys."""

    def __init__(self, server: HTTPServer, keys: list[rsa.RSAPrivateKey]) -> None:
        self.server = server
        # Auth0 issuers end with a slash; discovery must cope with that.
        self.issuer = server.url_for("/")
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.down = False
        self.kid = self.add_key(keys[0])
        server.expect_request("/.well-known/openid-configuration").respond_with_handler(
            self._discovery
        )
        server.expect_request("/.well-known/jwks.json").respond_with_handler(self._jwks)

    def add_key(self, key: rsa.RSAPrivateKey, *, publish: bool = True) -> str:
        kid = thumbprint(public_jwk(key))
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return kid

    @property
    def jwks_uri(self) -> str:
        return self.server.url_for("/.well-known/jwks.json")

    def jwks_document(self) -> dict[str, Any]:
        return {
            "keys": [
                {**public_jwk(self.keys[kid]), "kid": kid, "alg": "RS256", "use": "sig"}
                for kid in self.published
            ]
        }

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

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
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


@pytest.fixture
def issuer(rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[FakeIssuer]:
    server = _server()
    yield FakeIssuer(server, rsa_keys)
    server.clear()
    server.stop()


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


@pytest.fixture
def permissions_api() -> Iterator[FakePermissions]:
    server = _server()
    fake = FakePermissions(server)
    server.expect_request("/internal/permissions", method="POST").respond_with_handler(fake.handle)
    yield fake
    server.clear()
    server.stop()


def base_config(issuer: FakeIssuer, permissions: FakePermissions) -> dict[str, Any]:
    """The test configuration, in the shape of the TOML file."""
    return {
        "issuer": STS_ISSUER,
        "signing": {"keys_dir": "keys", "token_ttl": 300},
        "upstreams": [
            {"issuer": issuer.issuer, "audiences": [STS_AUDIENCE], "algorithms": ["RS256"]}
        ],
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
                # Its actor tokens are its own service accounts'.
                "actor_conditions": {"sub": ["service|batch", "service|other"]},
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
                "url": permissions.url,
                "timeout": 1.0,
                "token_env": "PERMS_TOKEN",
            },
            "static": {
                "type": "static",
                "rules": [
                    {
                        "subject": "auth0|42",
                        "issuer": issuer.issuer,
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


def make_signing_key(keys_dir: Path, alg: str = "ES256") -> SigningKey:
    now = time.time()
    key = SigningKey(
        alg=alg, private_key=generate_private_key(alg, rsa_bits=2048), publish_at=now,
        activate_at=now, created_at=now,
    )  # fmt: skip
    write_key(keys_dir, key)
    return key


@pytest.fixture
def make_sts(
    issuer: FakeIssuer, permissions_api: FakePermissions, tmp_path: Path
) -> Iterator[Callable[..., Sts]]:
    """Start a service; ``edit(config)`` may change the config dict first."""
    stops: list[Callable[[], None]] = []

    def start(
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        alg: str = "ES256",
        env: dict[str, str] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> Sts:
        base = tmp_path / uuid.uuid4().hex[:8]
        base.mkdir()
        make_signing_key(base / "keys", alg)
        config = copy.deepcopy(base_config(issuer, permissions_api))
        if edit:
            edit(config)
        settings = parse_settings(config, env=env or ENV, base_dir=base)
        app = create_app(settings, overrides=overrides)
        url, stop = serve(app)
        stops.append(stop)
        stops.append(app.extensions["token_exchange"].store.close)
        return Sts(url, app, base / "keys")

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def sts(make_sts: Callable[..., Sts]) -> Sts:
    return make_sts()


@pytest.fixture
def dev_world() -> Iterator[DevWorld]:
    """``token-exchange dev`` and ``examples/countries_api.py``, each on its own loopback port."""
    with start_dev_world() as world:
        yield world


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free port, for the whole session (flushed per test)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> Iterator[str]:
    if redis_process.process is None:  # a test killed it
        redis_process.start()
    redis_process.flush()
    yield redis_process.url
    if redis_process.process is None:
        redis_process.start()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server / redis-cli are not installed (Debian package redis-server)")
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()
