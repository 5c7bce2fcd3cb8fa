"""DPoP proofs (RFC 9449 §4.3) checked without HTTP, and DPoP-bound tokens at the grant (§6)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from token_exchange.config.settings import ConfigError, Settings
from token_exchange.grant.record import RequestRecord
from token_exchange.grant.request import ExchangeRequest
from token_exchange.grant.rfc8693 import TokenExchange
from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.dpop import (
    InvalidDpopProof,
    NonceRequired,
    Nonces,
    Proof,
    ProofRejected,
    bound_jkt,
    normalize_uri,
    token_hash,
    verify_proof,
)
from token_exchange.oauth.errors import InvalidRequest, TemporarilyUnavailable
from token_exchange.sources.store import MemoryStore, StoreUnavailable

from ..fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    T0,
    TENANT,
    TOKEN_ENDPOINT,
    DpopKey,
    RecordingPermissions,
    TokenMaker,
    build_exchange,
)


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey(clock=lambda: T0)


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def check(
    proof: str | list[str], store: MemoryStore, *, method: str = "POST", **options: Any
) -> Proof:
    values = [proof] if isinstance(proof, str) else proof
    return verify_proof(
        values,
        method=method,
        url=options.pop("url", TOKEN_ENDPOINT),
        now=options.pop("now", T0),
        replay=store,
        **options,
    )


def rejected(proof: str | list[str], store: MemoryStore, code: str, **options: Any) -> None:
    with pytest.raises(ProofRejected) as caught:
        check(proof, store, **options)
    assert caught.value.code == code


# -- the proof ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_a_valid_proof_gives_the_thumbprint_of_its_key(alg: str, store: MemoryStore) -> None:
    key = DpopKey(alg, clock=lambda: T0)
    proof = check(key.proof(), store)
    assert proof.jkt == key.jkt
    assert proof.ath is None


def test_htu_is_compared_after_normalisation(key: DpopKey, store: MemoryStore) -> None:
    # RFC 3986 §6.2.2 / §6.2.3: case of scheme and host, the default port, %-escapes; the
    # query and fragment are not part of htu (RFC 9449 §4.3 step 9).
    check(key.proof("HTTPS://STS.Example.TEST:443/%74oken?x=1#frag"), store)
    check(key.proof(), store, url="https://sts.example.test/token?client=1")


@pytest.mark.parametrize(
    "htu",
    [
        "https://sts.example.test/token/",
        "https://sts.example.test/other",
        "http://sts.example.test/token",
        "https://sts.example.test:8443/token",
        "https://evil.example.test/token",
        "https://user@sts.example.test/token",
        "/token",
    ],
)
def test_a_proof_for_another_uri_is_refused(key: DpopKey, store: MemoryStore, htu: str) -> None:
    rejected(key.proof(htu), store, "dpop_htu")


@pytest.mark.parametrize("htm", ["GET", "post", "PUT"])
def test_a_proof_for_another_method_is_refused(key: DpopKey, store: MemoryStore, htm: str) -> None:
    rejected(key.proof(htm=htm), store, "dpop_htm")


def test_a_replayed_proof_is_refused_until_it_could_no_longer_be_accepted(
    key: DpopKey, store: MemoryStore, clock: ManualClock
) -> None:
    proof = key.proof()
    check(proof, store)
    rejected(proof, store, "dpop_replay")
    # The same jti for another URI is another proof (the replay key is jti + htu).
    introspect = "https://sts.example.test/introspect"
    check(key.proof(introspect, jti="same"), store, url=introspect)
    check(key.proof(jti="same"), store)
    rejected(key.proof(jti="same"), store, "dpop_replay")
    # Remembered for the whole window either way of iat (2 x 60 s), not longer.
    clock.advance(120)
    rejected(proof, store, "dpop_replay", now=T0)


@pytest.mark.parametrize("offset", [-61, 61, -3600])
def test_iat_outside_the_window_is_refused(key: DpopKey, store: MemoryStore, offset: int) -> None:
    rejected(key.proof(iat=int(T0) + offset), store, "dpop_iat")
    check(key.proof(iat=int(T0) + offset), store, window=abs(offset))


@pytest.mark.parametrize("iat", ["1800000000", True])
def test_iat_must_be_a_number(key: DpopKey, store: MemoryStore, iat: Any) -> None:
    rejected(key.proof(iat=iat), store, "dpop_iat")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_proof_that_is_not_rfc_8259_json_is_malformed(
    key: DpopKey, store: MemoryStore, value: float
) -> None:
    # PyJWT writes and reads NaN and Infinity; JSON has neither.
    rejected(key.proof(iat=value), store, "dpop_malformed")
    rejected(key.proof(headers={"x": value}), store, "dpop_malformed")


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_required_claims(key: DpopKey, store: MemoryStore, claim: str) -> None:
    rejected(key.proof(**{claim: None}), store, "dpop_claim")


@pytest.mark.parametrize("jti", ["", 42, "x" * 257])
def test_jti_must_be_a_sane_string(key: DpopKey, store: MemoryStore, jti: Any) -> None:
    rejected(key.proof(jti=jti), store, "dpop_claim")


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "dpop"])
def test_typ_must_be_dpop_jwt(key: DpopKey, store: MemoryStore, typ: str | None) -> None:
    rejected(key.proof(headers={"typ": typ or "JWT"}), store, "dpop_typ")


def test_typ_compares_as_a_media_type(key: DpopKey, store: MemoryStore) -> None:
    check(key.proof(headers={"typ": "application/DPoP+JWT"}), store)


def test_symmetric_and_none_algorithms_are_refused(key: DpopKey, store: MemoryStore) -> None:
    hs256 = key.proof(alg="HS256", key=b"a shared secret of thirty-two bytes!")
    rejected(hs256, store, "dpop_alg")
    none = jwt.encode(
        {"jti": "n", "htm": "POST", "htu": TOKEN_ENDPOINT, "iat": int(T0)},
        None,
        algorithm="none",
        headers={"typ": "dpop+jwt", "jwk": key.jwk},
    )
    rejected(none, store, "dpop_alg")


def test_only_the_configured_algorithms_are_accepted(store: MemoryStore) -> None:
    key = DpopKey("RS256", clock=lambda: T0)
    rejected(key.proof(), store, "dpop_alg", algorithms=("ES256",))


def test_a_private_key_in_the_jwk_header_is_refused(key: DpopKey, store: MemoryStore) -> None:
    private = ECAlgorithm.to_jwk(key.private_key, as_dict=True)
    assert "d" in private
    rejected(key.proof(headers={"jwk": private}), store, "dpop_jwk")


@pytest.mark.parametrize(
    "jwk",
    [None, "a string", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "EC", "crv": "P-256"}],
)
def test_the_jwk_must_be_a_key_of_the_algorithm(key: DpopKey, store: MemoryStore, jwk: Any) -> None:
    rejected(key.proof(headers={"jwk": jwk}), store, "dpop_jwk")


def test_a_p384_key_is_no_es256_key(key: DpopKey, store: MemoryStore) -> None:
    p384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    rejected(key.proof(headers={"jwk": p384}), store, "dpop_jwk")


def test_a_proof_signed_by_another_key_than_its_jwk_is_refused(
    key: DpopKey, store: MemoryStore
) -> None:
    other = DpopKey(clock=lambda: T0)
    rejected(key.proof(key=other.private_key), store, "dpop_signature")


def test_exactly_one_dpop_header(key: DpopKey, store: MemoryStore) -> None:
    first, second = key.proof(), key.proof()
    rejected([first, second], store, "dpop_headers")
    # Repeated header lines joined by the server.
    rejected(f"{first}, {second}", store, "dpop_headers")
    rejected([], store, "dpop_headers")


@pytest.mark.parametrize("value", ["", "garbage", "a.b.c", "a.b.c.d.e", "x" * 9000])
def test_a_malformed_proof_is_refused(store: MemoryStore, value: str) -> None:
    rejected(value, store, "dpop_malformed")


def test_ath_must_be_a_string(key: DpopKey, store: MemoryStore) -> None:
    rejected(key.proof(ath=12), store, "dpop_claim")
    assert check(key.proof(token="tok"), store).ath == token_hash("tok")


def test_a_store_that_cannot_record_the_jti_is_no_answer(key: DpopKey) -> None:
    class DeadStore(MemoryStore):
        def add(self, key: str, value: bytes, ttl: float) -> bool:
            raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        check(key.proof(), DeadStore())


def test_token_hash_is_rfc_9449s_example() -> None:
    # RFC 9449 §7.1: the ath of the access token of its example.
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_normalize_uri() -> None:
    assert normalize_uri("HTTP://Example.TEST:80") == "http://example.test/"
    assert normalize_uri("https://[::1]:8443/a%2fb%7e") == "https://[::1]:8443/a%2Fb~"
    assert normalize_uri("ftp://example.test/") is None
    assert normalize_uri("https://example.test:99999/") is None


@pytest.mark.parametrize(
    ("claims", "jkt"),
    [({}, None), ({"cnf": {"jkt": "abc"}}, "abc")],
)
def test_bound_jkt(claims: dict[str, Any], jkt: str | None) -> None:
    assert bound_jkt(claims) == jkt


@pytest.mark.parametrize(
    "cnf", ["abc", {"x5t#S256": "abc"}, {"jkt": 1}, {"jkt": ""}, []]
)  # fmt: skip
def test_a_binding_we_cannot_check_is_refused(cnf: Any) -> None:
    with pytest.raises(ValueError, match="cnf"):
        bound_jkt({"cnf": cnf})


# -- the store ----------------------------------------------------------------------------------


def test_memory_store_add_is_set_if_absent(store: MemoryStore, clock: ManualClock) -> None:
    assert store.add("k", b"1", ttl=10)
    assert not store.add("k", b"2", ttl=10)
    assert store.get("k") == b"1"
    clock.advance(10)
    assert store.add("k", b"3", ttl=10)


# -- the grant ----------------------------------------------------------------------------------


def exchange_request(token: str, **values: str) -> ExchangeRequest:
    form = {"subject_token": [token], "subject_token_type": [ACCESS_TOKEN], "audience": [COUNTRIES]}
    form.update({k: [v] for k, v in values.items()})
    return ExchangeRequest.from_form(form)


def proof_of(key: DpopKey, token: str | None = None, **claims: Any) -> Proof:
    return check(key.proof(token=token, **claims), MemoryStore())


def minted(exchange: TokenExchange, token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_a_proof_binds_the_minted_token(
    exchange: TokenExchange, upstream: TokenMaker, key: DpopKey, settings: Settings
) -> None:
    client = settings.clients[0]
    issued = exchange.exchange(exchange_request(upstream.token()), client, proof=proof_of(key))
    assert issued.response()["token_type"] == "DPoP"
    assert minted(exchange, issued.access_token)["cnf"] == {"jkt": key.jkt}
    plain = exchange.exchange(exchange_request(upstream.token()), client)
    assert plain.response()["token_type"] == "Bearer"
    assert "cnf" not in minted(exchange, plain.access_token)


def test_a_client_that_requires_dpop_needs_a_proof(
    make_settings: Any, upstream: TokenMaker, clock: ManualClock, key: DpopKey
) -> None:
    settings = make_settings(lambda c: c["clients"][0].update(dpop="required"))
    exchange = build_exchange(
        settings,
        clock=clock,
        key_sources={TENANT: upstream.key_source()},
        permission_sources={"webapp": RecordingPermissions()},
    )
    with pytest.raises(InvalidDpopProof):
        exchange.exchange(exchange_request(upstream.token()), settings.clients[0])
    exchange.exchange(exchange_request(upstream.token()), settings.clients[0], proof=proof_of(key))


def test_a_bound_subject_token_needs_a_proof_by_its_key_with_its_ath(
    exchange: TokenExchange, upstream: TokenMaker, key: DpopKey, settings: Settings
) -> None:
    client = settings.clients[0]
    token = upstream.token(cnf={"jkt": key.jkt})
    other = DpopKey(clock=lambda: T0)
    for proof, why in [
        (None, "proof by its key is required"),
        (proof_of(other, token), "not signed by the key"),
        (proof_of(key), "ath"),
        (proof_of(key, "another token"), "ath"),
    ]:
        with pytest.raises(InvalidRequest, match=why):
            exchange.exchange(exchange_request(token), client, proof=proof)
    issued = exchange.exchange(exchange_request(token), client, proof=proof_of(key, token))
    assert minted(exchange, issued.access_token)["cnf"] == {"jkt": key.jkt}


def test_a_subject_token_bound_some_other_way_is_refused(
    exchange: TokenExchange, upstream: TokenMaker, key: DpopKey, settings: Settings
) -> None:
    token = upstream.token(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    with pytest.raises(InvalidRequest, match="cannot verify"):
        exchange.exchange(exchange_request(token), settings.clients[0], proof=proof_of(key, token))


def test_an_upstream_may_require_bound_tokens(
    make_settings: Any, upstream: TokenMaker, clock: ManualClock, key: DpopKey
) -> None:
    settings = make_settings(lambda c: c["upstreams"][0].update(require_bound_tokens=True))
    exchange = build_exchange(
        settings,
        clock=clock,
        key_sources={TENANT: upstream.key_source()},
        permission_sources={"webapp": RecordingPermissions()},
    )
    client = settings.clients[0]
    with pytest.raises(InvalidRequest, match="must be DPoP-bound"):
        exchange.exchange(exchange_request(upstream.token()), client, proof=proof_of(key))
    token = upstream.token(cnf={"jkt": key.jkt})
    exchange.exchange(exchange_request(token), client, proof=proof_of(key, token))


def test_the_grant_checks_proofs_for_its_token_endpoint(
    exchange: TokenExchange, key: DpopKey
) -> None:
    record = RequestRecord()
    assert exchange.dpop_proof([], "POST", record) is None
    proof = key.proof()
    assert exchange.dpop_proof([proof], "POST", record) is not None
    with pytest.raises(InvalidDpopProof):
        exchange.dpop_proof([proof], "POST", record)
    audit = record.as_audit()
    assert audit["reason"] == "dpop_replay"
    with pytest.raises(InvalidDpopProof):
        exchange.dpop_proof([key.proof("https://127.0.0.1:8080/token")], "POST", record)


def test_a_dead_store_fails_closed(exchange: TokenExchange, key: DpopKey) -> None:
    class DeadStore(MemoryStore):
        def add(self, key: str, value: bytes, ttl: float) -> bool:
            raise StoreUnavailable("down")

    exchange.replay = DeadStore()
    with pytest.raises(TemporarilyUnavailable):
        exchange.dpop_proof([key.proof()], "POST", RequestRecord())


# -- nonces (RFC 9449 §8) ------------------------------------------------------------------------


def test_nonces_are_shared_through_the_store_and_change_each_period(
    store: MemoryStore, clock: ManualClock
) -> None:
    first, second = (Nonces(store, lifetime=300, clock=clock) for _ in range(2))
    nonce = first.current()
    assert second.current() == nonce  # another replica, the same nonce
    assert second.accepts(nonce)
    clock.advance(300)
    assert first.current() != nonce
    assert second.accepts(nonce)  # the previous period's is still good
    clock.advance(300)
    assert not first.accepts(nonce)
    assert not first.accepts(None)
    assert not first.accepts("")


def test_a_proof_without_the_nonce_is_told_to_use_one(
    key: DpopKey, store: MemoryStore, clock: ManualClock
) -> None:
    nonces = Nonces(store, lifetime=300, clock=clock)
    for nonce in (None, "stale", 42):
        with pytest.raises(NonceRequired):
            check(key.proof(nonce=nonce), store, nonces=nonces)
    check(key.proof(nonce=nonces.current()), store, nonces=nonces)


def test_a_bound_actor_token_needs_a_proof_by_its_key(
    exchange: TokenExchange, upstream: TokenMaker, key: DpopKey, settings: Settings
) -> None:
    backend = settings.clients[1]
    actor = upstream.token(sub="service|batch", cnf={"jkt": key.jkt})
    request = exchange_request(upstream.token(), actor_token=actor, actor_token_type=ACCESS_TOKEN)
    with pytest.raises(InvalidRequest, match="actor_token is DPoP-bound"):
        exchange.exchange(request, backend)
    with pytest.raises(InvalidRequest, match="not signed by the key actor_token"):
        exchange.exchange(request, backend, proof=proof_of(DpopKey(clock=lambda: T0), actor))
    # The subject token is not bound: the one ath is the actor token's.
    with pytest.raises(InvalidRequest, match="ath"):
        exchange.exchange(request, backend, proof=proof_of(key))
    issued = exchange.exchange(request, backend, proof=proof_of(key, actor))
    assert minted(exchange, issued.access_token)["cnf"] == {"jkt": key.jkt}


# -- configuration -------------------------------------------------------------------------------


def test_dpop_configuration_problems_are_explained(make_settings: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["clients"][0]["dpop"] = "sometimes"
        config["upstreams"][0]["require_bound_tokens"] = "yes"
        config["dpop"] = {"algorithms": ["HS256"], "window": 0, "nonce_lifetime": 1}

    with pytest.raises(ConfigError) as caught:
        make_settings(edit)
    problems = "\n".join(caught.value.problems)
    assert 'clients["spa"].dpop: must be "allowed" or "required"' in problems
    assert "require_bound_tokens: must be true or false" in problems
    assert "dpop.algorithms" in problems
    assert "'HS256' is not allowed" in problems
    assert "dpop.window" in problems
    assert "dpop.nonce_lifetime" in problems


def test_dpop_configuration_defaults(settings: Settings) -> None:
    assert settings.dpop.algorithms == ("ES256", "RS256", "PS256", "EdDSA")
    assert (settings.dpop.window, settings.dpop.nonce, settings.dpop.nonce_lifetime) == (
        60,
        False,
        300,
    )
    assert all(c.dpop == "allowed" for c in settings.clients)
    assert not settings.upstreams[0].require_bound_tokens


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": ["P-256"], "x": "a", "y": "b"},
        {"kty": "EC", "crv": {"a": 1}, "x": "a", "y": "b"},
        {"kty": "EC", "crv": "P-256", "x": 1, "y": [2]},
        {"kty": "EC", "crv": "P-256", "x": "!!!", "y": "***"},
        {"kty": ["EC"], "crv": "P-256"},
        {"kty": "EC", "crv": "P-256", "x": {"nested": [[[]]]}, "y": None},
    ],
)
def test_odd_jwk_headers_are_refused_not_crashed_on(
    key: DpopKey, store: MemoryStore, jwk: Any
) -> None:
    rejected(key.proof(headers={"jwk": jwk}), store, "dpop_jwk")


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "headers",
    [{"typ": ["dpop+jwt"]}, {"typ": 1}, {"alg": ["ES256"]}, {"jwk": [1, 2]}, {"kid": {"a": 1}}],
)
def test_odd_headers_are_refused_not_crashed_on(
    key: DpopKey, store: MemoryStore, headers: dict[str, Any]
) -> None:
    # Forged by hand (PyJWT would not write them); the header is refused before the signature.
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk, **headers}
    payload = {"jti": "j", "htm": "POST", "htu": TOKEN_ENDPOINT, "iat": int(T0)}
    with pytest.raises(ProofRejected):
        check(f"{_b64(header)}.{_b64(payload)}.c2ln", store)


@pytest.mark.parametrize(
    "claims",
    [{"htu": ["x"]}, {"htm": {"a": 1}}, {"jti": ["a"]}, {"iat": [1]}, {"sub": 5}, {"htu": 7}],
)
def test_odd_claims_are_refused_not_crashed_on(
    key: DpopKey, store: MemoryStore, claims: dict[str, Any]
) -> None:
    with pytest.raises(ProofRejected):
        check(key.proof(**claims), store)


def _rsa_jwk(bits: int, e: int) -> dict[str, Any]:
    """An RSA public JWK with modulus size ``bits`` and exponent ``e`` (only the header's jwk:
    the proof is refused before any signature is checked)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = (
        rsa.generate_private_key(public_exponent=65537, key_size=bits)
        .public_key()
        .public_numbers()
        .n
    )

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"kty": "RSA", "n": b64(n), "e": b64(e)}


