"""``token-exchange dev``: the whole flow in one process, with nothing else to run.

It adds, to the normal service:

* a **development issuer** that plays Auth0: ``POST /dev/login`` with ``user=alice`` returns an
  RS256 subject token for a demo user, issued (``azp``) to the Auth0-like client id of the SPA;
  its token endpoint (``POST /dev/issuer/oauth/token``, ``grant_type=client_credentials``) returns
  a machine-to-machine token as Auth0 shapes one (``gty: "client-credentials"``, ``sub``
  ``<client id>@clients``); its OpenID Connect discovery document is at
  ``/dev/issuer/.well-known/openid-configuration``. Its key lives only in this process and is
  trusted only in this mode (and by a ``serve`` configured to trust it on loopback).
* a **demo permissions API** at ``POST /dev/permissions``, a reference implementation of the
  contract that the web application implements (see README), called over HTTP like the real one.
* an in-memory signing key, generated at start.
* the example SPA (``examples/spa``) at ``/spa/``, configured by ``/spa/config.json``.

``serve_config`` is the config of a ``serve`` in front of a running ``dev`` (``dev
--print-config``): dev's issuer is its upstream and dev's demo permissions API its permissions
source, with the two secrets they share named by environment variable (``ENV_PERMISSIONS_TOKEN``,
``ENV_CLIENT_SECRET``).
"""

from __future__ import annotations

import importlib.resources
import json
import re
import secrets
import shlex
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Blueprint, Flask, Response, abort, request, send_file

from ..config.settings import HttpPermissionsSettings, Settings
from ..oauth import strictjson
from ..oauth.jose import StaticKeySource, parse_jwks, thumbprint
from ..oauth.profile import GRANT_TYPE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_BEARER
from ..sources.keys import MemoryKeyStore, SigningKey, generate_private_key, public_jwk
from ..web.app import Overrides, create_app
from ..web.views import json_response

COUNTRIES_API = "https://countries.example.test"
COUNTRIES_PREFIX = f"{COUNTRIES_API}/countries/"
STS_AUDIENCE = "https://sts.example.test"
SUBJECT_TOKEN_TTL = 3600
#: The Auth0-like client ids (32 letters and digits, as Auth0 makes them) of dev's issuer: the
#: SPA its users sign in to (``azp`` of their tokens), and a machine-to-machine application.
DEV_SPA_AUTH0_CLIENT_ID = "devSpaAuth0ClientId0000000000001"
DEV_M2M_CLIENT_ID = "devM2mAuth0ClientId0000000000001"
#: Auth0's ``gty`` of a client-credentials token.
GTY_CLIENT_CREDENTIALS = "client-credentials"
#: Where ``examples/countries_api.py`` listens by default.
DEFAULT_COUNTRIES_API_URL = "http://127.0.0.1:8081"
#: The confidential client of dev mode: the countries API registered as a client, which may
#: introspect and revoke the tokens minted for it (its secret is made at start).
DEV_CONFIDENTIAL_CLIENT = "countries-api"
#: The environment variables ``dev`` takes its two secrets from when set (random ones otherwise),
#: so that a ``serve`` in front of it can share them: the bearer token of the demo permissions
#: API, and the secret of the confidential client.
ENV_PERMISSIONS_TOKEN = "TOKEN_EXCHANGE_DEV_PERMISSIONS_TOKEN"
ENV_CLIENT_SECRET = "TOKEN_EXCHANGE_DEV_CLIENT_SECRET"
#: Where ``dev --print-config`` puts ``serve``, and its key, unless told otherwise.
DEFAULT_SERVE_PORT = 8090
DEFAULT_SERVE_KEYS_DIR = "keys/local"
SPA_FILES = {"": "index.html", "index.html": "index.html"} | {n: n for n in ("app.js", "claims.js")}

#: Demo users of the development issuer and what the demo permissions API lets them do.
DEMO_USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "given_name": "Alice",
        "family_name": "Doe",
        "email": "alice@example.test",
        "countries": ["nl", "de", "be"],
        "scopes": ["countries:read", "countries:write"],
        "projects": [["acme", "website", "editor"], ["acme", "shop", "viewer"]],
    },
    "bob": {
        "given_name": "Bob",
        "family_name": "Smith",
        "email": "bob@example.test",
        "countries": ["fr"],
        "scopes": ["countries:read"],
        "projects": [["globex", "intranet", "admin"]],
    },
}
_COUNTRY = re.compile(r"^[a-z]{2}$")


