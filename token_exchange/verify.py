"""The downstream API's side: verify the access tokens we mint (RFC 9068 §4, RFC 6750 §3).

``TokenVerifier`` checks a bearer token the way RFC 9068 §4 asks: ``typ`` is ``at+jwt``, ``iss``
is exactly our issuer, ``aud`` contains this API, the signature verifies with a key from our JWKS
(cached; an unknown ``kid`` refetches at most once per cooldown), ``exp``/``nbf`` hold with a small
leeway, and the algorithm is on an allow-list. ``BearerAuth`` wraps it as a Flask decorator::

    auth = BearerAuth(TokenVerifier(issuer="https://sts.example.com",
                                    audience="https://countries.example.com"))

    @app.get("/countries/<code>")
    @auth.require("countries:read")
    def country(code: str, claims: dict) -> ...:
        ...

Failures answer 401 with ``WWW-Authenticate: Bearer error="invalid_token"``, 403 with
``error="insufficient_scope"`` naming every scope the operation needs, and 503 when our keys
cannot be fetched.

Protected-resource metadata (RFC 9728, what MCP clients discover an MCP server's authorization
server by): ``auth.init_app(app)`` serves it at ``/.well-known/oauth-protected-resource`` plus
the resource identifier's path, and every 401 and 403 challenge points at it with
``resource_metadata="..."`` (RFC 9728 §5.1) and names the scopes the operation needs.

DPoP (RFC 9449 §7): a token bound to a key (``cnf.jkt``) is accepted only as ``Authorization:
DPoP <token>`` with a ``DPoP`` proof by that key for this request (``htm``, ``htu``, ``ath`` =
the token's hash, a ``jti`` used once: remembered in ``replay``, a shared store when the API
runs several replicas). Sent as a bearer token, it is refused; its failures answer with a
``WWW-Authenticate: DPoP`` challenge (``invalid_token`` or ``invalid_dpop_proof``).

Who acts (RFC 8693 §4.1): a token minted for an agent acting for a user names the user in
``sub`` and the agent in ``act``. ``actor_chain(claims)`` reads it, the current actor first; a
view also finds it as ``flask.g.actors`` (empty without delegation)::

    @auth.require("countries:read")
    def country(code: str, claims: dict) -> ...:
        if g.actors and "ai_agent" in g.actors[0].profiles: ...

Transaction tokens (draft-ietf-oauth-transaction-tokens-10 §7): an internal service called
within a transaction checks the ``Txn-Token`` request header, never ``Authorization``::

    txn = TxnTokenAuth(TxnTokenVerifier(issuer="https://sts.example.com",
                                        trust_domain="trust-domain.example"))

    @app.get("/stats/<code>")
    @txn.require("countries:read")
    def stats(code: str, txn_token: TxnToken) -> ...:
        if code not in txn_token.tctx.get("custom_access_to_countries", []): ...

It takes exactly one Txn-Token (``typ`` ``txntoken+jwt``, signed by a key of our JWKS, ``aud``
the trust domain, unexpired) and answers 403 ``invalid_token`` (a Txn-Token is no credential,
so there is no ``WWW-Authenticate`` challenge to make) or 403 ``insufficient_scope``. A
Txn-Token is never accepted as an access token, nor an access token as a Txn-Token.

For high-value calls, ``@auth.require(..., introspect=True)`` also asks our introspection endpoint
(RFC 7662) whether the token is still active, so a revoked token stops working at once rather than
when it expires; that needs an ``Introspection`` with the API's confidential client credentials.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import requests
from flask import Flask, Response, g, request

from .oauth import dpop
from .oauth.clock import Clock
from .oauth.errors import UpstreamUnavailable
from .oauth.profile import ACCESS_TOKEN_CLAIMS, ACCESS_TOKEN_TYP, TXN_TOKEN_CLAIMS, TXN_TOKEN_TYP
from .oauth.tokens import JwtPolicy, TokenRejected, parse_unverified, verify_signed
from .sources.http import call
from .sources.jwks import RemoteKeySet
from .sources.store import MemoryStore, Store, StoreUnavailable

#: Algorithms our service signs with (``signing.algorithm``); never "none", never HMAC.
DEFAULT_ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
#: RFC 9068 §2.2: claims every access token carries.
REQUIRED_CLAIMS = ACCESS_TOKEN_CLAIMS

F = TypeVar("F", bound=Callable[..., Any])


class InvalidToken(Exception):
    """The token is missing, malformed, expired, forged or not for this API (``invalid_token``),
    or its DPoP proof is not acceptable (``invalid_dpop_proof``, RFC 9449 §7.1)."""

    def __init__(
        self, description: str, *, error: str = "invalid_token", dpop: bool = False
    ) -> None:
        super().__init__(description)
        self.description = description
        self.error = error
        #: The failure is about DPoP: answered with a DPoP challenge (RFC 9449 §7.1).
        self.dpop = dpop or error == "invalid_dpop_proof"


@dataclass(frozen=True)
class DpopRequest:
    """What a DPoP proof is checked against: the request's ``DPoP`` header values, its method
    and its URL as the client called it (RFC 9449 §4.3)."""

    proofs: Sequence[str]
    method: str
    url: str


#: RFC 9728 §3: the well-known URI suffix of protected-resource metadata.
RESOURCE_METADATA_SUFFIX = "oauth-protected-resource"


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known URI is inserted between the resource identifier's host and
    its path (a terminating slash after the host is removed first)."""
    parts = urlsplit(resource)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        # §1.2: an https URL without a fragment (http for loopback development).
        raise ValueError(f"not a resource identifier: {resource!r}")
    path = "/.well-known/" + RESOURCE_METADATA_SUFFIX + parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known URI is inserted between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = "/.well-known/oauth-authorization-server" + parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Introspection:
    """Asks our RFC 7662 endpoint whether a token is active, as a confidential client."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        session: requests.Session | None = None,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.auth = (client_id, client_secret)
        self.session = session or requests.Session()
        self.timeout = timeout

    def is_active(self, token: str) -> bool:
        """True when the token is active; ``UpstreamUnavailable`` when we cannot tell."""
        answer = call(
            self.session,
            "POST",
            self.url,
            timeout=self.timeout,
            max_bytes=256 * 1024,
            auth=self.auth,
            data={"token": token, "token_type_hint": "access_token"},
        )
        if answer.status != 200:
            raise UpstreamUnavailable(f"introspection answered HTTP {answer.status}")
        try:
            active = json.loads(answer.body).get("active")
        except (ValueError, AttributeError, RecursionError):
            raise UpstreamUnavailable("introspection answer is not JSON") from None
        return active is True


def _issuer_keys(
    issuer: str,
    policy: JwtPolicy,
    session: requests.Session | None,
    jwks_uri: str | None,
    refresh_interval: float,
    cooldown: float,
    clock: Clock,
) -> RemoteKeySet:
    """The issuer's signing keys, from ``jwks_uri`` or else as its RFC 8414 metadata names."""
    return RemoteKeySet(
        issuer=issuer,
        algorithms=policy.algorithms,
        session=session or requests.Session(),
        jwks_uri=jwks_uri,
        discovery_url=None if jwks_uri else metadata_url(issuer),
        refresh_interval=refresh_interval,
        cooldown=cooldown,
        clock=clock,
    )


