"""Client identification and authentication at the token endpoint (RFC 6749 §2.3, §3.2.1).

Public clients name themselves with ``client_id`` in the body (method ``none``); confidential
clients authenticate with ``client_secret_basic`` or ``client_secret_post``. The method dispatch
is authlib's ``ClientAuthentication``; we add what it leaves open: one method per request
(RFC 6749 §2.3), Basic credentials decoded strictly and form-urldecoded (§2.3.1), presented
credentials that must be right even for a public client, a body ``client_id`` that must agree
with them, constant-time secret comparison, and a 401 only when the client used the
Authorization header.

``private_key_jwt`` (RFC 7523 §2.2 and §3, OpenID Connect Core §9): the client sends a JWT it
signed with one of its keys (``jwks`` or ``jwks_uri`` in its config) as ``client_assertion``.
authlib's ``JWTBearerClientAssertion`` finds the client by ``sub`` and calls our hooks; the
signature and claims are checked as every JWT here is (``tokens.verify_signed``: the algorithm
from our allow-list, the key from the client's key set), and on top: ``iss`` = ``sub`` =
``client_id``, ``aud`` only our issuer or token endpoint, ``exp`` at most an hour ahead,
and a ``jti`` used once across all replicas (``Store.add``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import ClientAuthentication
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion

from ..config.config_model import CLIENT_ASSERTION_ALGORITHMS
from ..config.settings import ClientSettings
from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.errors import (
    InvalidClient,
    InvalidRequest,
    KeyUnconfirmed,
    TemporarilyUnavailable,
    UpstreamUnavailable,
)
from ..oauth.tokens import JwtPolicy, KeySource, TokenRejected, parse_unverified, verify_signed
from ..sources.store import MemoryStore, Store
from .replay import first_use

_BODY_METHODS = ["client_secret_post", "none"]
PRIVATE_KEY_JWT = "private_key_jwt"
#: RFC 7523 §2.2: the ``client_assertion_type`` of a JWT client assertion.
JWT_BEARER_ASSERTION = JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE
#: The body parameters of RFC 7521 §4.2 that carry a client assertion.
ASSERTION_PARAMETERS = frozenset({"client_assertion", "client_assertion_type"})
#: Longest an assertion may still be valid (``exp`` - now), as Okta and others cap it: its
#: ``jti`` is remembered until then. An hour is what authlib's client sends by default.
MAX_ASSERTION_LIFETIME = 3600
ASSERTION_LEEWAY = 30


def basic_credentials(authorization: str) -> tuple[str, str]:
    """``client_id`` and secret from a Basic Authorization header (RFC 6749 §2.3.1, RFC 7617).

    Raises ``InvalidClient`` (401) for anything that is not well-formed.
    """
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise InvalidClient(
            "malformed Basic credentials",
            used_authorization_header=True,
            reason=reasons.CLIENT_CREDENTIALS_MALFORMED,
        )
    return unquote_plus(client_id), unquote_plus(secret)


class Client:
    """A configured client, in the shape authlib's ``ClientMixin`` expects; ``keys``: its
    public keys when it uses private_key_jwt."""

    def __init__(self, settings: ClientSettings, keys: KeySource | None = None) -> None:
        self.settings = settings
        self.client_id = settings.client_id
        self.keys = keys

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.settings.secret
        if self.settings.type != "confidential" or not secret:
            return False
        # Constant time: the comparison must not reveal how much of a guess was right.
        return hmac.compare_digest(secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.settings.type == "public":
            return method == "none"
        configured = self.settings.token_endpoint_auth_method
        if configured is None:
            return method in ("client_secret_basic", "client_secret_post")
        return method == configured


class _Payload:
    def __init__(self, form: Mapping[str, str]) -> None:
        self.data = form
        self.client_id = form.get("client_id")


class _AuthRequest:
    """The minimal request object authlib's authentication methods read."""

    def __init__(self, headers: Mapping[str, str], form: Mapping[str, str]) -> None:
        self.headers = headers
        self.form = form
        self.payload = _Payload(form)
        self.auth_method: str | None = None


