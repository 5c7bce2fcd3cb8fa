"""A seeded fuzz of every endpoint with hostile inputs: no input may get a 500 (issue 21).

One service with every feature on (DPoP with nonces, private_key_jwt clients with inline and
remote keys, trust conditions, delegation with actor tokens, authorization details, the HTTP
permissions API with its cache, introspection and revocation), whose issuer and client key
hosts publish, beside their good keys, keys with members of the wrong type; and the dev app.
Requests mix valid parameters with hostile ones: nested JSON, nulls, wrong types, non-ASCII,
huge values, NaN, bad base64, and JWTs with random headers and claims signed with a trusted key,
so that they pass the signature check and reach the code behind it.

Bounded: ``FUZZ_CASES`` requests (default 4000) or ``FUZZ_SECONDS`` (default 20), whichever
ends first, from ``FUZZ_SEED`` (default 21). A failure prints each request that got a 500 with
its seed and case number; ``FUZZ_SEED=... FUZZ_CASES=n+1`` replays up to it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from token_exchange.oauth.jose import thumbprint
from token_exchange.sources.keys import public_jwk

from .fakes import (
    ACCESS_TOKEN,
    BACKEND_SECRET,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    JWT_BEARER_ASSERTION,
    JWT_TYPE,
    STS_ISSUER,
    STS_TOKEN_ENDPOINT,
    ClientAssertions,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    Sts,
)

SEED = int(os.environ.get("FUZZ_SEED", "21"))
CASES = int(os.environ.get("FUZZ_CASES", "4000"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _nested(depth: int, rng: random.Random) -> str:
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    return opener * depth + "1" + closer * depth


#: Members of the wrong type at a key host: each key is unusable, the rest of the set is not.
def _bad_keys(good: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**good, "kid": "bad-ops", "key_ops": 5},
        {**good, "kid": "bad-use", "use": ["sig"]},
        {"kty": "OKP", "kid": "bad-crv", "crv": ["Ed25519"], "x": good.get("x", "AAAA")},
        {**good, "kid": "bad-alg", "alg": {"RS256": True}},
        {"kty": ["RSA"], "kid": "bad-kty"},
    ]


@dataclass
class Hostile:
    """Hostile values, drawn from ``rng``."""

    rng: random.Random

    def text(self) -> str:
        r = self.rng
        return r.choice(
            [
                lambda: "",
                lambda: "é",
                lambda: "☃ \u202e",
                lambda: "\x00",
                lambda: " ",
                lambda: "null",
                lambda: "NaN",
                lambda: "-1",
                lambda: "1e999",
                lambda: "%ff%00",
                lambda: "a" * r.choice([300, 5000, 20000]),
                lambda: "".join(chr(r.randrange(0x20, 0xD7FF)) for _ in range(r.randrange(1, 30))),
                lambda: _nested(r.choice([3, 50, 3000]), r),
                lambda: "eyJhbGciOiJub25lIn0.e30.",
                lambda: "a.b.c",
                lambda: "..",
                lambda: "e30.e30.e30.e30.e30",
                lambda: "https://countries.example.test/countries/é",
                lambda: "urn:ietf:params:oauth:token-type:" + r.choice(["jwt", "x", ""]),
            ]
        )()

    def header_text(self) -> str:
        """Latin-1 only, as HTTP carries header values."""
        value = self.text()
        return value.encode("latin-1", "replace").decode("latin-1")[:4000]

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        choices: list[Callable[[], Any]] = [
            lambda: None,
            lambda: True,
            lambda: 0,
            lambda: -1,
            lambda: 2**70,
            lambda: 10**400 if r.random() < 0.2 else 1.5,
            lambda: float("nan"),
            lambda: float("inf"),
            lambda: self.text()[:200],
            lambda: [],
            lambda: {},
        ]
        if depth < 3:
            choices += [
                lambda: [self.value(depth + 1) for _ in range(r.randrange(1, 4))],
                lambda: {self.text()[:20]: self.value(depth + 1) for _ in range(r.randrange(1, 4))},
            ]
        return r.choice(choices)()

    def json_text(self, value: Any) -> str:
        """``value`` as JSON text, now and then made worse: deep, duplicated, broken."""
        r = self.rng
        text = json.dumps(value, allow_nan=True, default=str)
        roll = r.random()
        if roll < 0.08 and text.startswith("{") and len(text) > 2:
            first = text[1:].split(",", 1)[0].rstrip("}")
            return "{" + first + "," + text[1:]  # a duplicate member name
        if roll < 0.14:
            return _nested(r.choice([40, 900, 3000]), r)
        if roll < 0.18:
            return text[: max(1, len(text) // 2)]
        return text


@dataclass
class World:
    """The service's trusted keys and what it accepts: each request starts valid (it would get
    a token, or introspect one) and has a few of its parts made hostile, so that most reach
    deep into the service before something is wrong with them. Tokens are signed with the
    trusted keys, so that hostile headers and claims pass the signature check."""

    sts: Sts
    issuer: FakeIssuer
    signer: ClientAssertions
    remote: ClientAssertions
    hostile: Hostile
    minted: list[str] = field(default_factory=list)
    dpop_keys: list[DpopKey] = field(default_factory=list)
    #: The parts of the request being built that are to be made hostile.
    spoil: set[str] = field(default_factory=set)

    SITES = (
        "client", "grant", "subject.header", "subject.claims", "subject.text", "subject_type",
        "actor", "actor.claims", "actor_type", "audience", "resource", "scope", "requested",
        "details", "dpop.header", "dpop.claims", "dpop.jwk", "dpop.nonce", "dpop.text",
        "assertion.header", "assertion.claims", "assertion.text", "origin", "twice", "token",
    )  # fmt: skip

    @property
    def rng(self) -> random.Random:
        return self.hostile.rng

    def draw_spoils(self) -> None:
        self.spoil = set(self.rng.sample(self.SITES, self.rng.choice([0, 1, 1, 1, 2, 2, 3])))

    def bad(self) -> Any:
        """A hostile form value: text, or JSON text."""
        h = self.hostile
        return h.text() if self.rng.random() < 0.5 else h.json_text(h.value())

    # -- signed JWTs -------------------------------------------------------------------------

    def signed(
        self, site: str, header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str
    ) -> str:
        h = self.hostile
        r = self.rng
        header, claims = dict(header), dict(claims)
        for part, target in (("header", header), ("claims", claims)):
            if f"{site}.{part}" not in self.spoil:
                continue
            for _ in range(r.choice([1, 1, 2, 3])):
                extra = ["crit", "jku", "cnf", "act", "may_act", "b64", "nbf", "iat", "exp", "x"]
                name = r.choice([*target, *extra])
                if r.random() < 0.2:
                    target.pop(name, None)
                else:
                    target[name] = h.value()
        spoil_text = f"{site}.text" in self.spoil
        header_text, claims_text = (json.dumps(header), json.dumps(claims, allow_nan=True))
        if spoil_text:
            deep = _nested(r.choice([40, 900, 2500]), r)
            claims_text, header_text = r.choice(
                [
                    (claims_text[:-1] + f',"x":{deep}}}', header_text),
                    (claims_text, header_text[:-1] + f',"x":{deep}}}'),
                    (claims_text[:-1] + ',"nbf":NaN}', header_text),
                    (h.json_text(claims), header_text),
                    (claims_text, h.json_text(header)),
                    (claims_text, header_text),
                ]
            )
        encoded = _b64(header_text.encode()) + "." + _b64(claims_text.encode())
        algorithm = jwt.get_algorithm_by_name(alg)
        signature = _b64(algorithm.sign(encoded.encode(), algorithm.prepare_key(key)))
        token = f"{encoded}.{signature}"
        if spoil_text and r.random() < 0.4:
            token = r.choice(
                [
                    token.replace(".", "!.", 1),  # not base64url
                    token + "==",
                    token.rsplit(".", 1)[0] + ".AAAA",
                    token.replace(".", "=.", 1),
                    token + "." + signature,
                ]
            )
        return token

    def subject_token(self, client: str) -> str:
        claims = self.issuer.claims(email_verified=True, azp="spa-app")
        if client in ("backend", "signer") and self.rng.random() < 0.5:
            claims["may_act"] = {"iss": self.issuer.issuer, "sub": "service|batch"}
        header = {"alg": "RS256", "kid": self.issuer.kid, "typ": "JWT"}
        if "subject.text" in self.spoil and self.rng.random() < 0.3:
            return str(self.rng.choice([*self.minted, self.bad()]))  # ours, or no token
        return self.signed("subject", header, claims, self.issuer.keys[self.issuer.kid], "RS256")

    def actor_token(self) -> str:
        claims = self.issuer.claims(sub="service|batch", email_verified=True)
        header = {"alg": "RS256", "kid": self.issuer.kid}
        return self.signed("actor", header, claims, self.issuer.keys[self.issuer.kid], "RS256")

    def assertion(self, client: ClientAssertions) -> dict[str, str]:
        header = {"alg": client.alg, "kid": client.kid, "typ": "JWT"}
        claims = client.claims(aud=self.rng.choice([STS_TOKEN_ENDPOINT, STS_ISSUER]))
        return {
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "client_assertion": self.signed("assertion", header, claims, client.key, client.alg),
        }

    def dpop_proof(self, url: str = STS_TOKEN_ENDPOINT) -> str:
        r = self.rng
        key = r.choice(self.dpop_keys)
        jwk: dict[str, Any] = dict(key.jwk)
        if "dpop.jwk" in self.spoil:
            member = r.choice([*jwk, "d", "key_ops", "use", "alg"])
            original = str(jwk.get(member, "AQAB"))
            jwk[member] = r.choice(
                [
                    self.hostile.value(),
                    original + "A",
                    original[:-1],
                    original + "=",
                    "AA" + original,
                ]
            )
        header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": jwk}
        nonce = self.sts.services.exchange.nonces.current()
        claims = {
            "jti": _b64(r.randbytes(12)),
            "htm": "POST",
            "htu": url,
            "iat": int(time.time()),
            "nonce": self.hostile.text()[:100] if "dpop.nonce" in self.spoil else nonce,
        }
        return self.signed("dpop", header, claims, key.private_key, key.alg)

    # -- requests ----------------------------------------------------------------------------

    def value(self, site: str, valid: Any) -> Any:
        """``valid``, or when ``site`` is to be spoiled a hostile value or none at all."""
        if site not in self.spoil:
            return valid
        return None if self.rng.random() < 0.15 else self.bad()

    def authenticate(self, client: str, data: dict[str, Any], headers: dict[str, str]) -> None:
        r = self.rng
        if "client" in self.spoil:
            roll = r.random()
            if roll < 0.3:
                headers["Authorization"] = self.hostile.header_text()
            elif roll < 0.5:
                headers["Authorization"] = "Basic " + _b64(self.hostile.header_text().encode())
            elif roll < 0.7:
                data["client_id"] = self.bad()
            else:
                data.update(self.assertion(self.signer))
                data[r.choice(["client_id", "client_secret", "client_assertion_type"])] = self.bad()
            return
        if client in ("spa", "reader"):
            data["client_id"] = client
        elif client == "backend":
            if r.random() < 0.5:
                secret = f"backend:{BACKEND_SECRET}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
            else:
                data.update(client_id="backend", client_secret=BACKEND_SECRET)
        else:
            data.update(self.assertion(self.signer if client == "signer" else self.remote))
            if r.random() < 0.3:
                data["client_id"] = client

    def token_request(self) -> tuple[dict[str, Any], dict[str, str]]:
        r = self.rng
        self.draw_spoils()
        client = r.choice(["spa", "spa", "reader", "backend", "signer", "remote"])
        data: dict[str, Any] = {}
        headers: dict[str, str] = {}
        self.authenticate(client, data, headers)
        data["grant_type"] = self.value("grant", GRANT)
        data["subject_token"] = self.subject_token(client)
        data["subject_token_type"] = self.value("subject_type", ACCESS_TOKEN)
        if (client in ("backend", "signer") and r.random() < 0.5) or "actor" in self.spoil:
            data["actor_token"] = self.value("actor", self.actor_token())
            data["actor_token_type"] = self.value("actor_type", ACCESS_TOKEN)
        if r.random() < 0.5:
            data["resource"] = self.value("resource", f"{COUNTRIES}/countries/nl")
        else:
            data["audience"] = self.value("audience", COUNTRIES)
        if r.random() < 0.4 or "scope" in self.spoil:
            data["scope"] = self.value("scope", "countries:read")
        if r.random() < 0.2 or "requested" in self.spoil:
            data["requested_token_type"] = self.value("requested", JWT_TYPE)
        if r.random() < 0.4 or "details" in self.spoil:
            detail: dict[str, Any] = {"type": "country_access", "countries": ["nl"]}
            if "details" in self.spoil:
                detail[r.choice(["type", "countries", "x"])] = self.hostile.value()
                data["authorization_details"] = self.hostile.json_text([detail])
            else:
                data["authorization_details"] = json.dumps([detail])
        if client == "signer" or r.random() < 0.3 or any(s.startswith("dpop") for s in self.spoil):
            proof = self.dpop_proof()
            headers["DPoP"] = self.hostile.header_text() if "dpop.text" in self.spoil else proof
        if "origin" in self.spoil:
            headers["Origin"] = r.choice(["https://app.example.test", self.hostile.header_text()])
        if "twice" in self.spoil:
            name = r.choice(list(data))
            data[name] = [data[name], r.choice([data[name], self.bad()])]
        return {k: v for k, v in data.items() if v is not None}, headers

    def token_parameter_request(self) -> tuple[dict[str, Any], dict[str, str]]:
        """For /introspect and /revoke: a token, and a client that may introspect it."""
        r = self.rng
        self.draw_spoils()
        data: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if "client" in self.spoil:
            self.authenticate("spa", data, headers)
        elif r.random() < 0.5:
            credentials = f"countries-api:{COUNTRIES_API_SECRET}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        else:
            data.update(self.assertion(self.remote))
        token = r.choice([*self.minted, self.subject_token("spa")])
        data["token"] = self.value("token", token)
        if r.random() < 0.3:
            data["token_type_hint"] = r.choice(["access_token", "refresh_token", self.bad()])
        if "twice" in self.spoil:
            data["token"] = [token, token]
        return {k: v for k, v in data.items() if v is not None}, headers


@dataclass
class Failure:
    case: int
    method: str
    path: str
    data: Any
    headers: dict[str, str]
    status: int
    body: str

    def __str__(self) -> str:
        def short(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 600 else text[:600] + f"... ({len(text)} characters)"

        return (
            f"case {self.case} (FUZZ_SEED={SEED}): {self.method} {self.path} -> {self.status}\n"
            f"  headers: {short(self.headers)}\n  data: {short(self.data)}\n"
            f"  answer: {self.body[:300]}"
        )


@pytest.fixture
def world(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    hostile = Hostile(random.Random(SEED))  # noqa: S311 - reproducible, not secret
    signer = ClientAssertions("signer")
    remote = ClientAssertions("remote", ec.generate_private_key(ec.SECP256R1()))
    # Beside its good keys, each key host publishes keys with members of the wrong type.
    good = issuer.jwks_document()
    monkeypatch.setattr(
        issuer, "jwks_document", lambda: {"keys": _bad_keys(good["keys"][0]) + good["keys"]}
    )
    remote_jwks = {"keys": _bad_keys(remote.jwks()["keys"][0]) + remote.jwks()["keys"]}
    issuer.server.expect_request("/client-jwks.json").respond_with_json(remote_jwks)

    def answer(question: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        claims = {"custom_access_to_countries": ["nl"], "n": question.get("scopes")}
        return 200, {"allow": True, "claims": claims, "ttl": 30}, {}

    permissions_api.answer = answer

    def edit(config: dict[str, Any]) -> None:
        upstream = config["upstreams"][0]
        upstream["conditions"] = {"email_verified": True, "sub": {"pattern": "^[a-z0-9|]+$"}}
        spa, backend = config["clients"][0], config["clients"][1]
        spa["subject_conditions"] = {"azp": ["spa-app"]}
        spa["subject_conditions_mode"] = "audit"
        backend["actor_conditions"] = {"sub": ["service|batch"]}
        config["clients"] += [
            {
                "client_id": "signer",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": signer.jwks(),
                "audiences": [COUNTRIES],
                "allow_delegation": True,
                "actor_conditions": {"sub": ["service|batch"]},
                "dpop": "required",
            },
            {
                "client_id": "remote",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks_uri": issuer.server.url_for("/client-jwks.json"),
                "audiences": [COUNTRIES],
                "introspects": [COUNTRIES],
            },
        ]
        config["dpop"] = {"nonce": True}

    sts = make_sts(edit)
    world = World(sts, issuer, signer, remote, hostile)
    world.dpop_keys = [DpopKey(alg) for alg in ("ES256", "RS256", "EdDSA")]
    # A few tokens of ours, to introspect and revoke (and to present back as subject tokens).
    client = sts.app.test_client()
    for _ in range(3):
        answer_ = client.post(
            "/token",
            data={"grant_type": GRANT, "client_id": "spa", "subject_token": issuer.token(
                email_verified=True, azp="spa-app"), "subject_token_type": ACCESS_TOKEN,
                "audience": COUNTRIES},
        )  # fmt: skip
        if answer_.status_code == 200:  # else the fuzz will say why
            world.minted.append(answer_.json["access_token"])
    return world


def _fuzz(send: Callable[[int], Failure | None]) -> tuple[int, list[Failure]]:
    failures: list[Failure] = []
    deadline = time.monotonic() + SECONDS
    case = 0
    while case < CASES and time.monotonic() < deadline and len(failures) < 10:
        failure = send(case)
        if failure is not None:
            failures.append(failure)
        case += 1
    return case, failures


def test_no_hostile_input_gets_a_500(world: World) -> None:
    client = world.sts.app.test_client()
    r = world.rng
    gets = [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/authorize",  # with hostile query strings (below): refused, audited, never a 500
        "/healthz",
        "/readyz",
        "/metrics",
        "/js/token-exchange-client.js",
        "/token",
    ]

    def send(case: int) -> Failure | None:
        roll = r.random()
        headers: dict[str, str]
        data: Any
        if roll < 0.7:
            method, path = "POST", "/token"
            data, headers = world.token_request()
        elif roll < 0.9:
            method, path = "POST", r.choice(["/introspect", "/revoke"])
            data, headers = world.token_parameter_request()
        else:
            method, path = r.choice(["GET", "OPTIONS"]), r.choice(gets)
            data, headers = None, {"Origin": world.hostile.header_text()}
            if r.random() < 0.5:
                path += "?" + world.hostile.text()[:200].replace("#", "")
        response = client.open(path, method=method, data=data, headers=headers)
        text = response.get_data(as_text=True)
        response.close()  # a file answer (the JS client) holds its file open until then
        if response.status_code < 500 or response.status_code == 503:
            assert "Traceback" not in text
            return None
        return Failure(case, method, path, data, headers, response.status_code, text)

    cases, failures = _fuzz(send)
    assert not failures, f"{len(failures)} of {cases} requests got a 500:\n" + "\n".join(
        str(f) for f in failures
    )
    assert cases >= 200, f"only {cases} cases in {SECONDS} s"


def test_the_fuzz_signs_tokens_that_verify(world: World) -> None:
    """A check of the fuzz itself: its valid tokens pass, so hostile ones reach past the
    signature check."""
    client = world.sts.app.test_client()
    subject = world.issuer.token(email_verified=True, azp="spa-app")
    data = {"grant_type": GRANT, "subject_token": subject, "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES, **world.signer.form()}  # fmt: skip
    key = DpopKey()
    nonce = world.sts.services.exchange.nonces.current()
    response = client.post("/token", data=data, headers={"DPoP": key.proof(nonce=nonce)})
    assert response.status_code == 200, response.text
    assert jwt.decode(response.json["access_token"], options={"verify_signature": False})[
        "cnf"
    ] == {"jkt": thumbprint(public_jwk(key.private_key))}