class DevIssuer:
    """Plays Auth0: signs RS256 subject tokens for demo users with a key made at start."""

    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = public_jwk(self._key)
        self.kid = thumbprint(jwk)
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def key_source(self) -> StaticKeySource:
        return StaticKeySource(parse_jwks(self.jwks, ["RS256"]))

    def issue(self, user: str, *, ttl: int = SUBJECT_TOKEN_TTL) -> str:
        profile = DEMO_USERS[user]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"dev|{user}",
            "aud": [self.audience],
            "iat": now,
            "exp": now + ttl,
            # As Auth0: the application the user signed in to (subject_conditions bind it).
            "azp": DEV_SPA_AUTH0_CLIENT_ID,
            "given_name": profile["given_name"],
            "family_name": profile["family_name"],
            "email": profile["email"],
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def issue_m2m(
        self, client_id: str, audience: str | None = None, *, ttl: int = SUBJECT_TOKEN_TTL
    ) -> str:
        """A client-credentials token as Auth0 shapes one: ``gty``, ``sub`` ``<id>@clients``."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"{client_id}@clients",
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + ttl,
            "azp": client_id,
            "gty": GTY_CLIENT_CREDENTIALS,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def discovery(self) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 §3 metadata, for what this issuer has: its keys and a
        token endpoint for client credentials (users sign in at ``/dev/login``, not through an
        authorization endpoint)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "token_endpoint": f"{self.issuer}/oauth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }


def demo_decision(question: dict[str, Any]) -> dict[str, Any]:
    """The demo permissions API's answer to one question (the contract in the README)."""
    user = DEMO_USERS.get(str(question.get("subject", "")).removeprefix("dev|"))
    if user is None or question.get("audience") != COUNTRIES_API:
        return {"allow": False}
    # Each requested resource must be a country this user may see, or something under one
    # (/countries/nl/stats); without resources the token covers all of them.
    resources = question.get("resources", [])
    wanted = []
    for resource in resources:
        code = (
            resource.removeprefix(COUNTRIES_PREFIX).split("/", 1)[0]
            if resource.startswith(COUNTRIES_PREFIX)
            else ""
        )
        if not _COUNTRY.match(code) or code not in user["countries"]:
            return {"allow": False, "ttl": 30}
        wanted.append(code)
    answer: dict[str, Any] = {
        "allow": True,
        "scopes": [s for s in question.get("scopes", []) if s in user["scopes"]],
        "claims": {
            "custom_access_to_countries": wanted or user["countries"],
            "custom_permissions": user["projects"],
        },
        "ttl": 60,
    }
    if len(resources) == 1:
        # This answer is the same for everything under the country (its claims name that
        # country alone): a later exchange for /countries/nl/stats needs no question. Never
        # the whole /countries/: the claims depend on the country.
        answer["resource_prefixes"] = [f"{COUNTRIES_PREFIX}{wanted[0]}"]
    return answer