@dataclass(frozen=True)
class _ClientKeys:
    """What ``resolve_client_public_key`` hands to ``process_assertion_claims``."""

    client_id: str
    source: KeySource


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """authlib's RFC 7523 client assertion method, verified our way (see the module docstring).

    ``audiences``: the values ``aud`` may hold (our issuer and token endpoint URL). Every
    refusal is ``InvalidClient`` (401) with our own description; a key set or store that
    cannot be reached is ``TemporarilyUnavailable`` (503).
    """

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(
        self, *, audiences: tuple[str, ...], store: Store, clock: Clock = time.time
    ) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY)
        self.audiences = audiences
        self.store = store
        self.clock = clock
        self.policy = JwtPolicy(
            issuer="",  # per client: its client_id
            audiences=audiences,
            algorithms=CLIENT_ASSERTION_ALGORITHMS,
            required=("iss", "sub", "aud", "exp", "jti"),
            leeway=ASSERTION_LEEWAY,
        )

    def get_audiences(self) -> list[str]:
        return list(self.audiences)

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The unverified header and claims, parsed our way (``tokens.parse_unverified``):
        authlib's own parser lets a deeply nested claim raise ``RecursionError`` (a 500)."""
        try:
            parsed = parse_unverified(assertion)
        except TokenRejected:
            raise _refused("client authentication failed") from None
        return dict(parsed.header), dict(parsed.payload)

    def resolve_client_public_key(self, client: Any) -> _ClientKeys:
        if not isinstance(client, Client) or client.keys is None:
            raise _refused(
                "this client does not authenticate with private_key_jwt",
                reasons.CLIENT_AUTH_METHOD,
            )
        return _ClientKeys(client.client_id, client.keys)

    def process_assertion_claims(self, assertion: str, keys: _ClientKeys) -> dict[str, Any]:
        # RFC 7523 §3 items 1-2 and 4-6 (iss, sub, aud, exp, nbf, iat) and the signature,
        # with the algorithm allow-list (asymmetric only: RFC 8725 §3.1) and the client's keys.
        policy = replace(self.policy, issuer=keys.client_id)
        try:
            claims = verify_signed(parse_unverified(assertion), policy, keys.source, self.clock())
        except TokenRejected as e:
            raise _refused("client assertion " + _REASONS.get(e.code, e.reason)) from None
        except UpstreamUnavailable as e:
            # The client's jwks_uri is down: we cannot decide, which is not the client's fault
            # (unless it names a kid we cannot confirm: anyone could forge one).
            raise TemporarilyUnavailable(
                "the client's keys cannot be fetched now",
                retry_after=e.retry_after,
                counts_as_failure=isinstance(e, KeyUnconfirmed),
                reason=reasons.CLIENT_KEYS_UNAVAILABLE,
            ) from e
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: Mapping[str, Any]) -> None:
        """What ``verify_signed`` leaves to us (authlib's own check reads the system clock)."""
        if claims.get("sub") != claims.get("iss"):
            raise _refused("client assertion sub must equal iss (the client_id)")
        aud = claims["aud"]
        values = [aud] if isinstance(aud, str) else aud
        # Only us: an assertion also meant for another party could be replayed to it.
        if (
            not isinstance(values, list)
            or not values
            or any(v not in self.audiences for v in values)
        ):
            raise _refused("client assertion aud must be our issuer or token endpoint only")
        now = self.clock()
        if claims["exp"] > now + MAX_ASSERTION_LIFETIME + ASSERTION_LEEWAY:
            raise _refused(
                f"client assertion exp is more than {MAX_ASSERTION_LIFETIME} seconds ahead"
            )
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise _refused("client assertion has an invalid jti")
        if not self.validate_jti(claims, jti):
            raise _refused("client assertion has been used before (jti)")

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        """RFC 7523 §3 item 7: single use, in the store all replicas share, until it expires."""
        return first_use(
            self.store,
            "client_assertion",
            claims,
            clock=self.clock,
            max_lifetime=MAX_ASSERTION_LIFETIME,
            leeway=ASSERTION_LEEWAY,
            what="client assertions",
        )


