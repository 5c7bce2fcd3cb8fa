"""``GET /js/token-exchange-client.js``: the JavaScript client for SPAs (``clients/js``).

An ES module a page imports from the token service itself, so the client and the service it
talks to come from one place. It ships as package data (``token_exchange/js`` links to
``clients/js``), so every install serves it, ``dev`` and ``serve`` alike.
"""

from __future__ import annotations

import importlib.resources

from flask import Blueprint, Response, send_file

MODULE = "token-exchange-client.js"
#: Browsers reuse it for five minutes, then revalidate it with its ETag (a 304 when unchanged).
MAX_AGE = 300

bp = Blueprint("jsclient", __name__)


@bp.get(f"/js/{MODULE}")
def client_module() -> Response:
    resource = importlib.resources.files("token_exchange.js") / MODULE
    with importlib.resources.as_file(resource) as path:
        response = send_file(path, mimetype="text/javascript", max_age=MAX_AGE, etag=True)
    # Module scripts load in CORS mode: a page on another origin may import this public file
    # (no credentials are involved, so "*" grants nothing else).
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
