"""OAuth error responses (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2, RFC 9396 §5).

One class per error code, built on authlib's ``OAuth2Error`` so that every error renders as
the RFC 6749 §5.2 JSON body with ``Cache-Control: no-store``. Code raises these; one handler in
``views`` renders them. Descriptions are fixed strings chosen by us: never a library's exception
text and never the caller's input.

    OAuthError (authlib OAuth2Error)
     +-- InvalidRequest          400  malformed request, or a bad subject/actor token
     +-- InvalidClient           400/401
     +-- InvalidScope            400
     +-- InvalidTarget           400  RFC 8707 / RFC 8693: audience or resource refused
     +-- InvalidAuthorizationDetails 400  RFC 9396 §5
     +-- UnsupportedGrantType    400
     +-- TemporarilyUnavailable  503  a dependency is down; carries Retry-After
     +-- RateLimited             429  "slow_down" (RFC 8628 §3.5); carries Retry-After
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.base import OAuth2Error


class OAuthError(OAuth2Error):  # type: ignore[misc]
    """Base class of every error the token endpoint answers with."""

    error: str = "server_error"
    status_code: int = 400

    def __init__(self, description: str, *, status_code: int | None = None) -> None:
        super().__init__(description=description, status_code=status_code)

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


class InvalidClient(OAuthError):
    """Bad client. RFC 6749 §5.2: 401 when it used the Authorization header."""

    error = "invalid_client"

    def __init__(self, description: str, *, used_authorization_header: bool = False) -> None:
        super().__init__(description, status_code=401 if used_authorization_header else 400)

    def response_headers(self) -> list[tuple[str, str]]:
        if self.status_code == 401:
            return [("WWW-Authenticate", 'Basic realm="token-exchange", charset="UTF-8"')]
        return []


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class InvalidAuthorizationDetails(OAuthError):
    error = "invalid_authorization_details"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class TemporarilyUnavailable(OAuthError):
    """A dependency we need for a decision is down: 503, never a token (we fail closed).

    ``counts_as_failure``: the caller's input alone could be the cause (a forged ``kid``), so
    it counts against the caller's address like a 400 does.
    """

    error = "temporarily_unavailable"
    status_code = 503

    def __init__(
        self, description: str, *, retry_after: int = 5, counts_as_failure: bool = False
    ) -> None:
        super().__init__(description, status_code=503)
        self.retry_after = max(1, int(retry_after))
        self.counts_as_failure = counts_as_failure

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class RateLimited(OAuthError):
    """Too many requests. ``slow_down`` is the registered token-endpoint code for it."""

    error = "slow_down"
    status_code = 429

    def __init__(self, description: str, *, retry_after: int) -> None:
        super().__init__(description, status_code=429)
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