class TokenVerifier:
    """Verifies access tokens minted by the token exchange service at ``issuer`` for ``audience``.

    The JWKS comes from ``jwks_uri`` or, when omitted, from the issuer's RFC 8414 metadata.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: int = 30,
        cooldown: float = 30.0,
        refresh_interval: float = 300.0,
        session: requests.Session | None = None,
        clock: Clock = time.time,
        introspection: Introspection | None = None,
        dpop_algorithms: Iterable[str] = dpop.DEFAULT_ALGORITHMS,
        dpop_window: int = 60,
        replay: Store | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.introspection = introspection
        self.dpop_algorithms = tuple(dpop_algorithms)
        self.dpop_window = dpop_window
        #: Where used DPoP proofs are remembered; this process's memory unless given a store
        #: that all replicas of the API share (``store.open_store("redis://...")``).
        self.replay: Store = MemoryStore() if replay is None else replay
        self.policy = JwtPolicy(
            issuer=issuer,
            audiences=(audience,),
            algorithms=tuple(algorithms),
            required=REQUIRED_CLAIMS,
            leeway=leeway,
            typ=ACCESS_TOKEN_TYP,
        )
        self.keys = _issuer_keys(
            issuer, self.policy, session, jwks_uri, refresh_interval, cooldown, clock
        )
        self.clock = clock

    def verify(
        self, token: str, *, introspect: bool = False, proof: DpopRequest | None = None
    ) -> dict[str, Any]:
        """Return the claims of a valid token; raise ``InvalidToken`` or ``UpstreamUnavailable``.

        With ``introspect``, a token that verifies locally must also be active (not revoked).
        ``proof``: the token came with the DPoP scheme, and this is the request to check its
        proof against; without it, the token is a bearer token and must not be DPoP-bound.
        """
        try:
            unverified = parse_unverified(token)
            claims = verify_signed(unverified, self.policy, self.keys, self.clock())
        except TokenRejected as e:
            raise InvalidToken(f"the access token {e.reason}") from None
        try:
            jkt = dpop.bound_jkt(claims)
        except ValueError:
            raise InvalidToken("the access token has a cnf that cannot be checked") from None
        if proof is None and jkt is not None:
            # RFC 9449 §7.1: a bound token sent as a bearer token is refused, or anyone who
            # copied it could use it.
            raise InvalidToken(
                "a DPoP-bound access token must be sent with the DPoP scheme", dpop=True
            )
        if proof is not None:
            self._check_proof(token, jkt, proof)
        if introspect:
            if self.introspection is None:
                raise ValueError("introspect=True needs TokenVerifier(introspection=...)")
            if not self.introspection.is_active(token):
                raise InvalidToken("the access token has been revoked")
        return claims

    def _check_proof(self, token: str, jkt: str | None, request: DpopRequest) -> None:
        """RFC 9449 §4.3 with step 12: the proof is for this request and this token, by the
        token's key."""
        if jkt is None:
            raise InvalidToken("the access token is not DPoP-bound: send it as a bearer token")
        try:
            proof = dpop.verify_proof(
                request.proofs,
                method=request.method,
                url=request.url,
                now=self.clock(),
                replay=self.replay,
                algorithms=self.dpop_algorithms,
                window=self.dpop_window,
            )
        except dpop.ProofRejected as e:
            raise InvalidToken(e.reason, error="invalid_dpop_proof") from None
        except StoreUnavailable as e:
            # Fail closed: a proof whose single use cannot be recorded could be replayed.
            raise UpstreamUnavailable("DPoP replay store unavailable") from e
        if proof.jkt != jkt:
            raise InvalidToken(
                "the DPoP proof is not signed by the token's key", error="invalid_dpop_proof"
            )
        if proof.ath != dpop.token_hash(token):
            raise InvalidToken(
                "the DPoP proof's ath is not the access token's hash", error="invalid_dpop_proof"
            )