def dev_blueprint(
    issuer: DevIssuer, permissions_token: str, spa_config: dict[str, Any]
) -> Blueprint:
    bp = Blueprint("dev", __name__)

    @bp.get("/spa/<path:name>")
    @bp.get("/spa/", defaults={"name": ""})
    def spa(name: str) -> Response:
        if name == "config.json":
            return json_response(spa_config, headers={"Cache-Control": "no-store"})
        if name not in SPA_FILES:
            abort(404)
        resource = importlib.resources.files("token_exchange.spa") / SPA_FILES[name]
        with importlib.resources.as_file(resource) as path:
            return send_file(path, max_age=0)

    @bp.post("/dev/login")
    def login() -> Response:
        user = request.form.get("user", "")
        if user not in DEMO_USERS:
            return json_response(
                {"error": "invalid_request", "error_description": "user must be alice or bob"},
                400,
            )
        token = issuer.issue(user)
        return json_response(
            {
                "access_token": token,
                "token_type": TOKEN_TYPE_BEARER,
                "expires_in": SUBJECT_TOKEN_TTL,
            },
            headers={"Cache-Control": "no-store"},
        )

    @bp.get("/dev/issuer/.well-known/jwks.json")
    def issuer_jwks() -> Response:
        return json_response(issuer.jwks)

    @bp.get("/dev/issuer/.well-known/openid-configuration")
    def issuer_metadata() -> Response:
        return json_response(issuer.discovery())

    @bp.post("/dev/issuer/oauth/token")
    def issuer_token() -> Response:
        # Auth0's client-credentials grant, for M2M tokens. No secret is checked: like
        # /dev/login, dev's issuer serves whoever reaches its loopback port.
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return json_response(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "dev's issuer grants client_credentials only "
                    "(users sign in at /dev/login)",
                },
                400,
            )
        if form.get("client_id") != DEV_M2M_CLIENT_ID:
            return json_response(
                {
                    "error": "invalid_client",
                    "error_description": f"the client_id of dev's M2M application is "
                    f"{DEV_M2M_CLIENT_ID}",
                },
                401,
            )
        token = issuer.issue_m2m(DEV_M2M_CLIENT_ID, form.get("audience") or None)
        return json_response(
            {
                "access_token": token,
                "token_type": TOKEN_TYPE_BEARER,
                "expires_in": SUBJECT_TOKEN_TTL,
            },
            headers={"Cache-Control": "no-store"},
        )

    @bp.post("/dev/permissions")
    def permissions() -> Response:
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401).
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        if not secrets.compare_digest(given, f"Bearer {permissions_token}".encode()):
            abort(401)
        try:
            question = strictjson.loads(request.get_data())
        except ValueError:  # not JSON, or nested too deeply for the parser's recursion
            question = None
        if not isinstance(question, dict):
            abort(400)
        return json_response(demo_decision(question))

    return bp


def dev_settings(
    base_url: str, permissions_token: str, *, algorithm: str = "ES256", client_secret: str = ""
) -> Settings:
    """The configuration ``dev`` runs with: one upstream (the dev issuer), one SPA, one API,
    and that API as a confidential client (``client_secret``) to try /introspect and /revoke."""
    dev = {
        "issuer": base_url,
        "upstreams": [
            {
                "issuer": f"{base_url}/dev/issuer",
                "jwks_uri": f"{base_url}/dev/issuer/.well-known/jwks.json",
                "audiences": [STS_AUDIENCE],
                "algorithms": ["RS256"],
            }
        ],
        "clients": [
            {
                "client_id": "spa",
                "type": "public",
                "audiences": [COUNTRIES_API],
                "allowed_origins": [base_url, base_url.replace("127.0.0.1", "localhost")],
            },
            {
                "client_id": DEV_CONFIDENTIAL_CLIENT,
                "type": "confidential",
                "audiences": [COUNTRIES_API],
                "secret_env": ENV_CLIENT_SECRET,
                "introspects": [COUNTRIES_API],
            },
        ],
        "apis": [
            {
                "audience": COUNTRIES_API,
                "permissions": "demo",
                "scopes": ["countries:read", "countries:write"],
                "resources": [COUNTRIES_PREFIX],
                "copy_claims": ["given_name", "family_name", "email"],
            }
        ],
        "permissions": {
            "demo": {
                "type": "http",
                "url": f"{base_url}/dev/permissions",
                "token_env": ENV_PERMISSIONS_TOKEN,
            }
        },
        # One process: the in-memory store (serve's default is a SQLite file).
        "store": {"url": "memory://"},
        "signing": {"algorithm": algorithm},
    }
    env = {
        ENV_CLIENT_SECRET: client_secret or secrets.token_urlsafe(24),
        ENV_PERMISSIONS_TOKEN: permissions_token,
    }
    return Settings.model_validate(dev, context={"env": env})


