"""Client identification and authentication at the token endpoint (RFC 6749 §2.3, §3.2.1).

Public clients name themselves with ``client_id`` in the body (method ``none``); confidential
clients authenticate with ``client_secret_basic`` or ``client_secret_post``. The method dispatch
is authlib's ``ClientAuthentication``; we add what it leaves open: one method per request
(RFC 6749 §2.3), Basic credentials decoded strictly and form-urldecoded (§2.3.1), presented
credentials that must be right even for a public client, a body ``client_id`` that must agree
with them, constant-time secret comparison, and a 401 only when the client used the
Authorization header.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import ClientAuthentication
from authlib.oauth2.rfc6749.errors import InvalidClientError

from .errors import InvalidClient, InvalidRequest
from .settings import ClientSettings

_BODY_METHODS = ["client_secret_post", "none"]


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
        raise InvalidClient("malformed Basic credentials", used_authorization_header=True)
    return unquote_plus(client_id), unquote_plus(secret)


class Client:
    """A configured client, in the shape authlib's ``ClientMixin`` expects."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.client_id = settings.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.settings.secret
        if self.settings.type != "confidential" or not secret:
            return False
        # Constant time: the comparison must not reveal how much of a guess was right.
        return hmac.compare_digest(secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.settings.type == "public":
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")


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


class ClientRegistry:
    """Looks clients up by ``client_id`` and authenticates token requests."""

    def __init__(self, clients: tuple[ClientSettings, ...]) -> None:
        self._clients = {c.client_id: Client(c) for c in clients}
        self._auth = ClientAuthentication(self._clients.get)
        self._auth.register("client_secret_basic", _authenticate_basic)

    def authenticate(self, authorization: str | None, form: Mapping[str, str]) -> ClientSettings:
        """Identify the calling client or raise ``InvalidClient`` / ``InvalidRequest``.

        ``authorization`` is the Authorization header, ``form`` the single-valued body parameters.
        """
        authorization = authorization or ""
        # Only Basic is client authentication; a stray "Bearer" header from a SPA's HTTP
        # interceptor is not, and is ignored.
        basic = authorization[:6].lower() == "basic "
        auth_headers = {"Authorization": authorization} if basic else {}
        if basic:
            basic_id, _ = basic_credentials(authorization)
            if "client_secret" in form:
                raise InvalidRequest("use one client authentication method, not two")
            if "client_id" in form and form["client_id"] != basic_id:
                raise InvalidClient(
                    "client_id does not match the authenticated client",
                    used_authorization_header=True,
                )
        request = _AuthRequest(auth_headers, form)
        # Credentials that were presented must be right: no falling back to "none" after them.
        methods = ["client_secret_basic"] if basic else _BODY_METHODS
        try:
            client: Any = self._auth.authenticate(request, methods, "token")
        except InvalidClientError:
            raise InvalidClient(
                self._failure_reason(form, basic), used_authorization_header=basic
            ) from None
        if not isinstance(client, Client):  # authlib returns what query_client returned
            raise InvalidClient("client authentication failed", used_authorization_header=basic)
        return client.settings

    def _failure_reason(self, form: Mapping[str, str], basic: bool) -> str:
        if basic:
            return "client authentication failed"
        client_id = form.get("client_id")
        if not client_id:
            return "client_id is required"
        client = self._clients.get(client_id)
        if client is None:
            return "unknown client"
        if client.settings.type == "confidential" and "client_secret" not in form:
            return "this client must authenticate with its client secret"
        return "client authentication failed"


def _authenticate_basic(query_client: Any, request: _AuthRequest) -> Client | None:
    """authlib's ``client_secret_basic`` method, with our strict header parsing."""
    client_id, secret = basic_credentials(request.headers["Authorization"])
    client = query_client(client_id)
    if isinstance(client, Client) and client.check_client_secret(secret):
        return client
    return None
