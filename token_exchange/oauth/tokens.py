"""Signed JWT verification shared by both sides: subject tokens we receive (``upstream``) and
the tokens we mint, as a downstream API checks them (``verify``).

Every check is explicit (RFC 8725): the algorithm allow-list comes from the caller, never from the
token; the key comes only from a ``KeySource`` (the issuer's JWKS), never from ``jku``, ``x5u`` or
``jwk`` headers; ``iss`` must match exactly; ``aud`` must contain an accepted audience; required
claims must be present; ``exp``, ``nbf`` and ``iat`` are checked against an injected clock with a
small leeway.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from math import isfinite
from typing import Any, Protocol

import jwt

from . import strictjson
from .jose import KeyNotFound

#: Upper bound on a token's size; a real Auth0 token is 1-3 KiB.
MAX_TOKEN_LENGTH = 16 * 1024


class KeySource(Protocol):
    """Where an issuer's verification keys come from (``jwks.RemoteKeySet`` or a static set)."""

    @property
    def loaded(self) -> bool: ...

    def ensure_loaded(self) -> bool:
        """Load the keys now if they are not loaded yet; True when they are."""
        ...

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK: ...


class TokenRejected(Exception):
    """The token is not acceptable. ``reason`` is our own wording, safe to show the caller.

    ``code`` is the machine-readable reason for the audit log and metrics, one of ``CODES``.
    """

    def __init__(self, reason: str, *, code: str = "invalid", detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        #: Internal detail for the log (exception class names), never for the caller.
        self.detail = detail
        #: The token's claimed ``iss``, unverified, when it could be read (set by the verifier).
        self.issuer: str | None = None


#: Every ``TokenRejected.code``: a bounded set, fit to be a metric label.
CODES = frozenset(
    {
        "too_large", "malformed", "issuer_untrusted", "type", "algorithm", "unknown_key",
        "missing_claim", "audience", "signature", "invalid", "invalid_claim", "expired",
        "not_yet_valid", "issued_in_future",
    }
)  # fmt: skip


@dataclass(frozen=True)
class JwtPolicy:
    """What a token must satisfy to be accepted from one issuer."""

    #: The exact ``iss``; None: not checked (a SPIFFE JWT-SVID need not carry one).
    issuer: str | None
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    required: tuple[str, ...] = ("iss", "aud", "sub", "exp")
    leeway: int = 30
    #: Required ``typ`` header (a media type, compared case-insensitively), if any.
    typ: str | None = None


@dataclass(frozen=True)
class UnverifiedJwt:
    """A token's header and payload, parsed but not yet trusted."""

    token: str
    header: Mapping[str, Any]
    payload: Mapping[str, Any]


#: A base64url segment as PyJWT reads one: the alphabet, then up to two "=" (which some issuers
#: send; the length checks are in ``_segment``).
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*(={0,2})")
#: The critical header extensions PyJWT understands (RFC 7515 §4.1.11): "b64" (RFC 7797).
_SUPPORTED_CRIT = frozenset({"b64"})


def parse_unverified(token: str) -> UnverifiedJwt:
    """Parse a compact JWS without trusting it, to learn its issuer and key id.

    What PyJWT's own parse accepts (``tests/unit/test_jwt_parse.py`` holds the two equal), read
    once here: ``jwt.decode`` parses the token again when it verifies it, and each parse costs
    about 40 µs for a subject token (PyJWT checks the alphabet a character at a time). And RFC
    8259 JSON only (``strictjson``): what we copy from a token is sent on to others.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("is too large", code="too_large")
    if token.count(".") != 2:
        # Five parts would be a JWE; we accept signed JWTs only.
        raise TokenRejected("is not a signed JWT", code="malformed")
    try:
        header, payload = _parts(*token.split("."))
    except (ValueError, RecursionError) as e:
        raise TokenRejected(
            "is not a well-formed JWT", code="malformed", detail=type(e).__name__
        ) from e
    return UnverifiedJwt(token=token, header=header, payload=payload)


def _parts(header_segment: str, payload_segment: str, signature_segment: str) -> tuple[
    dict[str, Any], dict[str, Any]
]:  # fmt: skip
    """The header and payload of a compact JWS; ``ValueError`` for anything PyJWT refuses."""
    header = strictjson.loads(_segment(header_segment))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    _check_header(header)
    # RFC 7797's unencoded payload needs the payload from elsewhere: not a token of ours.
    if header.get("b64", True) is False:
        raise ValueError("detached payload")
    payload = strictjson.loads(_segment(payload_segment))
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    _segment(signature_segment)
    return header, payload


def _segment(segment: str) -> bytes:
    """One base64url segment decoded, as PyJWT decodes one; ``ValueError`` if it is none."""
    found = _SEGMENT.fullmatch(segment)
    if found is None:
        raise ValueError("not base64url")
    padding = len(found.group(1))
    stripped = segment[: len(segment) - padding]
    if (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise ValueError("bad base64url padding")
    decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    # Canonical only: the bits past the last byte are zero (no two texts for one segment).
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped.encode():
        raise ValueError("not canonical base64url")
    return decoded


def _check_header(header: Mapping[str, Any]) -> None:
    """The header checks PyJWT makes when it reads a token: a string ``kid``, and a ``crit``
    that names only extensions it understands, each present (RFC 7515 §4.1.11)."""
    if "kid" in header and not isinstance(header["kid"], str):
        raise ValueError("kid is not a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise ValueError("crit is not a non-empty list")
        for name in crit:
            if not isinstance(name, str) or name not in _SUPPORTED_CRIT or name not in header:
                raise ValueError("crit names an extension not understood")


def verify_signed(
    unverified: UnverifiedJwt, policy: JwtPolicy, keys: KeySource, now: float
) -> dict[str, Any]:
    """Verify signature and claims of ``unverified`` under ``policy``; return the claims.

    Raises ``TokenRejected``; ``UpstreamUnavailable`` passes through when no keys can be had.
    """
    header = unverified.header
    alg, kid = header.get("alg"), header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected("has an invalid kid header", code="malformed")
    if policy.typ is not None and not media_type_equals(header.get("typ"), policy.typ):
        raise TokenRejected(f"is not of type {policy.typ}", code="type")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        # RFC 8725 §3.1: the allow-list comes from configuration, never from the token.
        raise TokenRejected("uses an algorithm that is not accepted", code="algorithm")
    try:
        key = keys.find_key(kid, alg)
    except KeyNotFound:
        raise TokenRejected(
            "is signed with a key the issuer does not publish", code="unknown_key"
        ) from None
    try:
        # Every option spelled out. Time claims are checked below against our own clock,
        # which tests can replace; PyJWT would read the system clock.
        claims: dict[str, Any] = jwt.decode(
            unverified.token,
            key=key,
            algorithms=[alg],
            issuer=policy.issuer,
            audience=list(policy.audiences),
            options={
                "verify_signature": True,
                "verify_iss": True,
                "verify_aud": True,
                "strict_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": list(policy.required),
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.MissingRequiredClaimError as e:
        raise TokenRejected(f"lacks the required {e.claim} claim", code="missing_claim") from e
    except jwt.InvalidAudienceError as e:
        raise TokenRejected("is not meant for this audience (aud)", code="audience") from e
    except jwt.InvalidIssuerError as e:
        raise TokenRejected("is not from a trusted issuer", code="issuer_untrusted") from e
    except jwt.InvalidSignatureError as e:
        raise TokenRejected("has an invalid signature", code="signature") from e
    except jwt.PyJWTError as e:
        raise TokenRejected("is invalid", detail=type(e).__name__) from e
    check_times(claims, now, policy.leeway)
    sub = claims.get("sub")
    if "sub" in policy.required and (not isinstance(sub, str) or not sub or len(sub) > 255):
        raise TokenRejected("has an invalid sub claim", code="invalid_claim")
    return claims


def check_times(claims: Mapping[str, Any], now: float, leeway: int) -> None:
    """RFC 7519 §4.1.4-4.1.6 with ``leeway`` seconds of clock skew; ``exp`` is required."""
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        # null is no NumericDate (RFC 7519 §2): it would fail the comparisons below. NaN
        # compares false with everything and would pass every one of them.
        if isinstance(value, bool) or not isinstance(value, int | float) or not isfinite(value):
            raise TokenRejected(f"has a non-numeric {name} claim", code="invalid_claim")
    if "exp" not in claims:
        raise TokenRejected("lacks the required exp claim", code="missing_claim")
    if claims["exp"] <= now - leeway:
        raise TokenRejected("has expired", code="expired")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise TokenRejected("is not valid yet (nbf)", code="not_yet_valid")
    if "iat" in claims and claims["iat"] > now + leeway:
        raise TokenRejected("was issued in the future (iat)", code="issued_in_future")


def media_type_equals(value: Any, expected: str) -> bool:
    # RFC 7515 §4.1.9: "application/" may be omitted; media types compare case-insensitively.
    if not isinstance(value, str):
        return False
    normalized: str = value.lower().removeprefix("application/")
    return normalized == expected.lower().removeprefix("application/")
