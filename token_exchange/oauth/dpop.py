"""DPoP proofs (RFC 9449): checking the ``DPoP`` header of a request, HTTP-free.

``verify_proof`` follows RFC 9449 §4.3 step by step: exactly one header holding one JWT, ``typ``
``dpop+jwt``, an asymmetric ``alg`` we accept, a public ``jwk`` header that verifies the
signature, ``htm`` and ``htu`` naming this request (URIs compared after RFC 3986 §6.2.2 and
§6.2.3 normalisation, without query and fragment), an ``iat`` within the window and a ``jti``
used once, which the store remembers for every replica (``Store.add``, a ``SET NX``). It
returns the ``Proof`` (its key's RFC 7638 thumbprint, the ``jkt`` that binds tokens, §6) or
raises ``ProofRejected``; ``StoreUnavailable`` passes through (the caller fails closed).
Both the token endpoint and the downstream verifier use it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from math import isfinite
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import OAuthError
from .jose import MIN_RSA_BITS, thumbprint
from .tokens import TokenRejected, parse_unverified

#: RFC 9449 §4.2: the ``typ`` of a proof.
PROOF_TYP = "dpop+jwt"
#: Algorithms we accept in proofs unless configured otherwise (asymmetric only, §4.3 step 5).
DEFAULT_ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
#: Upper bound on a proof's size: a proof with an RSA-4096 key is about 1.5 KiB.
MAX_PROOF_LENGTH = 8 * 1024
#: Upper bound on a ``jti``: RFC 9449 §4.2 asks for 96 bits of randomness; 256 characters leave
#: room for any encoding and keep the replay key space bounded.
MAX_JTI_LENGTH = 256
#: JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4;
#: RFC 8037 §2): a proof carrying one is refused (§4.3 step 7).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: What each algorithm's key must be: key type, and the curves allowed (RFC 7518 §3.4, RFC 8037).
KEY_TYPES: Mapping[str, tuple[str, frozenset[str] | None]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
#: The public members of each key type, which must be canonical base64url (RFC 7518 §6).
KEY_MEMBERS: Mapping[str, tuple[str, ...]] = {"EC": ("x", "y"), "RSA": ("n", "e"), "OKP": ("x",)}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
#: RSA proof keys: the sizes a client uses, and a public exponent that keeps verifying cheap.
MAX_RSA_BITS = 4096
MAX_RSA_EXPONENT = 2**32
#: The store key of a used proof: namespaced and versioned by the store, hashed (the caller
#: wrote jti and htu).
REPLAY_KEY = "dpop:jti:{}"
DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class Store(Protocol):
    """What DPoP needs of the shared store (``store.Store`` is one): single-use markers and
    the nonce of each period, agreed by every replica."""

    def get(self, key: str) -> bytes | None: ...

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` only if ``key`` is absent, atomically; True when it was stored."""
        ...


