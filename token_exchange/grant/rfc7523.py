"""The JWT bearer authorization grant (RFC 7523 §2.1, RFC 7521 §4.1): an assertion from a
trusted issuer in, the same per-request permissions question and the same minted access token
as a token exchange out (``minting``), never a refresh token.

Two profiles, each enabled per issuer (``[[upstreams]] assertions``):

* ``id-jag``: an Identity Assertion JWT Authorization Grant
  (draft-ietf-oauth-identity-assertion-authz-grant-04, MCP's Enterprise-Managed Authorization):
  ``typ`` ``oauth-id-jag+jwt``, ``aud`` our issuer (a string, or an array of exactly one),
  ``client_id`` the authenticated client, ``iss``/``sub``/``jti``/``exp``/``iat`` present. Its
  ``resource``, ``scope`` and ``authorization_details`` bound what the request may ask: the
  request only narrows them. A ``cnf.jkt`` in it requires a DPoP proof by that key.
* ``workload``: a workload's own JWT (workload identity federation: a Kubernetes service
  account token, a SPIFFE JWT-SVID, a CI job's token) whose ``aud`` is our token endpoint or
  issuer; the request names the API (``resource`` or ``audience``).

Every assertion is redeemed once (its ``jti``, in the store all replicas share, until it
expires), lives at most the issuer's ``assertion_max_lifetime``, and meets the issuer's trust
``conditions`` (audit mode too). Whatever is wrong with the assertion is ``invalid_grant``
(RFC 7521 §4.1.1); a malformed request (no ``assertion``, or token exchange's parameters) is
``invalid_request``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..config.settings import ApiSettings, ClientSettings, Settings, UpstreamSettings
from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.dpop import Proof
from ..oauth.errors import (
    InvalidAuthorizationDetails,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
)
from ..oauth.profile import (
    ID_JAG_TYP,
    JWT_BEARER_GRANT_TYPE,
    TOKEN_TYPE_ACCESS_TOKEN,
)
from ..oauth.tokens import (
    MAX_TOKEN_LENGTH,
    JwtPolicy,
    TokenRejected,
    UnverifiedJwt,
    media_type_equals,
)
from ..oauth.uris import resource_under
from ..sources.store import Store
from .binding import check_binding, require_proof
from .minting import IssuedToken, Minter
from .policy import check_authorization_details, check_client_target, resolve_api, select_scopes
from .ratelimit import RateLimiter
from .record import RequestRecord
from .replay import first_use
from .request import Target
from .trust import check_client_subject, check_conditions
from .upstream import VerifiedToken
from .verification import TokenVerification

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

#: RFC 7521 §4.1 and the target parameters; token exchange's own are refused, not ignored.
PARAMETERS = frozenset(
    {"grant_type", "assertion", "scope", "resource", "audience", "authorization_details"}
)
EXCHANGE_PARAMETERS = frozenset(
    {"subject_token", "subject_token_type", "actor_token", "actor_token_type"}
)
#: How the permissions question names this grant (DESIGN, "Contract additions").
GRANT_NAME = "jwt-bearer"
#: Seconds of clock skew allowed on a remembered jti's expiry.
JTI_LEEWAY = 30


@dataclass(frozen=True)
class JwtBearerRequest(Target):
    """The validated parameters of a jwt-bearer request (RFC 7523 §2.1)."""

    assertion: str = ""

    @classmethod
    def from_form(
        cls, form: Mapping[str, Sequence[str]], values: Mapping[str, str] | None = None
    ) -> JwtBearerRequest:
        values = values or {}
        assertion = values.get("assertion")
        if assertion is None:
            raise InvalidRequest("assertion is required", reason=reasons.PARAMETER_MISSING)
        if given := sorted(EXCHANGE_PARAMETERS & {n for n, v in form.items() if any(v)}):
            # Two grants in one request: which one was meant cannot be known.
            raise InvalidRequest(
                f"{given[0]} is not a parameter of the jwt-bearer grant",
                reason=reasons.REQUEST_MALFORMED,
            )
        target = Target.from_form(form, values)
        return cls(
            audiences=target.audiences,
            resources=target.resources,
            scopes=target.scopes,
            authorization_details=target.authorization_details,
            assertion=assertion,
        )


def _refused(record: RequestRecord, error: InvalidGrant) -> InvalidGrant:
    """``error``, about the ``assertion`` parameter (the pipeline records its reason)."""
    record.parameter = "assertion"
    return error


class JwtBearer:
    """The grant: an authenticated client's assertion, verified under its profile, then the
    permissions question and the token, as for a token exchange."""

    grant_type = JWT_BEARER_GRANT_TYPE
    parameters = PARAMETERS | EXCHANGE_PARAMETERS
    parse = staticmethod(JwtBearerRequest.from_form)

    def __init__(
        self,
        settings: Settings,
        *,
        verification: TokenVerification,
        minter: Minter,
        replay: Store,
        limiter: RateLimiter | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.verification = verification
        self.minter = minter
        #: Where redeemed assertions' jti are remembered: the store all replicas share.
        self.replay = replay
        self.limiter = limiter
        self.clock = clock
        self.metrics = metrics

    def issue(
        self,
        request: JwtBearerRequest,
        client: ClientSettings,
        proof: Proof | None,
        record: RequestRecord,
    ) -> IssuedToken:
        """Mint a token for ``request``'s assertion, or raise the error that refuses it."""
        record.grant = GRANT_NAME
        require_proof(client.dpop == "required", proof, record)
        assertion = self._verify(request.assertion, client, proof, record)
        record.issuer, record.sub = assertion.issuer, assertion.minted_subject
        target = self._narrowed(request, assertion, record)
        api = resolve_api(self.settings.apis, target.audiences, target.resources)
        record.audience = api.audience
        check_client_target(client, api)
        scopes = self._scopes(api, client, request.scopes, assertion, record)
        check_authorization_details(api, target.authorization_details)
        if self.limiter is not None:
            # As for an exchange: the subject first, then the client (rfc8693).
            self.limiter.subject(assertion.issuer, assertion.subject)
            self.limiter.client(client.client_id)
        self._redeem_once(assertion, record)
        return self.minter.mint(
            api,
            client,
            scopes=scopes,
            target=target,
            subject=assertion,
            actor=None,
            claims={},
            proof=proof,
            record=record,
            issued_token_type=TOKEN_TYPE_ACCESS_TOKEN,
            grant=GRANT_NAME,
        )

    # -- the assertion ------------------------------------------------------------------------

    def _verify(
        self, token: str, client: ClientSettings, proof: Proof | None, record: RequestRecord
    ) -> VerifiedToken:
        """The assertion verified under its issuer's profile, single-use, bound and within the
        issuer's conditions; every refusal ``invalid_grant``."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _refused(record, InvalidGrant("assertion is too large", reason="too_large"))
        profiles: list[str] = []

        def policy_of(upstream: UpstreamSettings, unverified: UnverifiedJwt) -> JwtPolicy:
            policy = self._policy(upstream, unverified)
            profiles.append("id-jag" if policy.typ == ID_JAG_TYP else "workload")
            return policy

        try:
            verified = self.verification.verify(token, "assertion", record, policy_of=policy_of)
            claims = verified.claims
            record.profile = profiles[0]
            self._check_claims(verified, client, record, id_jag=profiles == ["id-jag"])
            check_binding(
                token, verified, proof, "assertion", record, self.metrics, ath_required=False
            )
            check_conditions(
                verified.upstream.conditions,
                verified.upstream_failure,
                "upstreams.conditions",
                "assertion",
                record,
                self.metrics,
            )
            check_client_subject(client, claims, "assertion", record, self.metrics)
        except InvalidRequest as e:
            # The shared steps refuse a token with invalid_request (RFC 8693 §2.2.2); an
            # assertion that fails them is an invalid grant (RFC 7521 §4.1.1).
            raise InvalidGrant(str(e.description), reason=e.reason) from None
        return verified

    def _redeem_once(self, assertion: VerifiedToken, record: RequestRecord) -> None:
        """RFC 7523 §3 item 7: used once, across replicas; recorded once the request is
        otherwise acceptable, so that a request refused for its parameters does not use it up."""
        if not first_use(
            self.replay,
            "assertion",
            assertion.claims,
            clock=self.clock,
            max_lifetime=assertion.upstream.assertion_max_lifetime,
            leeway=JTI_LEEWAY,
            what="assertions",
        ):
            raise _refused(
                record,
                InvalidGrant("assertion has been used before (jti)", reason="assertion_replayed"),
            )

    def _policy(self, upstream: UpstreamSettings, unverified: UnverifiedJwt) -> JwtPolicy:
        """What an assertion of ``upstream`` must satisfy, by its profile (``typ``)."""
        id_jag = media_type_equals(unverified.header.get("typ"), ID_JAG_TYP)
        profile = "id-jag" if id_jag else "workload"
        if profile not in upstream.assertions:
            raise TokenRejected(
                f"is not an assertion this issuer may make ({profile})",
                code="assertion_not_enabled",
            )
        required = ("iss", "sub", "aud", "exp", "iat", "jti")
        issuer = self.settings.issuer
        if id_jag:
            # draft-ietf-oauth-identity-assertion-authz-grant-04 §3.1: for this authorization
            # server (its issuer), for one client.
            return JwtPolicy(
                issuer=upstream.issuer,
                audiences=(issuer,),
                algorithms=upstream.algorithms,
                required=(*required, "client_id"),
                leeway=upstream.leeway,
                typ=ID_JAG_TYP,
            )
        # RFC 7523 §3 item 3: aud identifies us, our token endpoint or our issuer.
        return JwtPolicy(
            issuer=upstream.issuer,
            audiences=(self.settings.token_endpoint, issuer),
            algorithms=upstream.algorithms,
            required=required,
            leeway=upstream.leeway,
        )

    def _check_claims(
        self,
        verified: VerifiedToken,
        client: ClientSettings,
        record: RequestRecord,
        *,
        id_jag: bool,
    ) -> None:
        claims, upstream = verified.claims, verified.upstream
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) != 1:
            # An assertion also meant for another party could be redeemed there too.
            raise _refused(
                record,
                InvalidGrant(
                    "assertion must be for this service only", reason="assertion_audience"
                ),
            )
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise _refused(
                record, InvalidGrant("assertion has an invalid jti", reason="invalid_claim")
            )
        iat, exp = claims["iat"], claims["exp"]
        if not _number(iat) or exp - iat > upstream.assertion_max_lifetime:
            raise _refused(
                record,
                InvalidGrant(
                    f"assertion lives longer than {upstream.assertion_max_lifetime} seconds",
                    reason="assertion_lifetime",
                ),
            )
        if id_jag and claims["client_id"] != client.client_id:
            # draft -04 §4.3: the ID-JAG was issued to this client, and only it may redeem it.
            raise _refused(
                record,
                InvalidGrant("assertion was issued to another client", reason="assertion_client"),
            )

    # -- what the request may ask ---------------------------------------------------------------

    def _narrowed(
        self, request: JwtBearerRequest, assertion: VerifiedToken, record: RequestRecord
    ) -> Target:
        """The request's target within the ID-JAG's: its ``resource`` and
        ``authorization_details`` only narrow those the assertion carries, and default to them."""
        carried_resources = _strings(assertion.claims.get("resource"))
        resources = request.resources
        if carried_resources is not None:
            if not resources and not request.audiences:
                resources = carried_resources
            elif any(not any(resource_under(r, c) for c in carried_resources) for r in resources):
                record.reason = "assertion_exceeded"
                raise InvalidTarget(
                    "resource is not within the assertion's", reason="assertion_exceeded"
                )
        carried_details = assertion.claims.get("authorization_details")
        details = request.authorization_details
        if isinstance(carried_details, list):
            if not details:
                details = tuple(d for d in carried_details if isinstance(d, dict))
            elif any(d not in carried_details for d in details):
                record.reason = "assertion_exceeded"
                raise InvalidAuthorizationDetails(
                    "authorization_details are not within the assertion's",
                    reason="assertion_exceeded",
                )
        return replace(request, resources=resources, authorization_details=details)

    def _scopes(
        self,
        api: ApiSettings,
        client: ClientSettings,
        requested: tuple[str, ...] | None,
        assertion: VerifiedToken,
        record: RequestRecord,
    ) -> tuple[str, ...]:
        """The scopes to ask for: the request's, within the assertion's ``scope`` when it has
        one (by default those of the API's scopes it carries)."""
        scope = assertion.claims.get("scope")
        carried = set(scope.split()) if isinstance(scope, str) else None
        if carried is not None and requested is not None and not set(requested) <= carried:
            record.reason = reasons.SCOPE_NOT_CARRIED
            raise InvalidScope(
                "a requested scope is not in the assertion's scope",
                reason=reasons.SCOPE_NOT_CARRIED,
            )
        scopes = select_scopes(api, client, requested)
        if carried is not None:
            scopes = tuple(s for s in scopes if s in carried)
            if not scopes:
                raise InvalidScope(
                    "the assertion carries no scope of that API", reason=reasons.SCOPE_NOT_CARRIED
                )
        return scopes


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(value: object) -> tuple[str, ...] | None:
    """A claim that is a string or an array of strings, as a tuple; None when absent."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None
