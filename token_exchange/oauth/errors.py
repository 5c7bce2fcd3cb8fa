"""OAuth error responses (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2, RFC 9396 §5).

One class per error code, built on authlib's ``OAuth2Error`` so that every error renders as
the RFC 6749 §5.2 JSON body with ``Cache-Control: no-store``. Code raises these; one handler in
``views`` renders them. Descriptions are fixed strings chosen by us: never a library's exception
text and never the caller's input. Each carries a ``reason`` for the audit line, a code from
``reasons.REASONS``: its class's default, or the finer one its raise site names; ``detail``, a
fixed text of ours, may say more, to the audit line only.

    OAuthError (authlib OAuth2Error)
     +-- InvalidRequest          400  malformed request, or a bad subject/actor token
     +-- InvalidClient           400/401
     +-- InvalidScope            400
     +-- InvalidTarget           400  RFC 8707 / RFC 8693: audience or resource refused
     +-- InvalidAuthorizationDetails 400  RFC 9396 §5
     +-- InvalidGrant            400  RFC 6749 §5.2 / RFC 7521 §4.1.1: the assertion is not valid
     +-- UnauthorizedClient      400  the client may not use this grant type (RFC 7591 §2)
     +-- UnsupportedGrantType    400
     +-- TemporarilyUnavailable  503  a dependency is down; carries Retry-After
     +-- RateLimited             429  "slow_down" (RFC 8628 §3.5); carries Retry-After
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.base import OAuth2Error

from . import reasons


class OAuthError(OAuth2Error):  # type: ignore[misc]
    """Base class of every error the token endpoint answers with."""

    error: str = "server_error"
    status_code: int = 400
    #: The audit line's ``reason`` when the raise site names none.
    default_reason: str = reasons.INTERNAL_ERROR
    #: The record of the refused request (``grant.record.RequestRecord``), attached by the
    #: token endpoint (``grant.pipeline``) for the view's audit line.
    record: Any = None

    def __init__(
        self,
        description: str,
        *,
        status_code: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(description=description, status_code=status_code)
        self.reason = reason or self.default_reason
        self.detail = detail

    @property
    def description_text(self) -> str:
        return str(self.description)

    def response_headers(self) -> list[tuple[str, str]]:
        """Extra headers beyond the JSON/no-store defaults."""
        return []

    def render(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        status, body, headers = self()
        return status, body, [*headers, *self.response_headers()]


class InvalidRequest(OAuthError):
    error = "invalid_request"
    default_reason = reasons.REQUEST_MALFORMED


#: What every ``invalid_client`` answer says, whatever went wrong: an answer must not tell
#: whether a client_id exists or how that client authenticates. The audit line says which.
INVALID_CLIENT_DESCRIPTION = "client authentication failed"


class InvalidClient(OAuthError):
    """Bad client. RFC 6749 §5.2: 401 when it used the Authorization header.

    ``detail`` (what went wrong, in our words) goes to the audit line only: the caller is told
    ``INVALID_CLIENT_DESCRIPTION``, the same for an unknown client as for a wrong secret.
    """

    error = "invalid_client"
    default_reason = reasons.CLIENT_AUTH_FAILED

    def __init__(
        self,
        detail: str,
        *,
        used_authorization_header: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(
            INVALID_CLIENT_DESCRIPTION,
            status_code=401 if used_authorization_header else 400,
            reason=reason,
            detail=detail,
        )

    def response_headers(self) -> list[tuple[str, str]]:
        if self.status_code == 401:
            return [("WWW-Authenticate", 'Basic realm="token-exchange", charset="UTF-8"')]
        return []


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_reason = reasons.SCOPE_REFUSED


class InvalidTarget(OAuthError):
    error = "invalid_target"
    default_reason = reasons.TARGET_REFUSED


class InvalidAuthorizationDetails(OAuthError):
    error = "invalid_authorization_details"
    default_reason = reasons.AUTHORIZATION_DETAILS_INVALID


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    default_reason = reasons.ASSERTION_INVALID


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"
    default_reason = reasons.GRANT_TYPE_NOT_ALLOWED


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_reason = reasons.UNSUPPORTED_GRANT_TYPE


class TemporarilyUnavailable(OAuthError):
    """A dependency we need for a decision is down: 503, never a token (we fail closed).

    ``counts_as_failure``: the caller's input alone could be the cause (a forged ``kid``), so
    it counts against the caller's address like a 400 does.
    """

    error = "temporarily_unavailable"
    status_code = 503
    default_reason = reasons.TEMPORARILY_UNAVAILABLE

    def __init__(
        self,
        description: str,
        *,
        retry_after: int = 5,
        counts_as_failure: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(description, status_code=503, reason=reason)
        self.retry_after = max(1, int(retry_after))
        self.counts_as_failure = counts_as_failure

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class RateLimited(OAuthError):
    """Too many requests. ``slow_down`` is the registered token-endpoint code for it."""

    error = "slow_down"
    status_code = 429
    default_reason = reasons.RATE_LIMITED

    def __init__(self, description: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(description, status_code=429, detail=detail)
        self.retry_after = max(1, int(retry_after))

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class UpstreamUnavailable(Exception):
    """An outbound dependency (JWKS, permissions API) could not be reached or answered badly.

    Raised by the clients of outside services; the grant turns it into ``TemporarilyUnavailable``.
    """

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyUnconfirmed(UpstreamUnavailable):
    """A token names a key we do not hold, and the issuer's key set cannot be fetched to tell a
    key it has just added from a forged ``kid``: a 503 (we cannot decide), which counts as a
    failure of the caller's address, as a bad token does (anyone can forge a ``kid``)."""

    def __init__(self, kid: str | None, *, retry_after: int) -> None:
        super().__init__("issuer keys could not be refreshed", retry_after=retry_after)
        self.kid = kid
