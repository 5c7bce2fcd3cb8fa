"""The apps ``bench/floor.py`` serves: each answers ``POST /token`` as the service does (the
body read, a JSON answer of a minted token's size with the same headers), doing nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response

ANSWER = (
    b'{"access_token":"' + b"x" * 620 + b'","issued_token_type":'
    b'"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300}'
)
HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI callable: the server's own cost, and Python's call into it."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", HEADERS)
    return [ANSWER]


flask_app = Flask(__name__)


@flask_app.post("/token")
def token() -> Response:
    return Response(ANSWER, headers=HEADERS)


def flask(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Flask's request and response handling around a view that does nothing: the body read
    and the answer joined as the service's ``LoadShedder`` does."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    result = flask_app(environ, start_response)
    try:
        return [b"".join(result)]
    finally:
        result.close()  # type: ignore[attr-defined]
