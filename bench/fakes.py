"""The benchmark's fake Auth0 tenant and permissions API, as one bare WSGI app.

Kept as cheap as possible, because it runs on the same cores as the service it feeds:
precomputed answers, no framework. ``BENCH_FAKES_DIR`` names the directory with ``jwks.json``
and ``issuer.txt`` written by ``bench/run.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_DIR = Path(os.environ.get("BENCH_FAKES_DIR", "."))
_ISSUER = (_DIR / "issuer.txt").read_text().strip() if (_DIR / "issuer.txt").exists() else ""
_JWKS = (_DIR / "jwks.json").read_bytes() if (_DIR / "jwks.json").exists() else b"{}"
_DISCOVERY = json.dumps(
    {"issuer": _ISSUER, "jwks_uri": _ISSUER.rstrip("/") + "/jwks.json"}
).encode()
_ALLOW = json.dumps(
    {
        "allow": True,
        "scopes": ["countries:read"],
        "claims": {"custom_access_to_countries": ["nl", "de", "be"]},
        "ttl": 60,
    }
).encode()
#: The same answer, stated for every country at once (``resource_prefixes``): the scoped
#: scenario's questions after the first are served from the cache.
_ALLOW_COUNTRIES = json.dumps(
    {
        **json.loads(_ALLOW),
        "resource_prefixes": ["https://countries.example.test/countries/"],
    }
).encode()
_ROUTES = {
    "/.well-known/openid-configuration": _DISCOVERY,
    "/jwks.json": _JWKS,
    "/permissions": _ALLOW,
    "/permissions/countries": _ALLOW_COUNTRIES,
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _ROUTES.get(environ.get("PATH_INFO", ""))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    question = environ["wsgi.input"].read(length) if length else b""
    if body is _ALLOW and b'"subject":"cover|' in question:
        body = _ALLOW_COUNTRIES  # the covered scenario's user
    if body is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