def dev_secrets(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The permissions-API token and client secret ``dev`` shares with a ``serve`` in front of
    it, from ``env`` (``ENV_PERMISSIONS_TOKEN``, ``ENV_CLIENT_SECRET``); None for one unset."""
    return env.get(ENV_PERMISSIONS_TOKEN) or None, env.get(ENV_CLIENT_SECRET) or None


def create_dev_app(
    port: int,
    *,
    algorithm: str = "ES256",
    countries_api_url: str = DEFAULT_COUNTRIES_API_URL,
    permissions_token: str | None = None,
    client_secret: str | None = None,
) -> Flask:
    """The app ``token-exchange dev`` serves on 127.0.0.1:``port``; each secret not given is
    made at random for this process."""
    base_url = f"http://127.0.0.1:{port}"
    permissions_token = permissions_token or secrets.token_urlsafe(24)
    client_secret = client_secret or secrets.token_urlsafe(24)
    settings = dev_settings(
        base_url, permissions_token, algorithm=algorithm, client_secret=client_secret
    )
    issuer = DevIssuer(settings.upstreams[0].issuer, STS_AUDIENCE)
    now = time.time()
    key = SigningKey(
        alg=algorithm,
        private_key=generate_private_key(algorithm),
        publish_at=now,
        activate_at=now,
        created_at=now,
    )
    app = create_app(
        settings,
        overrides=Overrides(
            keys=MemoryKeyStore([key]), key_sources={issuer.issuer: issuer.key_source()}
        ),
    )
    spa_config = {
        "sts": base_url,
        "api": countries_api_url,
        "resource_prefix": COUNTRIES_PREFIX,
        "countries": ["nl", "de", "be", "fr"],
    }
    app.register_blueprint(dev_blueprint(issuer, permissions_token, spa_config))
    services = app.extensions["token_exchange"]
    # The SPA signs in from its own origin too.
    services.cors_paths = services.cors_paths | {"/dev/login"}
    app.extensions["dev_issuer"] = issuer
    app.extensions["dev_client_secret"] = client_secret
    return app


def walkthrough(
    base_url: str,
    *,
    client_secret: str = "$SECRET",  # noqa: S107 - a placeholder for the reader
    countries_api_url: str = DEFAULT_COUNTRIES_API_URL,
) -> str:
    """The curl commands ``dev`` prints; each works when pasted into a POSIX shell.

    JSON answers end with a newline (``-w '\\n'``), so that they do not run together.
    """
    api_port = urllib.parse.urlsplit(countries_api_url).port or 8081
    port = urllib.parse.urlsplit(base_url).port
    client = f"{DEV_CONFIDENTIAL_CLIENT}:{client_secret}"
    grant, token_type = GRANT_TYPE, TOKEN_TYPE_ACCESS_TOKEN
    extract = "python3 -c 'import sys,json; print(json.load(sys.stdin)[\"access_token\"])'"
    decode = (
        'python3 -c \'import sys,json,base64; p=sys.stdin.read().split(".")[1]; '
        'print(json.dumps(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4))),indent=2))\''
    )
    return f"""\
# token-exchange dev is running on {base_url}
# Development mode: demo users, an in-memory signing key, nothing to set up. Paste these:

# 1. Sign in as a demo user (alice or bob) with the development issuer, which plays Auth0:
SUBJECT=$(curl -s -X POST {base_url}/dev/login -d user=alice | {extract})

# 2. Exchange it for a token for the countries API, for exactly one country:
curl -s -w '\\n' {base_url}/token \\
  -d grant_type={grant} \\
  -d client_id=spa \\
  -d subject_token_type={token_type} \\
  --data-urlencode "subject_token=$SUBJECT" \\
  -d resource={COUNTRIES_PREFIX}nl \\
  -d scope=countries:read

# 3. Keep the minted token and look at its claims:
TOKEN=$(curl -s {base_url}/token -d grant_type={grant} -d client_id=spa \\
  -d subject_token_type={token_type} --data-urlencode "subject_token=$SUBJECT" \\
  -d resource={COUNTRIES_PREFIX}nl | {extract})
echo "$TOKEN" | {decode}

# 4. A country alice may not see is refused (invalid_target):
curl -s -w '\\n' {base_url}/token -d grant_type={grant} -d client_id=spa \\
  -d subject_token_type={token_type} --data-urlencode "subject_token=$SUBJECT" \\
  -d resource={COUNTRIES_PREFIX}fr

# 5. Downstream APIs verify minted tokens with these public keys and this metadata:
curl -s -w '\\n' {base_url}/.well-known/jwks.json
curl -s -w '\\n' {base_url}/.well-known/oauth-authorization-server

# 6. The countries API is also a confidential client ({DEV_CONFIDENTIAL_CLIENT}, its secret made
#    at start): it may introspect the tokens minted for it, and revoke them:
curl -s -w '\\n' -u "{client}" {base_url}/introspect --data-urlencode "token=$TOKEN"
curl -s -w '%{{http_code}}\\n' -u "{client}" {base_url}/revoke --data-urlencode "token=$TOKEN"
curl -s -w '\\n' -u "{client}" {base_url}/introspect --data-urlencode "token=$TOKEN"

# The example SPA: start the example API, pointed at this STS:
#   python examples/countries_api.py --sts {base_url} --port {api_port}
# then open
#   {base_url.replace("127.0.0.1", "localhost")}/spa/

# Try `serve` in front of this dev: token-exchange dev --port {port} --print-config
# (README, "From dev to serve").
"""


def _toml(value: object) -> str:
    """A TOML value: JSON's strings (ASCII, escaped) and arrays of them are TOML's too."""
    return json.dumps(value)


def serve_config(
    dev_port: int,
    *,
    serve_port: int = DEFAULT_SERVE_PORT,
    keys_dir: str = DEFAULT_SERVE_KEYS_DIR,
    algorithm: str = "ES256",
) -> str:
    """The config (TOML) of a ``serve`` on 127.0.0.1:``serve_port`` in front of the ``dev`` on
    ``dev_port``, as ``dev_settings`` configures dev itself; its comments say how to run both.

    Secrets are named by environment variable only: the ones ``dev`` takes its own from.
    """
    dev_url = f"http://127.0.0.1:{dev_port}"
    serve_url = f"http://127.0.0.1:{serve_port}"
    dev = dev_settings(dev_url, "unused")
    [upstream] = dev.upstreams
    [api] = dev.apis
    spa, confidential = dev.clients
    [(source_name, source)] = dev.permissions.items()
    if not isinstance(source, HttpPermissionsSettings):  # pragma: no cover - dev_settings' own
        raise TypeError("dev's permissions source is the demo permissions API over http")
    print_config = ["token-exchange", "dev", "--port", str(dev_port), "--print-config"]
    print_config += ["--serve-port", str(serve_port)]
    if keys_dir != DEFAULT_SERVE_KEYS_DIR:
        print_config += ["--serve-keys-dir", keys_dir]
    if algorithm != "ES256":
        print_config += ["--alg", algorithm]
    serve = "token-exchange serve --config config.local.toml --host 127.0.0.1"
    serve += f" --port {serve_port} --workers 1"
    new_secret = "$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    return f"""\
# token-exchange serve in front of the token-exchange dev on {dev_url}: dev's
# development issuer plays Auth0 and its demo permissions API decides. For trying serve on this
# machine only: plain http on loopback. Written by `dev --print-config`.
#
# dev and serve share two secrets through the environment. In one shell:
#   export {ENV_PERMISSIONS_TOKEN}={new_secret}
#   export {ENV_CLIENT_SECRET}={new_secret}
#   token-exchange dev --port {dev_port} > dev.log 2>&1 &
#   {shlex.join(print_config)} > config.local.toml
#   token-exchange keys generate --config config.local.toml
#   token-exchange check-config --config config.local.toml
#   {serve} > serve.log 2>&1 &
# `curl {serve_url}/readyz` then says ready; the README ("From dev to serve") has the rest.

issuer = {_toml(serve_url)}

[store]
# A SQLite file next to this one, shared by serve's workers (the default; Redis for replicas on
# several machines).
url = "sqlite:state/store.db"

[signing]
# Relative to this file; `token-exchange keys generate --config <this file>` creates it.
keys_dir = {_toml(keys_dir)}
algorithm = {_toml(algorithm)}

# dev's development issuer, trusted like any other upstream (plain http: it is on loopback).
[[upstreams]]
issuer = {_toml(upstream.issuer)}
jwks_uri = {_toml(upstream.jwks_uri)}
audiences = {_toml(list(upstream.audiences))}
algorithms = {_toml(list(upstream.algorithms))}
# A restarted dev has a new key: fetch it at the first token it signs.
jwks_cooldown = 1

[[clients]]
client_id = {_toml(spa.client_id)}
type = "public"
allowed_origins = {_toml(list(spa.allowed_origins))}
audiences = {_toml(list(spa.audiences))}

[[clients]]
client_id = {_toml(confidential.client_id)}
type = "confidential"
secret_env = {_toml(ENV_CLIENT_SECRET)}
audiences = {_toml(list(confidential.audiences))}
introspects = {_toml(list(confidential.introspects))}

[[apis]]
audience = {_toml(api.audience)}
resources = {_toml(list(api.resources))}
scopes = {_toml(list(api.scopes))}
copy_claims = {_toml(list(api.copy_claims))}
permissions = {_toml(source_name)}

# dev's demo permissions API.
[permissions.{source_name}]
type = "http"
url = {_toml(source.url)}
token_env = {_toml(ENV_PERMISSIONS_TOKEN)}
"""
