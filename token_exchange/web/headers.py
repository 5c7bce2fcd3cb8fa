"""The headers every answer carries: ``X-Request-ID``, and CORS for the browsers we serve.

A WSGI layer outside the app, so that an answer the load shedder gives (503) carries them like
any other, and so that a request pays for them as a few tuples, not as Flask hooks.

- ``X-Request-ID``: the caller's, when it cannot smuggle anything into a log line, or a new one.
  The views write it into the audit line of the decision (``request_id(environ)``).
- CORS (``Services.cors_paths``, ``/token`` and under ``dev`` its login page): ``Vary: Origin``
  always, and for an allowed origin the headers that let its page read the answer, including
  ``Retry-After``, ``WWW-Authenticate``, ``X-Request-ID`` and ``DPoP-Nonce``; a preflight
  (``OPTIONS``) also learns that it may send ``Authorization``, ``Content-Type`` and ``DPoP``.
- ``/.well-known/`` documents are public: any page may read them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .overload import WsgiApp

if TYPE_CHECKING:
    from .services import Services

#: The environ key of the request's id (str).
REQUEST_ID = "token_exchange.request_id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: What a browser may read of our answers (DPoP-Nonce: RFC 9449 §8.2, the nonce to use next).
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate, X-Request-ID, DPoP-Nonce"
_PREFLIGHT = [
    ("Access-Control-Allow-Methods", "POST"),
    # DPoP: the proof header of RFC 9449 §4.1, which browsers must be let send.
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, DPoP"),
    ("Access-Control-Max-Age", "600"),
]
_PUBLIC = ("Access-Control-Allow-Origin", "*")


def valid_request_id(value: str) -> bool:
    """A caller's request id we may write into a log line as it is."""
    return _SANE_ID.fullmatch(value) is not None


def request_id(environ: dict[str, Any]) -> str:
    """The id of the request being served (set by ``ResponseHeaders``)."""
    return environ.get(REQUEST_ID) or "-"


class ResponseHeaders:
    """WSGI middleware adding the headers of the module docstring to every answer.

    It reads ``services.cors_paths`` and ``cors_origins`` per request: ``dev`` adds a path after
    the app is built.
    """

    def __init__(self, app: WsgiApp, services: Services) -> None:
        self.app = app
        self.services = services

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        given = environ.get("HTTP_X_REQUEST_ID")
        rid = given if given and valid_request_id(given) else secrets.token_hex(16)
        environ[REQUEST_ID] = rid
        extra = [("X-Request-ID", rid)]
        # The path as Flask routes it (werkzeug's request.path): "//token" is /token too.
        path = "/" + environ.get("PATH_INFO", "").lstrip("/")
        vary = path in self.services.cors_paths
        if vary:
            origin = environ.get("HTTP_ORIGIN")
            if origin and origin in self.services.cors_origins:
                extra.append(("Access-Control-Allow-Origin", origin))
                extra.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
                if environ.get("REQUEST_METHOD", "").upper() == "OPTIONS":
                    extra += _PREFLIGHT
        elif path.startswith("/.well-known/"):
            extra.append(_PUBLIC)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if vary:
                _vary_on_origin(headers)
            headers.extend(extra)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def _vary_on_origin(headers: list[tuple[str, str]]) -> None:
    """Add ``Origin`` to the answer's ``Vary`` (RFC 9110 §12.5.5), once."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            if "origin" not in {v.strip().lower() for v in value.split(",")} and value != "*":
                headers[i] = (name, f"{value}, Origin")
            return
    headers.append(("Vary", "Origin"))