@pytest.mark.parametrize(
    ("bits", "e"),
    [(3072, (1 << 3070) + 1), (2048, (1 << 40) + 1), (8192, 65537)],
    ids=["huge exponent", "exponent over 32 bits", "modulus over 4096 bits"],
)
def test_rsa_keys_that_cost_too_much_to_verify_are_refused(
    store: MemoryStore, bits: int, e: int
) -> None:
    # One verification with a 3070-bit exponent costs ~20x a normal one: before the subject
    # token is verified, for anyone who knows a public client_id. Refused before verifying.
    key = DpopKey("RS256", clock=lambda: T0)
    rejected(key.proof(headers={"jwk": _rsa_jwk(bits, e)}), store, "dpop_jwk")


@pytest.mark.parametrize(
    "extra", [{"alg": "RS256"}, {"use": "enc"}, {"key_ops": ["encrypt"]}], ids=str
)
def test_a_jwk_that_contradicts_the_proof_is_refused(
    key: DpopKey, store: MemoryStore, extra: dict[str, Any]
) -> None:
    rejected(key.proof(headers={"jwk": {**key.jwk, **extra}}), store, "dpop_jwk")


def test_a_padded_jwk_member_is_refused(key: DpopKey, store: MemoryStore) -> None:
    # The same key with '=' padding would have another thumbprint (RFC 7638 hashes the
    # members as sent): only the canonical base64url form binds.
    padded = {**key.jwk, "x": key.jwk["x"] + "="}
    rejected(key.proof(headers={"jwk": padded}), store, "dpop_jwk")


