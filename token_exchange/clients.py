"""Client identification and authentication at the token endpoint (RFC 6749 §2.3, §3.2.1).

Public clients name themselves with ``client_id`` in the body (method ``none``); confidential
clients authenticate with ``client_secret_basic`` or ``client_secret_post``. The method dispatch
is authlib's ``ClientAuthentication``; we add what it leaves open: one method per request
(RFC 6749 §2.3), a body ``client_id`` that must agree with the Basic credentials, constant-time
secret comparison, and a 401 only when the client used the Authorization header.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from authlib.oauth2.rfc6749 import ClientAuthentication
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc6749.util import extract_basic_authorization

from .errors import InvalidClient, InvalidRequest
from .settings import ClientSettings

_METHODS = ["client_secret_basic", "client_secret_post", "none"]


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

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

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
            basic_id, _ = extract_basic_authorization(auth_headers)
            if "client_secret" in form:
                raise InvalidRequest("use one client authentication method, not two")
            if "client_id" in form and form["client_id"] != basic_id:
                raise InvalidClient(
                    "client_id does not match the authenticated client",
                    used_authorization_header=True,
                )
        request = _AuthRequest(auth_headers, form)
        try:
            client: Any = self._auth.authenticate(request, _METHODS, "token")
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