@dataclass(frozen=True)
class Actor:
    """One member of a token's ``act`` chain: who acted, in which issuer's namespace, and what
    it is (``sub_profile``: "ai_agent", "service", "user"; empty when unstated)."""

    sub: str
    iss: str | None
    profiles: tuple[str, ...] = ()


#: The longest ``act`` chain read; a token of ours never carries more than ten.
MAX_ACTORS = 10


def actor_chain(claims: dict[str, Any]) -> list[Actor]:
    """The token's actors, the current one first and the earliest last (RFC 8693 §4.1).

    Raises ``InvalidToken`` for an ``act`` that is no chain of identities: a token whose
    actors cannot be read must not pass for one without any.
    """
    chain: list[Actor] = []
    node = claims.get("act")
    while node is not None:
        sub, iss, profile = (
            (node.get("sub"), node.get("iss"), node.get("sub_profile", ""))
            if isinstance(node, dict)
            else (None, None, None)
        )
        if (
            not isinstance(sub, str)
            or not (iss is None or isinstance(iss, str))
            or not isinstance(profile, str)
            or len(chain) == MAX_ACTORS
        ):
            raise InvalidToken("the token's act claim is invalid")
        chain.append(Actor(sub=sub, iss=iss, profiles=tuple(profile.split())))
        node = node.get("act")
    return chain


