"""private_key_jwt (RFC 7523 §2.2 and §3, OpenID Connect Core §9): the assertion checks of
``ClientRegistry.authenticate``, and the config rules of a client that uses it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from token_exchange.config.settings import ConfigError, Settings
from token_exchange.grant.clients import ClientRegistry
from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import (
    INVALID_CLIENT_DESCRIPTION,
    InvalidClient,
    InvalidRequest,
    TemporarilyUnavailable,
)
from token_exchange.oauth.reasons import REASONS
from token_exchange.obs.metrics import Metrics
from token_exchange.sources.keys import generate_private_key, public_jwk
from token_exchange.sources.store import MemoryStore, StoreUnavailable
from token_exchange.web.app import authorization_server_metadata, client_key_sources

from ..fakes import (
    BACKEND_SECRET,
    COUNTRIES,
    JWT_BEARER_ASSERTION,
    STS_ISSUER,
    STS_TOKEN_ENDPOINT,
    ClientAssertions,
)
from ..test_private_key_jwt import clients

Edit = Callable[[dict[str, Any]], None]


def signer_client(jwks: dict[str, Any], **keys: Any) -> dict[str, Any]:
    return {
        "client_id": "signer",
        "type": "confidential",
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": jwks,
        "audiences": [COUNTRIES],
        **keys,
    }


def with_clients(*clients: dict[str, Any]) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        config["clients"].extend(clients)

    return edit


@pytest.fixture
def signer(clock: ManualClock) -> ClientAssertions:
    return ClientAssertions("signer", clock=clock)


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def build_registry(settings: Settings, store: MemoryStore, clock: ManualClock) -> ClientRegistry:
    """As ``create_app`` wires it; inline key sets need no socket."""
    return ClientRegistry(
        settings.clients,
        key_sources=client_key_sources(
            settings, session=requests.Session(), clock=clock, metrics=Metrics()
        ),
        audiences=(settings.issuer, settings.token_endpoint),
        store=store,
        clock=clock,
    )


@pytest.fixture
def registry(
    make_settings: Callable[..., Settings],
    signer: ClientAssertions,
    store: MemoryStore,
    clock: ManualClock,
) -> ClientRegistry:
    return build_registry(make_settings(with_clients(signer_client(signer.jwks()))), store, clock)


def refused(
    registry: ClientRegistry, form: dict[str, str], authorization: str | None = None
) -> str:
    """Authenticate, expecting 401 ``invalid_client``; return its detail (for the audit line:
    the caller is told the same whatever went wrong)."""
    with pytest.raises(InvalidClient) as refusal:
        registry.authenticate(authorization, form)
    assert refusal.value.status_code == 401
    assert refusal.value.description == INVALID_CLIENT_DESCRIPTION
    assert refusal.value.reason in REASONS
    return str(refusal.value.detail)


# -- accepted ------------------------------------------------------------------------------------


def test_a_valid_assertion_authenticates_its_client(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    assert registry.authenticate(None, signer.form()).client_id == "signer"


@pytest.mark.parametrize("aud", [STS_ISSUER, STS_TOKEN_ENDPOINT, [STS_ISSUER, STS_TOKEN_ENDPOINT]])
def test_aud_may_be_our_issuer_or_our_token_endpoint(
    registry: ClientRegistry, signer: ClientAssertions, aud: Any
) -> None:
    assert registry.authenticate(None, signer.form(aud=aud)).client_id == "signer"


def test_a_client_id_beside_the_assertion_must_be_its_sub(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    form = {**signer.form(), "client_id": "signer"}
    assert registry.authenticate(None, form).client_id == "signer"
    assert refused(registry, {**signer.form(), "client_id": "spa"}) == (
        "client_id does not match the client assertion"
    )


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_every_advertised_algorithm_is_accepted(
    make_settings: Callable[..., Settings],
    store: MemoryStore,
    clock: ManualClock,
    rsa_keys: list[rsa.RSAPrivateKey],
    alg: str,
) -> None:
    key = rsa_keys[0] if alg in ("RS256", "PS256") else generate_private_key(alg)
    client = ClientAssertions("signer", key, alg=alg, clock=clock)
    registry = build_registry(
        make_settings(with_clients(signer_client(client.jwks()))), store, clock
    )
    assert registry.authenticate(None, client.form()).client_id == "signer"
    metadata = authorization_server_metadata(make_settings())
    assert alg in metadata["token_endpoint_auth_signing_alg_values_supported"]


def test_metadata_advertises_private_key_jwt(settings: Settings) -> None:
    metadata = authorization_server_metadata(settings)
    for endpoint in ("token", "introspection", "revocation"):
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        algs = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert set(algs) == {"RS256", "PS256", "ES256", "EdDSA"}


# -- refused: RFC 7523 §3 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"iss": "someone"}, "client assertion iss must be the client_id"),
        ({"iss": None}, "client assertion lacks the required iss claim"),
        ({"sub": None}, "client authentication failed"),
        ({"aud": "https://elsewhere.test"}, "client assertion aud must be our issuer or token"),
        ({"aud": [STS_ISSUER, "https://elsewhere.test"]}, "client assertion aud must be our"),
        ({"aud": f"{STS_ISSUER}/introspect"}, "client assertion aud must be our"),
        ({"aud": None}, "client assertion lacks the required aud claim"),
        ({"exp": None}, "client assertion lacks the required exp claim"),
        ({"exp": "soon"}, "client assertion has a non-numeric exp claim"),
        ({"jti": None}, "client assertion lacks the required jti claim"),
        ({"jti": ""}, "client assertion has an invalid jti"),
        ({"jti": 7}, "client assertion is invalid"),
    ],
)
def test_claims_are_checked(
    registry: ClientRegistry, signer: ClientAssertions, claims: dict[str, Any], why: str
) -> None:
    assert refused(registry, signer.form(**claims)).startswith(why)


def test_an_expired_assertion_is_refused(
    registry: ClientRegistry, signer: ClientAssertions, clock: ManualClock
) -> None:
    assertion = signer.assertion()
    clock.advance(60 + 31)  # exp, plus the leeway for clock skew
    assert refused(registry, signer.form(assertion)) == "client assertion has expired"


def test_exp_may_not_be_far_ahead(
    registry: ClientRegistry, signer: ClientAssertions, clock: ManualClock
) -> None:
    far = int(clock()) + 7200
    assert "more than 3600 seconds ahead" in refused(registry, signer.form(exp=far))
    hour = int(clock()) + 3600  # what authlib's client sends by default
    assert registry.authenticate(None, signer.form(exp=hour)).client_id == "signer"


def test_nbf_and_iat_in_the_future_are_refused(
    registry: ClientRegistry, signer: ClientAssertions, clock: ManualClock
) -> None:
    later = int(clock()) + 120
    assert refused(registry, signer.form(nbf=later)) == "client assertion is not valid yet (nbf)"
    assert "issued in the future" in refused(registry, signer.form(iat=later))


def test_a_jti_is_single_use(
    registry: ClientRegistry, signer: ClientAssertions, clock: ManualClock
) -> None:
    form = signer.form()
    registry.authenticate(None, form)
    assert refused(registry, form) == "client assertion has been used before (jti)"
    # Even once more than the window of an ordinary replay has passed, while it is valid.
    clock.advance(50)
    refused(registry, form)


def test_the_same_jti_from_two_clients_is_two_assertions(
    make_settings: Callable[..., Settings],
    store: MemoryStore,
    clock: ManualClock,
    signer: ClientAssertions,
) -> None:
    other = ClientAssertions("other", clock=clock)
    config = signer_client(other.jwks(), client_id="other")
    registry = build_registry(
        make_settings(with_clients(signer_client(signer.jwks()), config)), store, clock
    )
    registry.authenticate(None, signer.form(jti="same"))
    assert registry.authenticate(None, other.form(jti="same")).client_id == "other"


def test_jti_replay_state_is_shared_through_the_store(
    make_settings: Callable[..., Settings],
    store: MemoryStore,
    clock: ManualClock,
    signer: ClientAssertions,
) -> None:
    settings = make_settings(with_clients(signer_client(signer.jwks())))
    first, second = (build_registry(settings, store, clock) for _ in range(2))
    form = signer.form()
    first.authenticate(None, form)
    assert refused(second, form) == "client assertion has been used before (jti)"


def test_a_store_that_is_down_means_503(
    make_settings: Callable[..., Settings], clock: ManualClock, signer: ClientAssertions
) -> None:
    class Down(MemoryStore):
        def add(self, key: str, value: bytes, ttl: float) -> bool:
            raise StoreUnavailable("down")

    settings = make_settings(with_clients(signer_client(signer.jwks())))
    registry = build_registry(settings, Down(clock=clock), clock)
    with pytest.raises(TemporarilyUnavailable):
        registry.authenticate(None, signer.form())


# -- refused: signatures -------------------------------------------------------------------------


def test_hs256_keyed_with_the_public_key_is_refused(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assertion = signer.unsafe_assertion("HS256", public_pem)
    assert "must be signed with" in refused(registry, signer.form(assertion))


def test_alg_none_is_refused(registry: ClientRegistry, signer: ClientAssertions) -> None:
    assertion = signer.unsafe_assertion("none")
    assert "must be signed with" in refused(registry, signer.form(assertion))


def test_a_key_not_in_the_set_is_refused(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    # Under the kid of the client's own key: the signature does not verify.
    assert refused(registry, signer.form(signer.assertion(key=stranger))) == (
        "client assertion has an invalid signature"
    )
    # Under a kid of its own: no such key.
    assertion = signer.assertion(key=stranger, kid="stranger")
    assert "not in the client's key set" in refused(registry, signer.form(assertion))


def test_a_tampered_assertion_is_refused(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    header, _, signature = signer.assertion().split(".")
    other_payload = signer.assertion(sub="signer", jti="x").split(".")[1]
    refused(registry, signer.form(f"{header}.{other_payload}.{signature}"))
    refused(registry, signer.form("not-a-jwt"))


# -- refused: methods ----------------------------------------------------------------------------


def test_a_secret_client_cannot_authenticate_with_an_assertion(
    registry: ClientRegistry, clock: ManualClock
) -> None:
    impostor = ClientAssertions("backend", clock=clock)
    assert refused(registry, impostor.form()) == (
        "this client does not authenticate with private_key_jwt"
    )


def test_a_private_key_jwt_client_cannot_use_a_secret(registry: ClientRegistry) -> None:
    with pytest.raises(InvalidClient) as refusal:
        registry.authenticate(None, {"client_id": "signer", "client_secret": "guess"})
    assert "private_key_jwt" in str(refusal.value.detail)
    assert refusal.value.reason == "client_auth_method"
    with pytest.raises(InvalidClient):
        registry.authenticate(None, {"client_id": "signer"})


def test_one_method_only(registry: ClientRegistry, signer: ClientAssertions) -> None:
    with pytest.raises(InvalidRequest):
        registry.authenticate(None, {**signer.form(), "client_secret": BACKEND_SECRET})
    with pytest.raises(InvalidRequest):
        registry.authenticate("Basic YmFja2VuZDpzM2NyZXQ=", signer.form())


def test_assertion_and_its_type_go_together(
    registry: ClientRegistry, signer: ClientAssertions
) -> None:
    with pytest.raises(InvalidRequest):
        registry.authenticate(None, {"client_assertion": signer.assertion()})
    with pytest.raises(InvalidRequest):
        registry.authenticate(None, {"client_assertion_type": JWT_BEARER_ASSERTION})
    form = {**signer.form(), "client_assertion_type": "urn:example:saml"}
    assert refused(registry, form) == "unsupported client_assertion_type"


def test_an_unknown_sub_is_refused(registry: ClientRegistry, clock: ManualClock) -> None:
    assert refused(registry, ClientAssertions("nobody", clock=clock).form()) == "unknown client"


# -- configuration -------------------------------------------------------------------------------


def config_problems(make_settings: Callable[..., Settings], *clients: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as error:
        make_settings(with_clients(*clients))
    return "\n".join(error.value.problems)


def test_a_jwks_with_a_private_key_is_refused(
    make_settings: Callable[..., Settings], signer: ClientAssertions
) -> None:
    private = signer.key.private_numbers()
    jwks = {"keys": [{**public_jwk(signer.key), "d": str(private.private_value)}]}
    problems = config_problems(make_settings, signer_client(jwks))
    assert 'clients["signer"].jwks: keys[0] holds private key material (d)' in problems


def test_a_symmetric_jwk_is_refused(make_settings: Callable[..., Settings]) -> None:
    problems = config_problems(make_settings, signer_client({"keys": [{"kty": "oct", "k": "c2"}]}))
    assert "holds private key material (k)" in problems


def test_a_jwks_without_usable_keys_is_refused(make_settings: Callable[..., Settings]) -> None:
    problems = config_problems(make_settings, signer_client({"keys": [{"kty": "EC"}]}))
    assert 'clients["signer"].jwks: holds no public key usable with' in problems
    assert "must be a JWK Set" in config_problems(make_settings, signer_client({"keys": []}))


def test_private_key_jwt_needs_exactly_one_key_source_and_no_secret(
    make_settings: Callable[..., Settings], signer: ClientAssertions
) -> None:
    both = signer_client(signer.jwks(), jwks_uri="https://signer.example.test/jwks.json")
    assert "exactly one of jwks, jwks_uri" in config_problems(make_settings, both)
    neither = signer_client(signer.jwks())
    del neither["jwks"]
    assert "exactly one of jwks, jwks_uri" in config_problems(make_settings, neither)
    secret = signer_client(signer.jwks(), secret_env="BACKEND_SECRET")
    assert 'clients["signer"].secret_env: a private_key_jwt client has no secret' in (
        config_problems(make_settings, secret)
    )


def test_a_jwks_uri_must_be_https(
    make_settings: Callable[..., Settings], signer: ClientAssertions
) -> None:
    client = signer_client(signer.jwks(), jwks_uri="http://signer.example.test/jwks.json")
    del client["jwks"]
    assert 'clients["signer"].jwks_uri: must use https' in config_problems(make_settings, client)
    client["jwks_uri"] = "http://127.0.0.1:8080/jwks.json"  # loopback, as for every URL
    make_settings(with_clients(client))


def test_secret_methods_keep_their_rules(
    make_settings: Callable[..., Settings], signer: ClientAssertions
) -> None:
    client = signer_client(signer.jwks(), token_endpoint_auth_method="client_secret_basic")
    problems = config_problems(make_settings, client)
    assert 'clients["signer"].secret_env: is required for a confidential client' in problems
    assert 'clients["signer"].jwks: is used only with token_endpoint_auth_method' in problems
    public = {"client_id": "pub", "audiences": [COUNTRIES], "jwks": signer.jwks()}
    assert 'clients["pub"].jwks: a public client does not authenticate' in (
        config_problems(make_settings, public)
    )
    wrong = signer_client(signer.jwks(), token_endpoint_auth_method="client_secret_jwt")
    assert "token_endpoint_auth_method: must be" in config_problems(make_settings, wrong)


def test_client_secret_basic_alone_refuses_the_post_method(
    make_settings: Callable[..., Settings], store: MemoryStore, clock: ManualClock
) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["clients"][1]["token_endpoint_auth_method"] = "client_secret_basic"

    registry = build_registry(make_settings(edit), store, clock)
    with pytest.raises(InvalidClient):
        registry.authenticate(None, {"client_id": "backend", "client_secret": BACKEND_SECRET})


# -- the store -----------------------------------------------------------------------------------


def test_add(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    assert store.add("k", b"1", 10)
    assert not store.add("k", b"1", 10)
    clock.advance(11)
    assert store.add("k", b"1", 10)


def test_a_jwks_with_a_private_key_does_not_start(make_settings: Callable[..., Settings]) -> None:
    signer = ClientAssertions("signer")
    edit = clients(signer, "https://keys.example.test/jwks.json")
    d = signer.key.private_numbers().private_value.to_bytes(32, "big")

    def leak(config: dict[str, Any]) -> None:
        edit(config)
        (jwk,) = next(c for c in config["clients"] if c["client_id"] == "signer")["jwks"]["keys"]
        jwk["d"] = base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    with pytest.raises(ConfigError, match=r"holds private key material \(d\)"):
        make_settings(leak)
