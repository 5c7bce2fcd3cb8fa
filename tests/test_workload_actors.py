"""Workload identities as actors (issue 24, points 2, 3 and 5), over real HTTP.

An agent acts for a user with its own identity as ``actor_token``: a Kubernetes service-account
token (the cluster's OIDC issuer, discovery and JWKS on loopback, a projected token's real
shape) or a SPIFFE JWT-SVID (keys from a SPIFFE bundle endpoint: ``spiffe_sequence``,
``spiffe_refresh_hint``, JWT authorities without ``alg`` beside an X.509 one, no ``iss``). The
minted token says who acts and what it is; every bad actor is refused with its audit reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import flask
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.wrappers import Request, Response

from token_exchange.sources.jwks import RemoteKeySet
from token_exchange.verify import Actor, BearerAuth, TokenVerifier

from .fakes import (
    BACKEND_SECRET,
    COUNTRIES,
    ENV,
    STS_AUDIENCE,
    STS_ISSUER,
    FakeIssuer,
    FakePermissions,
    Sts,
    quick_server,
)
from .helpers import assert_error, assert_issued
from .test_operations import audit_lines

SERVICE_ACCOUNT = "system:serviceaccount:agents:summarizer"
TRUST_DOMAIN = "spiffe://example.org"
MAILER = f"{TRUST_DOMAIN}/ns/agents/sa/mailer"
SECRETS = {"KAGENT_SECRET": "kagent-secret-value", "MESH_SECRET": "mesh-secret-value"}


@dataclass
class SpiffeBundle:
    """A SPIFFE bundle endpoint on loopback: the trust domain's JWT authorities (EC P-256, no
    ``alg``, ``use: jwt-svid``) and an X.509 authority, and the JWT-SVIDs they sign."""

    server: Any
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    kid: str = "authority-1"
    sequence: int = 7

    def __post_init__(self) -> None:
        self.server.expect_request("/bundle").respond_with_handler(self._bundle)

    @property
    def url(self) -> str:
        return str(self.server.url_for("/bundle"))

    def _bundle(self, request: Request) -> Response:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        x509_authority = {**jwk, "kid": "x509-authority", "use": "x509-svid", "x5c": ["MIIB"]}
        document = {
            "keys": [{**jwk, "kid": self.kid, "use": "jwt-svid"}, x509_authority],
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": 300,
        }
        return Response(json.dumps(document), content_type="application/json")

    def svid(
        self, sub: str = MAILER, *, key: Any = None, lifetime: int = 300, **claims: Any
    ) -> str:
        """A JWT-SVID as SPIRE mints it: sub, aud, exp, iat; no iss."""
        now = int(time.time())
        payload = {"sub": sub, "aud": [STS_AUDIENCE], "iat": now, "exp": now + lifetime}
        payload.update(claims)
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            key or self.key,
            algorithm="ES256",
            headers={"kid": self.kid, "typ": "JWT"},
        )


def service_account_token(cluster: FakeIssuer, **overrides: Any) -> str:
    """A projected service-account token as the kubelet gets it for a pod (its real claims)."""
    claims: dict[str, Any] = {
        "sub": SERVICE_ACCOUNT,
        "aud": [STS_AUDIENCE],
        "jti": "5b1d1a2e-8f0c-4d7e-9a51-0c3f6a1b2c3d",
        "nbf": int(time.time()) - 5,
        "kubernetes.io": {
            "namespace": "agents",
            "node": {"name": "worker-1", "uid": "e2c1a3c4-0000-4000-8000-000000000001"},
            "pod": {"name": "summarizer-7d9f", "uid": "a8b1c2d3-0000-4000-8000-000000000002"},
            "serviceaccount": {
                "name": "summarizer",
                "uid": "f0e1d2c3-0000-4000-8000-000000000003",
            },
        },
        # Not in a service-account token: the fake issuer's defaults for a user.
        "given_name": None,
        "family_name": None,
        "email": None,
    }
    claims.update(overrides)
    return cluster.token(**claims)


@dataclass
class Workloads:
    sts: Sts
    users: FakeIssuer
    cluster: FakeIssuer
    mesh: SpiffeBundle

    def exchange(self, client: str, actor_token: str, **params: Any) -> Any:
        secret = SECRETS[f"{client.upper()}_SECRET"]
        return self.sts.exchange(
            self.users.token(),
            client_id=client,
            client_secret=secret,
            actor_token=actor_token,
            actor_token_type="urn:ietf:params:oauth:token-type:jwt",
            scope="countries:read",
            **params,
        )


@pytest.fixture
def mesh() -> Iterator[SpiffeBundle]:
    server = quick_server()
    yield SpiffeBundle(server)
    server.clear()
    server.stop()


@pytest.fixture
def workloads(
    make_sts: Callable[..., Sts], issuer: FakeIssuer, cluster: FakeIssuer, mesh: SpiffeBundle
) -> Workloads:
    def edit(config: dict[str, Any]) -> None:
        config["upstreams"][0]["subject_prefix"] = "eu|"
        config["upstreams"] += [
            {
                "issuer": cluster.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "k8s|",
                "actor_only": True,
            },
            {
                "issuer": TRUST_DOMAIN, "jwks_uri": mesh.url, "audiences": [STS_AUDIENCE],
                "algorithms": ["ES256"], "subject_prefix": "spiffe|", "actor_only": True,
            },
        ]  # fmt: skip
        config["clients"] += [
            {
                # kagent's STS client: the pod's service-account token is the actor token.
                "client_id": "kagent", "type": "confidential", "secret_env": "KAGENT_SECRET",
                "audiences": [COUNTRIES], "allow_delegation": True,
                "actor_conditions": {
                    "iss": cluster.issuer,
                    "sub": [SERVICE_ACCOUNT],
                    "/kubernetes.io/namespace": "agents",
                },
                "actor_sub_profile": "ai_agent",
                "delegated_token_ttl": 60,
                "require_actor_token": True,
            },
            {
                "client_id": "mesh", "type": "confidential", "secret_env": "MESH_SECRET",
                "audiences": [COUNTRIES], "allow_delegation": True,
                "actor_conditions": {"iss": TRUST_DOMAIN, "sub": [MAILER]},
                "actor_sub_profile": "service",
            },
        ]  # fmt: skip

    sts = make_sts(edit, env={**ENV, **SECRETS})
    return Workloads(sts, issuer, cluster, mesh)


def refused_with(
    response: Any, caplog: pytest.LogCaptureFixture, permissions_api: FakePermissions
) -> dict[str, Any]:
    """The request was refused as invalid_request, never asked about, and its audit reason."""
    assert_error(response, 400, "invalid_request")
    assert permissions_api.questions == []
    (line,) = [line for line in audit_lines(caplog) if line.get("outcome") != "issued"]
    return line


# -- a Kubernetes service account acts --------------------------------------------------------


def test_a_kubernetes_service_account_acts_for_the_user(
    workloads: Workloads,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        body = assert_issued(workloads.exchange("kagent", service_account_token(workloads.cluster)))
    claims = workloads.sts.decode(body["access_token"])
    assert claims["sub"] == "eu|auth0|42"
    # Who acts, as its issuer names it, and what it is (OAuth Actor Profile).
    assert claims["act"] == {
        "sub": SERVICE_ACCOUNT, "iss": workloads.cluster.issuer, "sub_profile": "ai_agent",
    }  # fmt: skip
    # A delegated token lives as long as the client's delegated_token_ttl, at most.
    assert body["expires_in"] <= 60
    assert claims["exp"] - claims["iat"] <= 60
    assert "refresh_token" not in body
    # The permissions API learns the pod's identity, kubernetes.io claims included.
    (question,) = permissions_api.questions
    assert question["actor"]["subject"] == SERVICE_ACCOUNT
    assert question["actor"]["claims"]["kubernetes.io"]["serviceaccount"]["name"] == "summarizer"
    # The audit line says which agent acted for whom.
    (line,) = audit_lines(caplog)
    assert (line["sub"], line["actor"]) == ("eu|auth0|42", f"k8s|{SERVICE_ACCOUNT}")


def test_a_service_account_of_another_namespace_is_refused_by_a_pointer_condition(
    workloads: Workloads, permissions_api: FakePermissions, caplog: pytest.LogCaptureFixture
) -> None:
    token = service_account_token(workloads.cluster, **{"kubernetes.io": {"namespace": "default"}})
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(workloads.exchange("kagent", token), caplog, permissions_api)
    assert (line["reason"], line["claim"]) == ("condition", "/kubernetes.io/namespace")


def test_a_service_account_token_for_another_audience_is_refused(
    workloads: Workloads, permissions_api: FakePermissions, caplog: pytest.LogCaptureFixture
) -> None:
    # Projected for the cluster's own API server, not for us.
    token = service_account_token(workloads.cluster, aud=["https://kubernetes.default.svc"])
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(workloads.exchange("kagent", token), caplog, permissions_api)
    assert (line["reason"], line["parameter"]) == ("audience", "actor_token")


# -- a SPIFFE workload acts -------------------------------------------------------------------


def test_a_jwt_svid_acts_with_keys_from_the_bundle_endpoint(
    workloads: Workloads, permissions_api: FakePermissions
) -> None:
    body = assert_issued(workloads.exchange("mesh", workloads.mesh.svid()))
    claims = workloads.sts.decode(body["access_token"])
    # The SVID had no iss: its trust domain is the namespace its SPIFFE ID is read in.
    assert claims["act"] == {"sub": MAILER, "iss": TRUST_DOMAIN, "sub_profile": "service"}
    (question,) = permissions_api.questions
    assert (question["actor"]["issuer"], question["actor"]["subject"]) == (TRUST_DOMAIN, MAILER)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda mesh: mesh.svid(lifetime=-120), "expired"),
        # Another trust domain's SPIFFE ID: no configured domain vouches for it.
        (lambda mesh: mesh.svid("spiffe://evil.example/ns/agents/sa/mailer"), "issuer_untrusted"),
        # Signed by our domain's keys but naming another domain's workload.
        (
            lambda mesh: mesh.svid("spiffe://evil.example/mailer", iss=TRUST_DOMAIN),
            "spiffe_id",
        ),
        # Not signed by the trust domain's authority.
        (
            lambda mesh: mesh.svid(key=ec.generate_private_key(ec.SECP256R1())),
            "signature",
        ),
        (lambda mesh: mesh.svid(aud=["https://someone-else.example"]), "audience"),
    ],
    ids=["expired", "other-trust-domain", "id-outside-its-domain", "forged", "other-audience"],
)
def test_a_bad_svid_is_refused_with_its_reason(
    workloads: Workloads,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
    make: Callable[[SpiffeBundle], str],
    reason: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(
            workloads.exchange("mesh", make(workloads.mesh)), caplog, permissions_api
        )
    assert (line["reason"], line["parameter"]) == (reason, "actor_token")


def test_a_workload_not_among_the_clients_own_is_refused(
    workloads: Workloads, permissions_api: FakePermissions, caplog: pytest.LogCaptureFixture
) -> None:
    other = workloads.mesh.svid(f"{TRUST_DOMAIN}/ns/agents/sa/other")
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(workloads.exchange("mesh", other), caplog, permissions_api)
    assert (line["reason"], line["claim"]) == ("condition", "sub")
    # kagent's service account is no actor of the mesh client either.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(
            workloads.exchange("mesh", service_account_token(workloads.cluster)),
            caplog,
            permissions_api,
        )
    assert line["reason"] == "condition"


def test_a_downstream_api_reads_who_acts(workloads: Workloads) -> None:
    """The Python verifier gives a view the actor chain (``flask.g.actors``)."""
    token = assert_issued(workloads.exchange("kagent", service_account_token(workloads.cluster)))
    api = flask.Flask("countries")
    jwks_uri = f"{workloads.sts.url}/.well-known/jwks.json"
    auth = BearerAuth(TokenVerifier(issuer=STS_ISSUER, audience=COUNTRIES, jwks_uri=jwks_uri))
    seen: list[list[Actor]] = []

    @api.get("/countries")
    @auth.require("countries:read")
    def countries(claims: dict[str, Any]) -> str:
        seen.append(flask.g.actors)
        return "ok"

    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert api.test_client().get("/countries", headers=headers).status_code == 200
    assert seen == [
        [Actor(sub=SERVICE_ACCOUNT, iss=workloads.cluster.issuer, profiles=("ai_agent",))]
    ]


def test_a_bundle_is_never_rolled_back_and_its_refresh_hint_is_followed(
    mesh: SpiffeBundle, caplog: pytest.LogCaptureFixture
) -> None:
    keys = RemoteKeySet(
        issuer=TRUST_DOMAIN, algorithms=["ES256"], session=requests.Session(),
        jwks_uri=mesh.url, refresh_interval=3600, spiffe=True,
    )  # fmt: skip
    first = keys.refresh()
    assert first is not None
    assert first.find(mesh.kid, "ES256") is not None
    # Only the JWT authority: the X.509 one is no key for JWT-SVIDs.
    assert first.kids == frozenset({mesh.kid})
    assert keys.refresh_interval == 300  # spiffe_refresh_hint, sooner than configured
    # A replayed older bundle (a lower spiffe_sequence) is refused; the held keys stay.
    mesh.sequence, mesh.kid = 3, "rolled-back"
    with caplog.at_level(logging.WARNING):
        assert keys.refresh() is first
    assert any("older than the one held" in str(getattr(r, "fields", "")) for r in caplog.records)


def test_the_metadata_names_the_kinds_of_actor(workloads: Workloads, sts: Sts) -> None:
    """OAuth 2.0 Entity Profiles §5: the actor kinds our act.sub_profile states; none, none."""
    path = "/.well-known/oauth-authorization-server"
    metadata = workloads.sts.http.get(f"{workloads.sts.url}{path}", timeout=5).json()
    assert metadata["entity_profiles_supported"] == {"actor": ["ai_agent", "service"]}
    plain = sts.http.get(f"{sts.url}{path}", timeout=5).json()
    assert "entity_profiles_supported" not in plain


def test_an_agents_client_never_exchanges_the_users_token_alone(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without require_actor_token, an agent's client could leave its actor token out and get
    the user's own permissions, past every cap on the agent."""

    def agent_client(config: dict[str, Any]) -> None:
        config["clients"][1]["require_actor_token"] = True  # "backend", a delegating client

    sts = make_sts(agent_client)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        response = sts.exchange(issuer.token(), client_id="backend", client_secret=BACKEND_SECRET)
        line = refused_with(response, caplog, permissions_api)
    assert (line["reason"], line["parameter"]) == ("actor_token_required", "actor_token")
    acting = sts.exchange(
        issuer.token(), client_id="backend", client_secret=BACKEND_SECRET,
        actor_token=issuer.token(sub="service|batch"),
        actor_token_type="urn:ietf:params:oauth:token-type:jwt",
    )  # fmt: skip
    assert sts.decode(assert_issued(acting)["access_token"])["act"]["sub"] == "service|batch"


def test_a_workload_is_never_a_user(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    cluster: FakeIssuer,
    permissions_api: FakePermissions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An actor_only issuer's tokens are refused as subject tokens, by every client."""

    def workload_issuer(config: dict[str, Any]) -> None:
        config["upstreams"][0]["subject_prefix"] = "eu|"
        config["upstreams"].append(
            {"issuer": cluster.issuer, "audiences": [STS_AUDIENCE], "subject_prefix": "k8s|",
             "actor_only": True}
        )  # fmt: skip

    sts = make_sts(workload_issuer)
    with caplog.at_level(logging.INFO, logger="token_exchange.audit"):
        line = refused_with(sts.exchange(service_account_token(cluster)), caplog, permissions_api)
    assert (line["reason"], line["parameter"]) == ("actor_only", "subject_token")