#: Our wording for a refused assertion, by ``TokenRejected.code``.
_REASONS = {
    "issuer_untrusted": "iss must be the client_id",
    "unknown_key": "is signed with a key that is not in the client's key set",
    "algorithm": "must be signed with " + ", ".join(CLIENT_ASSERTION_ALGORITHMS),
    "audience": "aud must be our issuer or token endpoint",
}


def _refused(detail: str, reason: str = reasons.CLIENT_ASSERTION_INVALID) -> InvalidClient:
    return InvalidClient(detail, used_authorization_header=True, reason=reason)


class ClientRegistry:
    """Looks clients up by ``client_id`` and authenticates token requests.

    ``key_sources``: the public keys of each private_key_jwt client, by ``client_id``;
    ``audiences``: what their assertions' ``aud`` may be (our issuer, our token endpoint).
    """

    def __init__(
        self,
        clients: tuple[ClientSettings, ...],
        *,
        key_sources: Mapping[str, KeySource] | None = None,
        audiences: tuple[str, ...] = (),
        store: Store | None = None,
        clock: Clock = time.time,
    ) -> None:
        sources = key_sources or {}
        self._clients = {c.client_id: Client(c, sources.get(c.client_id)) for c in clients}
        self._auth = ClientAuthentication(self._clients.get)
        self._auth.register("client_secret_basic", _authenticate_basic)
        self._auth.register(
            PRIVATE_KEY_JWT,
            PrivateKeyJwt(
                audiences=audiences,
                store=store if store is not None else MemoryStore(),
                clock=clock,
            ),
        )

    def authenticate(self, authorization: str | None, form: Mapping[str, str]) -> ClientSettings:
        """Identify the calling client or raise ``InvalidClient`` / ``InvalidRequest``.

        ``authorization`` is the Authorization header, ``form`` the single-valued body parameters.
        """
        authorization = authorization or ""
        # Only Basic is client authentication; a stray "Bearer" header from a SPA's HTTP
        # interceptor is not, and is ignored.
        basic = authorization[:6].lower() == "basic "
        if "client_assertion" in form or "client_assertion_type" in form:
            if basic or "client_secret" in form:
                raise InvalidRequest(
                    "use one client authentication method, not two",
                    reason=reasons.CLIENT_AUTH_AMBIGUOUS,
                )
            return self._authenticate_assertion(form)
        auth_headers = {"Authorization": authorization} if basic else {}
        basic_id: str | None = None
        if basic:
            basic_id, _ = basic_credentials(authorization)
            if "client_secret" in form:
                raise InvalidRequest(
                    "use one client authentication method, not two",
                    reason=reasons.CLIENT_AUTH_AMBIGUOUS,
                )
            if "client_id" in form and form["client_id"] != basic_id:
                raise InvalidClient(
                    "client_id does not match the authenticated client",
                    used_authorization_header=True,
                    reason=reasons.CLIENT_ID_MISMATCH,
                )
        request = _AuthRequest(auth_headers, form)
        # Credentials that were presented must be right: no falling back to "none" after them.
        methods = ["client_secret_basic"] if basic else _BODY_METHODS
        try:
            client: Any = self._auth.authenticate(request, methods, "token")
        except InvalidClientError:
            reason, detail = self._failure(form, basic_id)
            raise InvalidClient(detail, used_authorization_header=basic, reason=reason) from None
        if not isinstance(client, Client):  # authlib returns what query_client returned
            raise InvalidClient("client authentication failed", used_authorization_header=basic)
        return client.settings

    def _authenticate_assertion(self, form: Mapping[str, str]) -> ClientSettings:
        """RFC 7521 §4.2 / RFC 7523 §2.2: ``client_assertion`` with its type."""
        if not form.get("client_assertion") or not form.get("client_assertion_type"):
            raise InvalidRequest(
                "client_assertion and client_assertion_type go together",
                reason=reasons.PARAMETER_MISSING,
            )
        if form["client_assertion_type"] != JWT_BEARER_ASSERTION:
            raise _refused("unsupported client_assertion_type")
        request = _AuthRequest({}, form)
        try:
            client: Any = self._auth.authenticate(request, [PRIVATE_KEY_JWT], "token")
        except InvalidClientError:
            # authlib's own refusals: no or unknown sub, or a client of another method.
            sub = _assertion_sub(form)
            if sub is not None and sub not in self._clients:
                raise _refused("unknown client", reasons.UNKNOWN_CLIENT) from None
            raise _refused("client authentication failed") from None
        if not isinstance(client, Client):
            raise _refused("client authentication failed")
        # OpenID Connect Core §9: a client_id sent beside the assertion must be its sub.
        if "client_id" in form and form["client_id"] != client.client_id:
            raise _refused(
                "client_id does not match the client assertion", reasons.CLIENT_ID_MISMATCH
            )
        return client.settings

    def _failure(self, form: Mapping[str, str], basic_id: str | None) -> tuple[str, str]:
        """Why secret (or no) authentication failed: the audit line's reason and detail.
        ``basic_id``: the client_id of the Basic credentials, if they were used."""
        client_id = basic_id if basic_id is not None else form.get("client_id")
        if not client_id:
            return reasons.CLIENT_ID_MISSING, "client_id is required"
        client = self._clients.get(client_id)
        if client is None:
            return reasons.UNKNOWN_CLIENT, "unknown client"
        settings = client.settings
        if settings.token_endpoint_auth_method == PRIVATE_KEY_JWT:
            return (
                reasons.CLIENT_AUTH_METHOD,
                "this client must authenticate with a client assertion (private_key_jwt)",
            )
        if settings.type == "public":
            return reasons.CLIENT_AUTH_METHOD, "a public client presents no secret"
        if basic_id is None and "client_secret" not in form:
            return (
                reasons.CLIENT_CREDENTIALS_MISSING,
                "this client must authenticate with its client secret",
            )
        method = "client_secret_basic" if basic_id is not None else "client_secret_post"
        if settings.token_endpoint_auth_method not in (None, method):
            return reasons.CLIENT_AUTH_METHOD, f"this client may not use {method}"
        return reasons.CLIENT_AUTH_FAILED, "wrong client secret"


def _authenticate_basic(query_client: Any, request: _AuthRequest) -> Client | None:
    """authlib's ``client_secret_basic`` method, with our strict header parsing."""
    client_id, secret = basic_credentials(request.headers["Authorization"])
    client = query_client(client_id)
    if isinstance(client, Client) and client.check_client_secret(secret):
        return client
    return None


def claimed_client_id(authorization: str | None, form: Mapping[str, str]) -> str | None:
    """The client_id a request names, unauthenticated, for the audit line of its refusal: the
    body's ``client_id``, else that of well-formed Basic credentials, else a client assertion's
    unverified ``sub``. None when it names none."""
    if form.get("client_id"):
        return form["client_id"]
    if authorization is not None and authorization[:6].lower() == "basic ":
        try:
            return basic_credentials(authorization)[0]
        except InvalidClient:
            return None
    return _assertion_sub(form)


def _assertion_sub(form: Mapping[str, str]) -> str | None:
    """The unverified ``sub`` of the request's client assertion, if it has one."""
    assertion = form.get("client_assertion")
    if not assertion:
        return None
    try:
        sub = parse_unverified(assertion).payload.get("sub")
    except TokenRejected:
        return None
    return sub if isinstance(sub, str) and sub else None
