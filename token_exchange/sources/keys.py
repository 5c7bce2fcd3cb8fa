"""Our signing keys: files, lifecycle states, the public JWKS and the signer.

A key lives in ``keys_dir`` as two files: ``key-<kid>.pem`` (PKCS#8 private key, mode 0600)
and ``key-<kid>.json`` (algorithm, ``kid`` and the times the key is published, starts signing,
stops signing and is withdrawn). The ``key-`` prefix keeps a file name from starting with ``-``
(a base64url ``kid`` does about once in 64 keys), which ``rm`` and ``chmod`` would take for an
option; files named ``<kid>.pem``/``<kid>.json`` (written before the prefix) are still read, and
``rotate`` and ``retire`` rename them. A key's state at any moment follows from those times
alone, so every replica reading the same directory agrees without talking to the others::

    pending -> published -> active -> draining -> withdrawn
              (in JWKS)    (signs)    (in JWKS)

``STATES`` defines each state.

``kid`` is the RFC 7638 JWK thumbprint of the public key.

Rotation (``rotate``) publishes the next key at once and lets it sign only after every verifier
has had time to refetch our JWKS (its ``max-age`` plus a margin); the current key stops signing
at that moment and stays published until every token it signed has expired (the longest token
lifetime plus the JWKS ``max-age``). A running service re-reads the directory when its files
change, so every replica follows the same timeline with no coordination.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shlex
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..config.settings import SIGNING_ALGORITHMS
from ..oauth.clock import Clock
from ..oauth.jose import MIN_RSA_BITS, THUMBPRINT_MEMBERS, thumbprint
from ..oauth.profile import ACCESS_TOKEN_TYP
from ..obs.logs import event

log = logging.getLogger(__name__)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

DEFAULT_RSA_BITS = 3072
#: Added to the JWKS max-age before a new key signs: reload latency, clock skew, slow caches.
ROTATION_MARGIN = 60
MAX_ROTATION_DELAY = 30 * 86_400


#: Every state a key can be in, in lifecycle order, with its meaning (shown by ``keys list``).
STATES: Mapping[str, str] = {
    "pending": "not yet published: not in the JWKS, does not sign",
    "published": "in the JWKS, does not sign yet (the next key, waiting for verifiers' caches)",
    "active": "in the JWKS and signs new tokens (the newest active key signs)",
    "draining": "in the JWKS, no longer signs: verifies the tokens it signed until they expire",
    "withdrawn": "not in the JWKS: tokens it signed no longer verify (rotated out, or retired)",
}
#: Key files are ``key-<kid>.pem`` and ``key-<kid>.json``: never a name that starts with ``-``.
KEY_FILE_PREFIX = "key-"


class KeyStoreError(Exception):
    """The key directory cannot be used; the message says why and what to do."""


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public members of ``key`` as a JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2)."""
    public = key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {m: jwk[m] for m in THUMBPRINT_MEMBERS[jwk["kty"]]}


def generate_private_key(alg: str, *, rsa_bits: int = DEFAULT_RSA_BITS) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg} (use {', '.join(SIGNING_ALGORITHMS)})")


def _matches_alg(key: PrivateKey, alg: str) -> bool:
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    if alg in ("RS256", "PS256"):
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS
    return alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey)


@dataclass(frozen=True)
class SigningKey:
    """A private key with its lifecycle times (seconds since the epoch)."""

    alg: str
    private_key: PrivateKey = field(repr=False)
    publish_at: float
    activate_at: float
    deactivate_at: float | None = None
    withdraw_at: float | None = None
    created_at: float = 0.0
    jwk: Mapping[str, Any] = field(init=False, repr=False)
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        jwk = public_jwk(self.private_key)
        kid = thumbprint(jwk)
        object.__setattr__(self, "kid", kid)
        object.__setattr__(self, "jwk", {**jwk, "kid": kid, "alg": self.alg, "use": "sig"})

    def state(self, now: float) -> str:
        if self.withdraw_at is not None and now >= self.withdraw_at:
            return "withdrawn"
        if now < self.publish_at:
            return "pending"
        if self.deactivate_at is not None and now >= self.deactivate_at:
            return "draining"
        if now >= self.activate_at:
            return "active"
        return "published"

    def metadata(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": _iso(self.created_at),
            "publish_at": _iso(self.publish_at),
            "activate_at": _iso(self.activate_at),
            "deactivate_at": _iso(self.deactivate_at),
            "withdraw_at": _iso(self.withdraw_at),
        }


