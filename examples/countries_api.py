"""An example downstream API that trusts only tokens minted by token-exchange.

Run it next to ``token-exchange dev``::

    python examples/countries_api.py --sts http://127.0.0.1:8080 --port 8081

Routes:

* ``GET /countries/<code>`` needs scope ``countries:read`` and ``code`` in the token's
  ``custom_access_to_countries`` claim.
* ``GET /orgs/<org>/projects/<project>`` needs a permission triple ``[org, project, role]`` in the
  token's ``custom_permissions`` claim, and answers with the role.

``GET /.well-known/oauth-protected-resource`` is the API's RFC 9728 metadata (its authorization
server is the token exchange service at ``--sts``).

Tokens come as ``Authorization: Bearer <token>`` or, when DPoP-bound, as ``Authorization: DPoP
<token>`` with a ``DPoP`` proof (RFC 9449 §7), which ``BearerAuth`` checks.

Every answer carries CORS headers for the origins given with ``--allow-origin`` (by default the
pages ``token-exchange dev`` serves), so the example SPA can call it from the browser.
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, Response, jsonify, request

from token_exchange.verify import BearerAuth, TokenVerifier

AUDIENCE = "https://countries.example.test"
COUNTRIES = {
    "nl": {"name": "Netherlands", "capital": "Amsterdam"},
    "de": {"name": "Germany", "capital": "Berlin"},
    "be": {"name": "Belgium", "capital": "Brussels"},
    "fr": {"name": "France", "capital": "Paris"},
}


def create_api(
    sts: str, *, audience: str = AUDIENCE, allowed_origins: tuple[str, ...] = ()
) -> Flask:
    """The countries API, verifying tokens of the token exchange service at ``sts``."""
    app = Flask("countries_api")
    auth = BearerAuth(
        TokenVerifier(issuer=sts, audience=audience), realm="countries", resource_name="Countries"
    )
    # RFC 9728: /.well-known/oauth-protected-resource names our service as the authorization
    # server; every 401 and 403 points at it (resource_metadata) with the scopes needed.
    auth.init_app(app)

    @app.get("/countries/<code>")
    @auth.require("countries:read")
    def country(code: str, claims: dict[str, Any]) -> Any:
        if code not in claims.get("custom_access_to_countries", []):
            return jsonify(error="forbidden", error_description=f"no access to {code}"), 403
        if code not in COUNTRIES:
            return jsonify(error="not_found"), 404
        return jsonify(code=code, **COUNTRIES[code], viewer=claims["sub"])

    @app.get("/orgs/<org>/projects/<project>")
    @auth.require()
    def project(org: str, project: str, claims: dict[str, Any]) -> Any:
        roles = [
            triple[2]
            for triple in claims.get("custom_permissions", [])
            if isinstance(triple, list) and len(triple) == 3 and triple[:2] == [org, project]
        ]
        if not roles:
            return jsonify(error="forbidden", error_description="no permission on project"), 403
        return jsonify(org=org, project=project, roles=roles)

    @app.after_request
    def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            # DPoP: the proof header (RFC 9449 §7.1) and the nonce header (§9).
            response.headers["Access-Control-Allow-Headers"] = "Authorization, DPoP"
            response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate, DPoP-Nonce"
        return response

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sts", default="http://127.0.0.1:8080", help="token-exchange issuer")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--allow-origin",
        action="append",
        help="browser origin allowed to call (repeatable)",
    )
    args = parser.parse_args()
    sts_port = args.sts.rsplit(":", 1)[-1].strip("/")
    origins = tuple(
        args.allow_origin or (f"http://127.0.0.1:{sts_port}", f"http://localhost:{sts_port}")
    )
    create_api(args.sts, allowed_origins=origins).run("127.0.0.1", args.port, threaded=True)


if __name__ == "__main__":
    main()
