"""JOSE vocabulary (RFC 7517, RFC 7518, RFC 7638, RFC 8037, RFC 8725): which keys verify which
algorithms, the floor on RSA key sizes, JWK Sets parsed into verification keys, thumbprints.

Pure: no I/O, nothing of ours above this floor. ``jwks.RemoteKeySet`` fetches key sets and
parses them here; so do the configuration (inline ``jwks``), the client registry and the
development issuer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

log = logging.getLogger("token_exchange.sources.jwks")

#: RFC 8725 §3.5 / NIST: RSA keys shorter than this are refused.
MIN_RSA_BITS = 2048
#: Public members per key type (RFC 7518 §6, RFC 8037 §2). Private members are dropped.
_PUBLIC_MEMBERS = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = {"Ed25519", "Ed448"}


class KeyNotFound(Exception):
    """The key set has no usable key for this ``kid`` and algorithm."""


def key_type_for(alg: str) -> str:
    """The JWK ``kty`` that algorithm ``alg`` verifies with (RFC 7518 §3.1, RFC 8037 §3.1)."""
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    raise ValueError(f"unsupported algorithm {alg}")


@dataclass(frozen=True)
class KeySet:
    """An immutable, parsed key set: one ``PyJWK`` per (kid, algorithm) pair it can verify."""

    keys: Mapping[tuple[str | None, str], jwt.PyJWK]
    kids: frozenset[str | None]

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self.keys.get((kid, alg))
        # A token without `kid` is accepted only when exactly one key could have signed it.
        candidates = [k for (_, a), k in self.keys.items() if a == alg]
        return candidates[0] if len(candidates) == 1 else None

    def __len__(self) -> int:
        return len(self.kids)


def parse_jwks(
    document: Any, algorithms: Iterable[str], *, source: str = "", use: str = "sig"
) -> KeySet:
    """Build a ``KeySet`` from a JWKS document, keeping only keys usable with ``algorithms``.

    ``use``: the ``use`` a key must have; ``"sig"`` (the default) also takes a key without one,
    ``"jwt-svid"`` (a SPIFFE bundle's JWT authorities) only keys that say so, never its X.509
    authorities.

    Keys meant for encryption, symmetric keys, short RSA keys and keys whose type or curve does
    not fit the algorithm are skipped; so is a key with a member of the wrong type (a number
    for ``key_ops``, a list for ``crv``), with a ``jwks_key_skipped`` event naming ``source``
    (the issuer or client): one bad key must not cost the others. A document that is not a
    JWKS raises ``ValueError``.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' array")
    keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        if bad := _badly_typed_member(jwk):
            kid = jwk.get("kid")
            # A structured event (logs.event's record): stdlib logging, this floor imports none
            # of ours.
            fields = {"source": source, "kid": kid if isinstance(kid, str) else None, "member": bad}
            log.warning("jwks_key_skipped", extra={"fields": fields})
            continue
        for alg in algorithms:
            key = _usable_key(jwk, alg, use)
            if key is not None:
                keys[(jwk.get("kid"), alg)] = key
    return KeySet(keys=keys, kids=frozenset(kid for kid, _ in keys))


#: The JWK members we read, and the type RFC 7517 §4 and RFC 7518 §6 give each.
_MEMBER_TYPES: Mapping[str, type] = {
    "kty": str, "kid": str, "use": str, "key_ops": list, "alg": str, "crv": str,
    "n": str, "e": str, "x": str, "y": str,
}  # fmt: skip


def _badly_typed_member(jwk: Mapping[str, Any]) -> str | None:
    """The first member we read that has the wrong type (``key_ops``: a list of strings)."""
    for name, kind in _MEMBER_TYPES.items():
        if name in jwk and not isinstance(jwk[name], kind):
            return name
    if not all(isinstance(op, str) for op in jwk.get("key_ops", ())):
        return "key_ops"
    return None


def _usable_key(jwk: dict[str, Any], alg: str, use: str = "sig") -> jwt.PyJWK | None:
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kty != key_type_for(alg):
        return None
    if jwk.get("use", "sig" if use == "sig" else None) != use:
        return None
    if "key_ops" in jwk and "verify" not in jwk["key_ops"]:
        return None
    if "alg" in jwk and jwk["alg"] != alg:
        return None
    if kty == "EC" and jwk.get("crv") != _EC_CURVES.get(alg):
        return None
    if kty == "OKP" and jwk.get("crv") not in _OKP_CURVES:
        return None
    public = {m: jwk[m] for m in _PUBLIC_MEMBERS[kty] if m in jwk}
    try:
        key = jwt.PyJWK({"kty": kty, **public, **({"kid": kid} if kid else {})}, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key.key, rsa.RSAPublicKey):
        if key.key.key_size < MIN_RSA_BITS:
            return None
    elif not isinstance(
        key.key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return None  # a private key slipped through, or a type we do not verify with
    return key


class LocalKeySource:
    """Keys held in this process: always loaded, nothing to fetch."""

    @property
    def loaded(self) -> bool:
        return True

    def ensure_loaded(self) -> bool:
        return True


class StaticKeySource(LocalKeySource):
    """A fixed key set, for keys we hold in-process (the development issuer)."""

    def __init__(self, keyset: KeySet) -> None:
        self.keyset = keyset

    def find_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        key = self.keyset.find(kid, alg)
        if key is None:
            raise KeyNotFound(kid)
        return key


# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