def scopes_of(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope", "")
    return set(scope.split()) if isinstance(scope, str) else set()


class BearerAuth:
    """A Flask decorator factory that requires a valid bearer token and scopes (RFC 6750), and
    publishes the API's protected-resource metadata (RFC 9728).

    ``resource``: the API's resource identifier (RFC 9728 §1.2), by default the verifier's
    audience; when it is a URL, the metadata is derived from it and every challenge points at
    it. ``dpop_required``: bearer tokens are refused, only DPoP-bound ones accepted (RFC 9449
    §7.1; published as ``dpop_bound_access_tokens_required``).
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        realm: str = "api",
        public_url: str | None = None,
        resource: str | None = None,
        scopes_supported: Iterable[str] = (),
        resource_name: str | None = None,
        dpop_required: bool = False,
    ) -> None:
        self.verifier = verifier
        self.realm = realm
        #: The API's base URL as clients call it (behind a proxy); a DPoP proof's htu is
        #: checked against it plus the request's path. By default the URL the request reached.
        self.public_url = public_url.rstrip("/") if public_url else None
        self.resource = verifier.audience if resource is None else resource
        self.resource_name = resource_name
        self.dpop_required = dpop_required
        #: The scopes this API's operations require (``require`` adds its own), published.
        self.scopes_supported = list(dict.fromkeys(scopes_supported))
        try:
            self.resource_metadata_url: str | None = resource_metadata_url(self.resource)
        except ValueError:
            if resource is not None:
                raise
            self.resource_metadata_url = None  # an audience that is no URL: nothing to publish

    def metadata(self) -> dict[str, Any]:
        """The RFC 9728 §2 document: who issues tokens for this API, and how it takes them."""
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [self.verifier.issuer],
            "bearer_methods_supported": ["header"],  # never a form body or the query (§2)
            "dpop_signing_alg_values_supported": list(self.verifier.dpop_algorithms),
        }
        if self.scopes_supported:
            document["scopes_supported"] = self.scopes_supported
        if self.resource_name is not None:
            document["resource_name"] = self.resource_name
        if self.dpop_required:
            document["dpop_bound_access_tokens_required"] = True
        return document

    def init_app(self, app: Flask) -> None:
        """Serve the metadata at its well-known path (RFC 9728 §3), readable from any origin."""
        if self.resource_metadata_url is None:
            raise ValueError(f"resource {self.resource!r} is not a URL: no metadata to serve")
        path = urlsplit(self.resource_metadata_url).path

        def protected_resource_metadata() -> Response:
            return Response(
                json.dumps(self.metadata()),
                200,
                {"Access-Control-Allow-Origin": "*", "Cache-Control": "max-age=300"},
                mimetype="application/json",
            )

        app.add_url_rule(path, "oauth_protected_resource", protected_resource_metadata)

    def require(self, *scopes: str, introspect: bool = False) -> Callable[[F], F]:
        """Require a token with every scope in ``scopes``; pass its claims as ``claims=``.

        ``introspect=True`` also checks with our introspection endpoint that it is not revoked.
        """

        self.scopes_supported += [s for s in scopes if s not in self.scopes_supported]

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                outcome = self.authenticate(scopes, introspect=introspect)
                if isinstance(outcome, Response):
                    return outcome
                return view(*args, claims=outcome, **kwargs)

            return cast(F, wrapper)

        return decorator

    def authenticate(
        self, scopes: Iterable[str], *, introspect: bool = False
    ) -> dict[str, Any] | Response:
        """The verified claims of this request's token, or the error response to send."""
        scopes = tuple(scopes)
        needed = " ".join(scopes) or None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "dpop") or not token.strip():
            # RFC 6750 §3.1, RFC 9449 §7.1: a request without credentials gets no error code;
            # the scopes it needs let a client ask for them at once (RFC 9728 §5.1, MCP).
            return self._challenge(
                401,
                None,
                "an access token is required",
                scope=needed,
                scheme="DPoP" if self.dpop_required else None,
            )
        proof = None
        if scheme == "dpop":
            url = (
                self.public_url + request.path if self.public_url is not None else request.base_url
            )
            proof = DpopRequest(request.headers.getlist("DPoP"), request.method, url)
        try:
            claims = self.verifier.verify(token.strip(), introspect=introspect, proof=proof)
        except InvalidToken as e:
            dpop_scheme = proof is not None or e.dpop or self.dpop_required
            return self._challenge(
                401,
                e.error,
                e.description,
                scope=needed,
                scheme="DPoP" if dpop_scheme else "Bearer",
            )
        except UpstreamUnavailable:
            body = {"error": "temporarily_unavailable", "error_description": "cannot verify now"}
            return Response(
                json.dumps(body), 503, {"Retry-After": "5"}, mimetype="application/json"
            )
        if proof is None and self.dpop_required:
            # RFC 9449 §7.1: this API takes DPoP-bound tokens only; a bearer token is refused
            # even when valid (verify has refused a bound one sent as bearer already).
            return self._challenge(
                401, "invalid_token", "a DPoP-bound access token is required", scheme="DPoP"
            )
        try:
            g.actors = actor_chain(claims)
        except InvalidToken as e:
            scheme = "DPoP" if proof is not None else "Bearer"
            return self._challenge(401, e.error, e.description, scope=needed, scheme=scheme)
        missing = [s for s in scopes if s not in scopes_of(claims)]
        if missing:
            # RFC 6750 §3.1: every scope the operation needs, not only the missing ones, so
            # that a client asking again for these gets a token that works.
            return self._challenge(
                403,
                "insufficient_scope",
                "the token lacks a required scope",
                scope=needed,
                scheme="DPoP" if proof is not None else "Bearer",
            )
        return claims

    def _challenge(
        self,
        status: int,
        error: str | None,
        description: str,
        *,
        scope: str | None = None,
        scheme: str | None = None,
    ) -> Response:
        """The RFC 6750 §3 / RFC 9449 §7.1 answer. ``scheme`` None: both schemes are offered
        (a request without credentials)."""
        params = [f'realm="{self.realm}"']
        if error:
            params += [f'error="{error}"', f'error_description="{description}"']
        # RFC 9449 §7.1: the DPoP challenge names the proof algorithms we accept.
        dpop_params = [*params, f'algs="{" ".join(self.verifier.dpop_algorithms)}"']
        extra = [f'scope="{scope}"'] if scope else []
        if self.resource_metadata_url is not None:
            extra.append(f'resource_metadata="{self.resource_metadata_url}"')  # RFC 9728 §5.1
        params += extra
        dpop_params += extra
        challenges = {
            "Bearer": "Bearer " + ", ".join(params),
            "DPoP": "DPoP " + ", ".join(dpop_params),
        }
        offered = [challenges[scheme]] if scheme else list(challenges.values())
        body = {"error": error or "invalid_token", "error_description": description}
        return Response(
            json.dumps(body),
            status,
            {"WWW-Authenticate": ", ".join(offered), "Cache-Control": "no-store"},
            mimetype="application/json",
        )