class ProofRejected(Exception):
    """The DPoP proof is not acceptable; ``reason`` is our own wording, safe to show."""

    def __init__(self, reason: str, *, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        #: A bounded code for the audit log.
        self.code = code


class InvalidDpopProof(OAuthError):
    """RFC 9449 §5: the token endpoint's answer to a missing (when required) or bad proof."""

    error = "invalid_dpop_proof"
    default_reason = "dpop_invalid"


class NonceRequired(ProofRejected):
    """The proof lacks the server's current nonce (RFC 9449 §8): the client retries with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="use_dpop_nonce")


class UseDpopNonce(OAuthError):
    """RFC 9449 §8: 400 ``use_dpop_nonce`` with the nonce to use in ``DPoP-Nonce``."""

    error = "use_dpop_nonce"
    default_reason = "use_dpop_nonce"
    #: Normal operation, met by every client at each new nonce: not a failed request of its
    #: address (rate_limits.failures_per_address).
    counts_as_failure = False

    def __init__(self, description: str, *, nonce: str) -> None:
        super().__init__(description)
        self.nonce = nonce

    def response_headers(self) -> list[tuple[str, str]]:
        return [("DPoP-Nonce", self.nonce)]


#: The store key of the nonce of one period (its number).
NONCE_KEY = "dpop:nonce:{}"


class Nonces:
    """Server-provided nonces (RFC 9449 §8), the same on every replica that shares ``store``.

    Time is cut into periods of ``lifetime`` seconds; the first replica to need the nonce of
    a period draws a random one and stores it if absent (``Store.add``), so all agree on it.
    A proof may carry the current period's nonce or the previous one's, so a nonce is good for
    ``lifetime`` to ``2 * lifetime`` seconds. Each period's nonce is read from the store once
    per process. ``StoreUnavailable`` passes through.
    """

    def __init__(
        self,
        store: Store,
        *,
        lifetime: int,
        clock: Callable[[], float],
        reset_nonce: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.lifetime = lifetime
        self.clock = clock
        #: After the store lost its data, the nonce that proves a proof was made since
        #: (``epoch.StoreEpoch.reset_nonce``): handed out and accepted while it is needed.
        self.reset_nonce = reset_nonce
        self._known: dict[int, str] = {}
        self._lock = threading.Lock()

    def current(self) -> str:
        """The nonce to hand out now (``DPoP-Nonce``)."""
        reset = self.reset_nonce()
        if reset is not None:
            return reset
        return self._of(int(self.clock() // self.lifetime))

    def accepts(self, nonce: Any) -> bool:
        period = int(self.clock() // self.lifetime)
        if not isinstance(nonce, str) or not nonce:
            return False
        reset = self.reset_nonce()
        if reset is not None and secrets.compare_digest(nonce.encode(), reset.encode()):
            return True
        # compare_digest: the time a comparison takes must not tell how much of it was right.
        # As bytes: it refuses str with non-ASCII characters (surrogatepass: any str encodes).
        given = nonce.encode("utf-8", "surrogatepass")
        return any(
            secrets.compare_digest(given, self._of(p).encode()) for p in (period, period - 1)
        )

    def _of(self, period: int) -> str:
        known = self._known.get(period)
        if known is not None:
            return known
        key = NONCE_KEY.format(period)
        drawn = secrets.token_urlsafe(24)
        # Kept until the period after it has ended; then nobody accepts it any more.
        ttl = 2 * self.lifetime + 1
        stored = self.store.get(key)
        if stored is None:
            self.store.add(key, drawn.encode(), ttl)
            stored = self.store.get(key)
        value = stored.decode() if stored is not None else drawn
        with self._lock:
            self._known = {p: v for p, v in self._known.items() if p >= period - 1}
            self._known[period] = value
        return value


@dataclass(frozen=True)
class Proof:
    """A verified DPoP proof."""

    #: RFC 7638 SHA-256 thumbprint of the proof's key: ``cnf.jkt`` of what it binds (§6.1).
    jkt: str
    claims: Mapping[str, Any]

    @property
    def ath(self) -> str | None:
        """The hash of the access token the proof was made for, if it names one (§4.2)."""
        ath = self.claims.get("ath")
        return ath if isinstance(ath, str) else None


def token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url (no padding) of the SHA-256 of the token's ASCII."""
    digest = hashlib.sha256(token.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def bound_jkt(claims: Mapping[str, Any]) -> str | None:
    """The ``cnf.jkt`` a token is bound to (RFC 9449 §6.1), if any.

    Raises ``ValueError`` for a ``cnf`` we cannot check (not an object, a ``jkt`` that is no
    string, or another confirmation method only, such as mTLS ``x5t#S256``): such a token is
    bound to something we cannot verify, and must not pass for a bearer token.
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise ValueError("cnf is not an object")
    jkt = cnf.get("jkt")
    if jkt is None:
        raise ValueError("cnf has no jkt")
    if set(cnf) != {"jkt"}:
        # Bound another way as well (mTLS x5t#S256, ...): checking the DPoP key alone would
        # silently drop the other binding.
        raise ValueError("cnf binds the token in a way besides jkt")
    if not isinstance(jkt, str) or not jkt:
        raise ValueError("cnf.jkt is not a string")
    return jkt


def normalize_uri(uri: str) -> str | None:
    """``uri`` without query and fragment, normalised per RFC 3986 §6.2.2 (case of scheme,
    host and percent-encodings; unreserved characters decoded) and §6.2.3 (default port and
    empty path); None when it is no absolute http(s) URI or carries user information."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = _PERCENT.sub(_normalize_escape, parts.path) or "/"
    return f"{scheme}://{host}{path}"


def _normalize_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def verify_proof(
    values: Iterable[str],
    *,
    method: str,
    url: str,
    now: float,
    replay: Store,
    algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
    window: int = 60,
    nonces: Nonces | None = None,
) -> Proof:
    """Check the ``DPoP`` header ``values`` of a ``method`` request to ``url`` (RFC 9449 §4.3).

    ``window``: seconds ``iat`` may be off ``now``, either way; a used ``jti`` is remembered
    in ``replay`` for as long as its proof could be accepted. With ``nonces``, the proof must
    carry one of theirs (``NonceRequired`` otherwise). Raises ``ProofRejected``, or
    ``StoreUnavailable`` when the replay or nonce check cannot be made.
    """
    # Step 1: one header. A server joins repeated header lines with commas, and a compact JWS
    # has no comma, so a comma is a second header (or garbage).
    given = [part.strip() for value in values for part in value.split(",")]
    if len(given) != 1:
        raise ProofRejected("exactly one DPoP header is required", code="dpop_headers")
    proof = given[0]
    # Step 2: one well-formed JWS.
    if len(proof) > MAX_PROOF_LENGTH or proof.count(".") != 2:
        raise ProofRejected("the DPoP proof is not a signed JWT", code="dpop_malformed")
    try:
        # Header and claims parsed as RFC 8259 JSON (no NaN, duplicate names, deep nesting).
        header = parse_unverified(proof).header
    except TokenRejected:
        raise ProofRejected("the DPoP proof is not a signed JWT", code="dpop_malformed") from None
    # Step 4: typ (media types compare case-insensitively, RFC 7515 §4.1.9).
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != PROOF_TYP:
        raise ProofRejected(f"the DPoP proof's typ must be {PROOF_TYP}", code="dpop_typ")
    # Step 5: an asymmetric algorithm that we accept, from our list, never from the proof alone.
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in KEY_TYPES:
        raise ProofRejected("the DPoP proof's alg is not accepted", code="dpop_alg")
    key, jwk = _public_key(header.get("jwk"), alg)
    # Steps 3 and 6: the signature, with the proof's own key, and the claims it must have.
    try:
        # Every option spelled out: the proof is no access token (no iss, aud, exp); iat is
        # checked below against our clock.
        claims: dict[str, Any] = jwt.decode(
            proof,
            key=key,
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_iss": False,
                "verify_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_jti": False,
                "require": ["jti", "htm", "htu", "iat"],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.MissingRequiredClaimError as e:
        raise ProofRejected(f"the DPoP proof lacks {e.claim}", code="dpop_claim") from None
    except jwt.InvalidSignatureError:
        raise ProofRejected(
            "the DPoP proof's signature is invalid", code="dpop_signature"
        ) from None
    except (jwt.PyJWTError, ValueError):
        raise ProofRejected("the DPoP proof is invalid", code="dpop_invalid") from None
    jti, htm, htu, iat = (claims.get(n) for n in ("jti", "htm", "htu", "iat"))
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise ProofRejected("the DPoP proof's jti is invalid", code="dpop_claim")
    # Step 8: the method, as sent (methods are case-sensitive, RFC 9110 §9.1).
    if htm != method:
        raise ProofRejected("the DPoP proof is for another method (htm)", code="dpop_htm")
    # Step 9: the URI, without query and fragment.
    target = normalize_uri(url)
    if not isinstance(htu, str) or target is None or normalize_uri(htu) != target:
        raise ProofRejected("the DPoP proof is for another URI (htu)", code="dpop_htu")
    # Step 10: the nonce we handed out, when we hand them out.
    if nonces is not None and not nonces.accepts(claims.get("nonce")):
        raise NonceRequired("the DPoP proof must carry the nonce given in DPoP-Nonce")
    # Step 11: created within the window (NaN would pass every comparison).
    if (
        isinstance(iat, bool)
        or not isinstance(iat, int | float)
        or not isfinite(iat)
        or abs(iat - now) > window
    ):
        raise ProofRejected("the DPoP proof's iat is outside the window", code="dpop_iat")
    ath = claims.get("ath")
    if ath is not None and not isinstance(ath, str):
        raise ProofRejected("the DPoP proof's ath is invalid", code="dpop_claim")
    # §11.1: each proof once, for the time it could be accepted (iat +- window), on every
    # replica. Keyed by jti and htu: the same jti for another URI is another proof.
    digest = hashlib.sha256(f"{jti}\n{target}".encode()).hexdigest()
    if not replay.add(REPLAY_KEY.format(digest), b"1", ttl=2 * window + 1):
        raise ProofRejected("the DPoP proof has been used before (jti)", code="dpop_replay")
    return Proof(jkt=thumbprint(jwk), claims=claims)


def _public_key(jwk: Any, alg: str) -> tuple[jwt.PyJWK, dict[str, Any]]:
    """The proof's ``jwk`` header as a key for ``alg``: public, of the algorithm's type."""
    if not isinstance(jwk, dict):
        raise ProofRejected("the DPoP proof has no jwk header", code="dpop_jwk")
    # Step 7: a private key in the header is a leaked key; refuse rather than ignore it.
    if PRIVATE_MEMBERS & jwk.keys():
        raise ProofRejected("the DPoP proof's jwk must be a public key", code="dpop_jwk")
    kty, curves = KEY_TYPES[alg]
    crv = jwk.get("crv")
    if jwk.get("kty") != kty or (
        curves is not None and (not isinstance(crv, str) or crv not in curves)
    ):
        raise ProofRejected("the DPoP proof's jwk does not fit its alg", code="dpop_jwk")
    # A key that says it is for something else, or members in another encoding than the
    # canonical base64url (a padded one would hash to another thumbprint), are refused.
    ops = jwk.get("key_ops")
    if (
        jwk.get("alg", alg) != alg
        or jwk.get("use", "sig") != "sig"
        or (ops is not None and (not isinstance(ops, list) or "verify" not in ops))
        or not all(
            isinstance(jwk.get(m), str) and _BASE64URL.fullmatch(jwk[m]) for m in KEY_MEMBERS[kty]
        )
    ):
        raise ProofRejected("the DPoP proof's jwk does not fit its alg", code="dpop_jwk")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
        # The members as RFC 7518 writes them for this key. base64url leaves the last
        # character's spare bits free and RSA's n and e may carry leading zero octets: such a
        # member decodes to the same key, yet its thumbprint is not the key's (RFC 7638 §3.3).
        canonical = key.Algorithm.to_jwk(key.key, as_dict=True)
        jkt = thumbprint(jwk)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise ProofRejected("the DPoP proof's jwk is invalid", code="dpop_jwk") from None
    if not jkt or any(jwk[m] != canonical.get(m) for m in KEY_MEMBERS[kty]):
        raise ProofRejected("the DPoP proof's jwk is invalid", code="dpop_jwk")
    public = key.key
    if isinstance(public, rsa.RSAPublicKey) and (
        not MIN_RSA_BITS <= public.key_size <= MAX_RSA_BITS
        or public.public_numbers().e > MAX_RSA_EXPONENT
    ):
        # Anyone who knows a public client_id can send a proof: a key that is slow to verify
        # with (a huge exponent or modulus costs ~20x a normal one) is refused before it is.
        raise ProofRejected("the DPoP proof's jwk is not an acceptable RSA key", code="dpop_jwk")
    return key, jwk