class KeyStore(Protocol):
    def signing_key(self) -> SigningKey:
        """The key to sign with now; raises ``KeyStoreError`` when there is none."""
        ...

    def published(self) -> list[SigningKey]:
        """Keys whose public half belongs in our JWKS now."""
        ...


class MemoryKeyStore:
    """Keys held in memory (development mode, tests)."""

    def __init__(self, keys: Iterable[SigningKey], *, clock: Clock = time.time) -> None:
        self.keys = list(keys)
        self.clock = clock

    def signing_key(self) -> SigningKey:
        return select_signing_key(self.keys, self.clock())

    def published(self) -> list[SigningKey]:
        return select_published(self.keys, self.clock())


class DirectoryKeyStore(MemoryKeyStore):
    """Keys read from ``keys_dir`` and re-read when its files change (see the module docstring).

    The directory is looked at no more than once per ``reload_interval`` seconds. A change that
    cannot be loaded (a half-copied file, a corrupt key) is logged and the last good keys stay.
    """

    def __init__(
        self,
        keys_dir: Path,
        *,
        clock: Clock = time.time,
        reload_interval: float = 2.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.keys_dir = keys_dir
        self.reload_interval = reload_interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(keys_dir)
        keys, self.warnings = load_keys(keys_dir)
        self._next_check = monotonic() + reload_interval
        super().__init__(keys, clock=clock)

    def signing_key(self) -> SigningKey:
        self._maybe_reload()
        return super().signing_key()

    def published(self) -> list[SigningKey]:
        self._maybe_reload()
        return super().published()

    def _maybe_reload(self) -> None:
        if self.monotonic() < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = self.monotonic() + self.reload_interval
            fingerprint = _fingerprint(self.keys_dir)
            if fingerprint == self._fingerprint:
                return
            try:
                keys, warnings = load_keys(self.keys_dir)
            except KeyStoreError as e:
                # Not remembered as loaded: the next look tries again, even if nothing changed
                # that the fingerprint sees (a permission fixed, a mount that came back).
                event(log, "signing_keys_reload_failed", level=logging.ERROR, reason=str(e))
                return
            self._fingerprint = fingerprint
            self.keys = keys
            for warning in warnings:
                event(log, "signing_key_warning", level=logging.WARNING, warning=warning)
            event(log, "signing_keys_reloaded", kids=[k.kid for k in keys])
        finally:
            self._lock.release()


def _fingerprint(keys_dir: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """Names, inodes, times and sizes of the key files: any change to them changes this."""
    entries = []
    try:
        for path in keys_dir.iterdir():
            if path.suffix in (".json", ".pem"):
                st = path.stat()  # follows symlinks, as in a Kubernetes Secret volume
                entries.append((path.name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(sorted(entries))


def select_signing_key(keys: Iterable[SigningKey], now: float) -> SigningKey:
    """The active key that started signing last: a key never signs before it is published."""
    active = [k for k in keys if k.state(now) == "active"]
    if not active:
        raise KeyStoreError("no signing key is active now")
    return max(active, key=lambda k: (k.activate_at, k.kid))


def require_signing_key(keys: Iterable[SigningKey], now: float, keys_dir: Path) -> SigningKey:
    """``select_signing_key``, with a ``KeyStoreError`` that says what to do when none signs."""
    keys = list(keys)
    try:
        return select_signing_key(keys, now)
    except KeyStoreError:
        raise KeyStoreError(explain_no_signing_key(keys, now, keys_dir)) from None


def explain_no_signing_key(keys: Iterable[SigningKey], now: float, keys_dir: Path) -> str:
    """Why no key in ``keys_dir`` signs at ``now``, and what to do about it."""
    keys = list(keys)
    waiting = sorted(
        (k for k in keys if k.state(now) in ("pending", "published")), key=lambda k: k.activate_at
    )
    if waiting:
        return (
            f"no key in {keys_dir} signs now: {waiting[0].kid} starts signing at "
            f"{display_time(waiting[0].activate_at)}"
        )
    states = sorted({k.state(now) for k in keys})
    return (
        f"no key in {keys_dir} signs now (every key is {' or '.join(states)}): create one that "
        f"signs at once with `token-exchange keys generate --keys-dir {shell_path(keys_dir)}`"
    )


def select_published(keys: Iterable[SigningKey], now: float) -> list[SigningKey]:
    return sorted(
        (k for k in keys if k.state(now) in ("published", "active", "draining")),
        key=lambda k: (k.activate_at, k.kid),
    )


class Signer:
    """Signs claims with the current key of a ``KeyStore`` (keys are parsed once, at load).

    The tokens are exactly those of ``jwt.encode(claims, key, algorithm=alg,
    headers={"kid": kid, "typ": typ})`` (RFC 7515 compact JWS: header members sorted, JSON
    without spaces); only the work that is the same for every token (the header segment, the
    algorithm object, the key checks) is done once per key instead of once per token. The
    signature is cryptography's: ES256 through one prepared ECDSA-SHA256 object, as RFC 7518
    §3.4 ``r || s``; the other algorithms through PyJWT's algorithm objects.
    """

    #: Prepared keys kept; a key store rotates through a handful at most.
    MAX_PREPARED = 16

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._prepared: dict[tuple[int, str], tuple[SigningKey, bytes, Callable[[bytes], bytes]]]
        self._prepared = {}

    def sign(
        self, claims: Mapping[str, Any], *, typ: str = ACCESS_TOKEN_TYP
    ) -> tuple[str, SigningKey]:
        key = self.keys.signing_key()
        prepared = self._prepared.get((id(key), typ))
        # The entry holds the key itself, so its id cannot be reused by another key meanwhile.
        if prepared is None or prepared[0] is not key:
            prepared = self._prepare(key, typ)
        _, header, signature_of = prepared
        if "iss" in claims and not isinstance(claims["iss"], str):
            raise TypeError("Issuer (iss) must be a string.")  # as jwt.encode
        payload = _JSON.encode(claims if isinstance(claims, dict) else dict(claims)).encode()
        signing_input = header + _b64(payload)
        return (signing_input + b"." + _b64(signature_of(signing_input))).decode("ascii"), key

    def _prepare(
        self, key: SigningKey, typ: str
    ) -> tuple[SigningKey, bytes, Callable[[bytes], bytes]]:
        algorithm = jwt.get_algorithm_by_name(key.alg)
        prepared_key = algorithm.prepare_key(key.private_key)
        # jwt.encode (2.11+) warns about a short key; we never sign with one.
        check_key_length = getattr(algorithm, "check_key_length", None)
        if check_key_length is not None and (why := check_key_length(prepared_key)):
            raise KeyStoreError(f"signing key {key.kid}: {why}")
        header = {"typ": typ, "alg": key.alg, "kid": key.kid}
        encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        signature_of = _signature_function(key.alg, algorithm, prepared_key)
        prepared = (key, _b64(encoded) + b".", signature_of)
        if len(self._prepared) >= self.MAX_PREPARED:
            self._prepared.clear()
        self._prepared[(id(key), typ)] = prepared
        return prepared


#: RFC 7519 §7.1 claims are RFC 8259 JSON: a token with NaN in it is one no JOSE library reads
#: (jose refuses it), so signing one fails (``ValueError``) rather than mint it.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _signature_function(alg: str, algorithm: Algorithm, key: Any) -> Callable[[bytes], bytes]:
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8

        def es256(signing_input: bytes) -> bytes:
            # RFC 7518 §3.4: the JWS signature is r and s, each as a fixed-size big-endian
            # integer, not the DER structure cryptography returns.
            r, s = decode_dss_signature(key.sign(signing_input, _ECDSA_SHA256))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return es256
    return lambda signing_input: algorithm.sign(signing_input, key)


def _b64(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# --------------------------------------------------------------------------------------------
# Files


def load_keys(keys_dir: Path) -> tuple[list[SigningKey], list[str]]:
    """Read every key pair in ``keys_dir``; return the keys and warnings (loose permissions).

    Raises ``KeyStoreError`` naming every unreadable or inconsistent file.
    """
    names = key_file_names(keys_dir)
    if names is None:
        raise KeyStoreError(
            f"key directory {keys_dir} does not exist: create a key with "
            f"`token-exchange keys generate --keys-dir {shell_path(keys_dir)}`"
        )
    keys: list[SigningKey] = []
    problems: list[str] = []
    warnings: list[str] = []
    denied = False  # a file we may not read: say who must be able to
    for name in sorted(n for n in names if n.endswith(".json")):
        meta_path = keys_dir / name
        if f"{KEY_FILE_PREFIX}{name}" in names:
            continue  # an old-style name that has been renamed (see write_key): the new file wins
        pem_path = meta_path.with_suffix(".pem")
        try:
            key = _load_pair(meta_path, pem_path)
        except _PemError as e:  # named by its own name, not by its .json
            denied = denied or isinstance(e.error, PermissionError)
            problems.append(f"{pem_path.name}: {_why(e.error)}")
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            denied = denied or isinstance(e, PermissionError)
            problems.append(f"{meta_path.name}: {_why(e)}")
            continue
        st = pem_path.stat()
        mode = st.st_mode
        # Readable by our own group is no wider than readable by us (a Kubernetes Secret with
        # fsGroup mounts keys 0440 that way); any other group, or others, is.
        loose = stat.S_IRWXO | (0 if st.st_gid == os.getegid() else stat.S_IRWXG)
        if mode & loose:
            warnings.append(
                f"{pem_path} is readable by group or others (mode {stat.S_IMODE(mode):o}): "
                f"chmod 600 {shell_path(pem_path)}"
            )
        keys.append(key)
    if problems:
        raise KeyStoreError(
            f"unusable key files in {keys_dir}: "
            + "; ".join(problems)
            + (f" ({_READER_HINT.format(uid=os.geteuid())})" if denied else "")
        )
    if not keys:
        raise KeyStoreError(
            f"no signing key in {keys_dir}: create one with "
            f"`token-exchange keys generate --keys-dir {shell_path(keys_dir)}`"
        )
    return keys, warnings


_READER_HINT = (
    "this process runs as uid {uid}: that user must be able to read the key files "
    "(and list and enter their directory); fix their owner or mode, e.g. chown and chmod 600"
)


def key_file_names(keys_dir: Path) -> set[str] | None:
    """The names in ``keys_dir`` (None when it does not exist); ``KeyStoreError`` when it is
    not a directory or cannot be listed, so that a directory we may not read is never taken for
    an empty one."""
    try:
        with os.scandir(keys_dir) as entries:
            return {entry.name for entry in entries}
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise KeyStoreError(
            f"{keys_dir} is not a directory: signing.keys_dir (or --keys-dir) must name the "
            "directory that holds the key files"
        ) from None
    except OSError as e:
        why = e.strerror or type(e).__name__
        hint = _READER_HINT.format(uid=os.geteuid()) if isinstance(e, PermissionError) else ""
        raise KeyStoreError(
            f"key directory {keys_dir} cannot be listed ({why})" + (f": {hint}" if hint else "")
        ) from None


class _PemError(Exception):
    """The ``.pem`` of a pair cannot be read; ``error`` says why."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _why(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, OSError):
        return f"cannot be read ({e.strerror or type(e).__name__})"
    return str(e) or type(e).__name__


def _load_pair(meta_path: Path, pem_path: Path) -> SigningKey:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    alg = meta.get("alg")
    if alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"unsupported alg {alg!r}")
    try:
        pem = pem_path.read_bytes()
    except OSError as e:
        raise _PemError(e) from None
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise ValueError(f"{pem_path.name} is not a PEM private key") from None
    if not isinstance(private_key, PrivateKey) or not _matches_alg(private_key, alg):
        raise ValueError(f"{pem_path.name} does not hold a key for {alg}")
    key = SigningKey(
        alg=alg,
        private_key=private_key,
        created_at=_parse_time(meta.get("created_at")) or 0.0,
        publish_at=_required_time(meta, "publish_at"),
        activate_at=_required_time(meta, "activate_at"),
        deactivate_at=_parse_time(meta.get("deactivate_at")),
        withdraw_at=_parse_time(meta.get("withdraw_at")),
    )
    if meta.get("kid") != key.kid or meta_path.stem not in (key_file_stem(key.kid), key.kid):
        raise ValueError("kid does not match the key's RFC 7638 thumbprint")
    return key


def key_file_stem(kid: str) -> str:
    """The name of ``kid``'s files without the suffix: never starts with ``-``."""
    return f"{KEY_FILE_PREFIX}{kid}"


def shell_path(path: Path) -> str:
    """``path`` as an operator can paste it after ``rm`` or ``chmod`` (never read as an option)."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def new_key(
    alg: str,
    *,
    publish_at: float,
    activate_at: float,
    rsa_bits: int = DEFAULT_RSA_BITS,
) -> SigningKey:
    return SigningKey(
        alg=alg,
        private_key=generate_private_key(alg, rsa_bits=rsa_bits),
        publish_at=publish_at,
        activate_at=activate_at,
        created_at=publish_at,
    )


def generate(
    keys_dir: Path, alg: str, *, now: float, rsa_bits: int = DEFAULT_RSA_BITS
) -> SigningKey:
    """Create a key that signs from ``now`` in a directory where no key signs or is about to
    (none yet, or every key withdrawn or draining); otherwise ``rotate`` is the way."""
    key_file_names(keys_dir)  # one that cannot be listed is not taken for an empty one
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _exclusive(keys_dir):
        names = key_file_names(keys_dir) or set()
        if any(name.endswith(".json") for name in names):
            keys, _ = load_keys(keys_dir)
            live = [k for k in keys if k.state(now) in ("pending", "published", "active")]
            if live:
                raise KeyStoreError(
                    f"{keys_dir} already holds signing keys ({live[0].kid} is "
                    f"{live[0].state(now)}); generate creates a key only where none signs or is "
                    "about to (use `token-exchange keys rotate` for the next one)"
                )
        start = math.floor(now)  # whole seconds, as `keys list` shows them
        key = new_key(alg, publish_at=start, activate_at=start, rsa_bits=rsa_bits)
        write_key(keys_dir, key)
        return key


def rotate(
    keys_dir: Path,
    alg: str,
    *,
    now: float,
    delay: float,
    token_ttl: int,
    jwks_max_age: int,
    rsa_bits: int = DEFAULT_RSA_BITS,
) -> tuple[SigningKey, list[SigningKey]]:
    """Publish a new key now that signs ``delay`` seconds from now; retire the current ones.

    The keys that sign now stop at that moment and stay published ``token_ttl + jwks_max_age``
    longer. Returns the new key and the keys it replaces. Refuses while an earlier rotation has
    not finished (a published key that does not sign yet).
    """
    with _exclusive(keys_dir):
        keys, _ = load_keys(keys_dir)
        waiting = [k for k in keys if k.state(now) in ("pending", "published")]
        if waiting:
            raise KeyStoreError(
                f"a rotation is already under way: {waiting[0].kid} starts signing at "
                f"{display_time(waiting[0].activate_at)}"
            )
        # Nothing to hand over from (every key retired): the new key signs at once.
        signing = any(k.state(now) == "active" for k in keys)
        if not (math.isfinite(delay) and 0 <= delay <= MAX_ROTATION_DELAY):
            raise KeyStoreError(f"the delay must be between 0 and {MAX_ROTATION_DELAY} seconds")
        # Whole seconds, as `keys list` shows them; rounded the safe way (a later switch),
        # except that --delay 0 (the first step of replacing a leaked key) switches now.
        start = math.floor(now)
        switch_at = math.ceil(now + delay) if signing and delay > 0 else start
        key = new_key(alg, publish_at=start, activate_at=switch_at, rsa_bits=rsa_bits)
        replaced = []
        for old in keys:
            if old.state(now) != "active":
                continue
            retired = dataclasses.replace(
                old, deactivate_at=switch_at, withdraw_at=switch_at + token_ttl + jwks_max_age
            )
            replaced.append(retired)
        # The new key first: a crash in between leaves two signing keys, never none.
        write_key(keys_dir, key)
        for retired in replaced:
            write_key(keys_dir, retired)
        replaced_kids = {k.kid for k in replaced}
        _rename_old_files(keys_dir, [k for k in keys if k.kid not in replaced_kids])
        return key, replaced


def retire(keys_dir: Path, kid: str, *, now: float, force: bool = False) -> SigningKey:
    """Withdraw key ``kid`` now: it stops signing and leaves the JWKS at once.

    The emergency path (a leaked key): tokens it signed stop verifying wherever verifiers
    refetch our JWKS. Refuses, unless ``force``, when no other key would be left to sign.
    """
    with _exclusive(keys_dir):
        return _retire(keys_dir, kid, now, force)


def _retire(keys_dir: Path, kid: str, now: float, force: bool) -> SigningKey:
    keys, _ = load_keys(keys_dir)
    target = next((k for k in keys if k.kid == kid), None)
    if target is None:
        raise KeyStoreError(f"no key {kid} in {keys_dir}")
    at = math.floor(now)  # whole seconds, as `keys list` shows them
    retired = dataclasses.replace(
        target,
        deactivate_at=min(target.deactivate_at or at, at),
        withdraw_at=min(target.withdraw_at or at, at),
    )
    changed = [retired]
    if target.state(now) in ("pending", "published"):
        # A successor that never signed: the keys it was to replace keep signing.
        for key in keys:
            if key.state(now) == "active" and key.deactivate_at == target.activate_at:
                changed.append(dataclasses.replace(key, deactivate_at=None, withdraw_at=None))
    after = {k.kid: k for k in keys} | {k.kid: k for k in changed}
    if not force and (gap := first_gap(list(after.values()), now)) is not None:
        raise KeyStoreError(
            f"retiring {kid} leaves a time when no key would sign ({display_time(gap)}): every "
            "exchange would fail. Rotate with --delay 0 first, or pass --force"
        )
    for key in changed:
        write_key(keys_dir, key)
    changed_kids = {k.kid for k in changed}
    _rename_old_files(keys_dir, [k for k in keys if k.kid not in changed_kids])
    return retired


def _rename_old_files(keys_dir: Path, keys: Iterable[SigningKey]) -> None:
    """Rewrite keys still named ``<kid>.*`` (before ``key-``) under their new names."""
    for key in keys:
        if (keys_dir / f"{key.kid}.json").exists():
            write_key(keys_dir, key)


@contextlib.contextmanager
def _exclusive(keys_dir: Path) -> Iterator[None]:
    """One change to a key directory at a time (two cron jobs, an operator and a job)."""
    try:
        handle = (keys_dir / ".lock").open("a")
    except OSError as e:
        raise KeyStoreError(f"cannot lock {keys_dir} ({e.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyStoreError(f"another change to {keys_dir} is in progress") from None
        yield


def first_gap(keys: list[SigningKey], now: float) -> float | None:
    """The first moment from ``now`` on at which no key would sign, or None."""
    moments = {now} | {
        t
        for k in keys
        for t in (k.publish_at, k.activate_at, k.deactivate_at, k.withdraw_at)
        if t is not None and t > now
    }
    for moment in sorted(moments):
        if not any(k.state(moment) == "active" for k in keys):
            return moment
    return None


def write_key(keys_dir: Path, key: SigningKey) -> Path:
    """Write ``key`` as ``key-<kid>.pem`` (0600) and ``key-<kid>.json``, each atomically.

    Files of the same key under the old names (``<kid>.*``) are removed afterwards: readers
    prefer the new names meanwhile.
    """
    meta = json.dumps(key.metadata(), indent=2).encode() + b"\n"  # fails before writing anything
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    stem = key_file_stem(key.kid)
    _write_atomic(keys_dir / f"{stem}.pem", pem, mode=0o600)
    path = keys_dir / f"{stem}.json"
    _write_atomic(path, meta, mode=0o644)
    # The metadata first: a reader never finds an old-style .json without its .pem.
    for suffix in (".json", ".pem"):
        (keys_dir / f"{key.kid}{suffix}").unlink(missing_ok=True)
    return path


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    # Readers (other replicas) must never see a half-written file: write aside, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def display_time(t: float | None) -> str:
    """``t`` as whole-second UTC ISO 8601 (``2026-12-01T21:00:00Z``), or ``-`` for none."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(math.floor(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("times must be RFC 3339 strings")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("times must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return parsed.timestamp()


def _required_time(meta: Mapping[str, Any], name: str) -> float:
    value = _parse_time(meta.get(name))
    if value is None:
        raise ValueError(f"{name} is missing")
    return value