def test_a_cnf_with_another_confirmation_besides_jkt_is_refused() -> None:
    with pytest.raises(ValueError, match="besides jkt"):
        bound_jkt({"cnf": {"jkt": "abc", "x5t#S256": "def"}})
    assert bound_jkt({"cnf": {"jkt": "abc"}}) == "abc"


def _flip_spare_bit(member: str) -> str:
    """The same octets in non-canonical base64url: the last character's spare bit set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return member[:-1] + alphabet[alphabet.index(member[-1]) ^ 1]


def _leading_zero(member: str) -> str:
    octets = base64.urlsafe_b64decode(member + "=" * (-len(member) % 4))
    return base64.urlsafe_b64encode(b"\0" + octets).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
@pytest.mark.parametrize("spoil", [_flip_spare_bit, _leading_zero])
def test_a_jwk_in_non_canonical_base64url_is_refused(
    store: MemoryStore, alg: str, spoil: Callable[[str], str], clock: ManualClock
) -> None:
    """Such a member decodes to the same key, but its thumbprint is not the key's RFC 7638
    thumbprint: cnf.jkt would name a key no verifier computes."""
    key = DpopKey(alg, clock=clock)
    member = "n" if alg.startswith("RS") else "x"
    spoiled = {**key.jwk, member: spoil(key.jwk[member])}
    rejected(key.proof(headers={"jwk": spoiled}), store, "dpop_jwk")
    assert check(key.proof(), store).jkt == key.jkt


@pytest.mark.parametrize("nonce", ["é", "nonce-☃", "\udcff", "", 5, None])
def test_a_nonce_that_is_not_ours_is_refused_whatever_its_characters(
    store: MemoryStore, clock: ManualClock, key: DpopKey, nonce: Any
) -> None:
    nonces = Nonces(store, lifetime=300, clock=clock)
    assert not nonces.accepts(nonce)
    with pytest.raises(NonceRequired):
        check(key.proof(nonce=nonce), store, nonces=nonces)
    assert nonces.accepts(nonces.current())