# -- transaction tokens ---------------------------------------------------------------------------

#: draft-ietf-oauth-transaction-tokens-10 §7.1: the header a Txn-Token travels in.
TXN_TOKEN_HEADER = "Txn-Token"


@dataclass(frozen=True)
class TxnToken:
    """A verified Txn-Token: the transaction (``txn``), its principal (``sub``), its purpose
    (``scope``), the workload that requested it (``req_wl``), the authorization context that
    stays the same through the call chain (``tctx``) and the request's context (``rctx``)."""

    txn: str
    sub: str
    scope: frozenset[str]
    req_wl: str
    tctx: dict[str, Any]
    rctx: dict[str, Any]
    #: Every claim, those this class does not name included (§5.2: ignore what you do not
    #: understand).
    claims: dict[str, Any]


class TxnTokenVerifier:
    """Verifies the Txn-Tokens our service issues as the Txn-Token service of
    ``trust_domain`` (§7.2): signature by a key of our JWKS (fetched as ``TokenVerifier``
    does), ``typ`` ``txntoken+jwt``, ``iss`` our issuer, ``aud`` the trust domain, ``exp``.
    ``leeway`` is small: a Txn-Token lives a minute."""

    def __init__(
        self,
        *,
        issuer: str,
        trust_domain: str,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: int = 5,
        cooldown: float = 30.0,
        refresh_interval: float = 300.0,
        session: requests.Session | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.policy = JwtPolicy(
            issuer=issuer,
            audiences=(trust_domain,),
            algorithms=tuple(algorithms),
            required=(*TXN_TOKEN_CLAIMS, "iss"),
            leeway=leeway,
            typ=TXN_TOKEN_TYP,
        )
        self.keys = _issuer_keys(
            issuer, self.policy, session, jwks_uri, refresh_interval, cooldown, clock
        )
        self.clock = clock

    def verify(self, token: str) -> TxnToken:
        """The Txn-Token's content; ``InvalidToken`` or ``UpstreamUnavailable`` (our keys
        cannot be fetched)."""
        try:
            claims = verify_signed(parse_unverified(token), self.policy, self.keys, self.clock())
        except TokenRejected as e:
            raise InvalidToken(f"the Txn-Token {e.reason}") from None
        txn, sub, scope, req_wl = claims["txn"], claims["sub"], claims["scope"], claims["req_wl"]
        tctx, rctx = claims.get("tctx", {}), claims.get("rctx", {})
        if not (
            all(isinstance(v, str) for v in (txn, sub, scope, req_wl))
            and isinstance(tctx, dict)
            and isinstance(rctx, dict)
        ):
            raise InvalidToken("the Txn-Token has an invalid claim")
        return TxnToken(
            txn=txn,
            sub=sub,
            scope=frozenset(scope.split()),
            req_wl=req_wl,
            tctx=tctx,
            rctx=rctx,
            claims=claims,
        )


class TxnTokenAuth:
    """A Flask decorator factory that requires exactly one valid ``Txn-Token`` header (§7.1)
    carrying the scopes an operation needs; the view gets it as ``txn_token=`` (and as
    ``flask.g.txn_token``). It reads no ``Authorization`` header: that stays the caller's own
    business (§7: "MUST NOT be used")."""

    def __init__(self, verifier: TxnTokenVerifier) -> None:
        self.verifier = verifier

    def require(self, *scopes: str) -> Callable[[F], F]:
        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                outcome = self.authenticate(scopes)
                if isinstance(outcome, Response):
                    return outcome
                return view(*args, txn_token=outcome, **kwargs)

            return cast(F, wrapper)

        return decorator

    def authenticate(self, scopes: Iterable[str]) -> TxnToken | Response:
        """This request's verified Txn-Token, or the error response to send."""
        values = request.headers.getlist(TXN_TOKEN_HEADER)
        # Exactly one token: a repeated header, or two joined by a proxy (", "), is refused.
        if len(values) != 1 or not values[0].strip() or any(c in values[0] for c in ", \t"):
            return _txn_error(403, "invalid_token", "exactly one Txn-Token header is required")
        try:
            token = self.verifier.verify(values[0].strip())
        except InvalidToken as e:
            return _txn_error(403, "invalid_token", e.description)
        except UpstreamUnavailable:
            return _txn_error(503, "temporarily_unavailable", "cannot verify now")
        if not set(scopes) <= token.scope:
            return _txn_error(403, "insufficient_scope", "the Txn-Token lacks a required scope")
        g.txn_token = token
        return token


def _txn_error(status: int, error: str, description: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if status == 503:
        headers["Retry-After"] = "5"
    body = {"error": error, "error_description": description}
    return Response(json.dumps(body), status, headers, mimetype="application/json")
