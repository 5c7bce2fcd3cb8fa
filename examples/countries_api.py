"""An example downstream API that trusts only tokens minted by token-exchange.

Run it next to ``token-exchange dev``::

    python examples/countries_api.py --sts http://127.0.0.1:8080 --port 8081

Routes:

* ``GET /countries/<code>`` needs scope ``countries:read`` and ``code`` in the token's
  ``custom_access_to_countries`` claim.
* ``GET /orgs/<org>/projects/<project>`` needs a permission triple ``[org, project, role]`` in the
  token's ``custom_permissions`` claim, and answers with the role.

* ``GET /countries/<code>/stats`` (with ``--internal-url``): the API calls an internal service
  of its trust domain (``examples/internal_service.py``) within a transaction. It exchanges the
  access token it received for a Txn-Token (draft-ietf-oauth-transaction-tokens-10), as the
  workload ``--workload-id`` authenticated with its key (``--workload-key``, private_key_jwt),
  and sends it in the ``Txn-Token`` header, never the user's access token.

``GET /.well-known/oauth-protected-resource`` is the API's RFC 9728 metadata (its authorization
server is the token exchange service at ``--sts``).

Tokens come as ``Authorization: Bearer <token>`` or, when DPoP-bound, as ``Authorization: DPoP
<token>`` with a ``DPoP`` proof (RFC 9449 §7), which ``BearerAuth`` checks.

Every answer carries CORS headers for the origins given with ``--allow-origin`` (by default the
pages ``token-exchange dev`` serves), so the example SPA can call it from the browser.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from flask import Flask, Response, jsonify, request

from token_exchange.verify import BearerAuth, TokenVerifier

AUDIENCE = "https://countries.example.test"
COUNTRIES = {
    "nl": {"name": "Netherlands", "capital": "Amsterdam"},
    "de": {"name": "Germany", "capital": "Berlin"},
    "be": {"name": "Belgium", "capital": "Brussels"},
    "fr": {"name": "France", "capital": "Paris"},
}


TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class InternalCalls:
    """How the API calls the internal statistics service: with a Txn-Token per call, asked of
    the token service at ``sts`` as the workload ``client_id``, which signs its client
    assertions with ``key`` (an EC P-256 private key; ``kid`` names it in the workload's
    registered JWK Set)."""

    sts: str
    internal_url: str
    client_id: str
    key: Any
    kid: str
    trust_domain: str = "trust-domain.example"
    session: requests.Session | None = None

    def txn_token(self, access_token: str, code: str, caller: str | None) -> requests.Response:
        """The token service's answer to a Txn-Token request for reading ``code``'s stats
        for the user of ``access_token``, who called from ``caller``."""
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": self.client_id, "sub": self.client_id, "aud": f"{self.sts}/token",
             "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex},
            self.key, algorithm="ES256", headers={"kid": self.kid},
        )  # fmt: skip
        return (self.session or requests).post(
            f"{self.sts}/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "requested_token_type": TXN_TOKEN,
                "audience": self.trust_domain,
                "scope": "countries:read",
                "subject_token": access_token,
                "subject_token_type": ACCESS_TOKEN,
                "request_context": json.dumps({"req_ip": caller}),
                "request_details": json.dumps({"action": "stats", "country": code}),
                "client_assertion_type": CLIENT_ASSERTION,
                "client_assertion": assertion,
            },
            timeout=5,
        )

    def stats(self, txn_token: str, code: str) -> requests.Response:
        return (self.session or requests).get(
            f"{self.internal_url}/stats/{code}", headers={"Txn-Token": txn_token}, timeout=5
        )


def create_api(
    sts: str,
    *,
    audience: str = AUDIENCE,
    allowed_origins: tuple[str, ...] = (),
    internal: InternalCalls | None = None,
) -> Flask:
    """The countries API, verifying tokens of the token exchange service at ``sts``; with
    ``internal``, calling the internal statistics service within a transaction."""
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

    @app.get("/countries/<code>/stats")
    @auth.require("countries:read")
    def country_stats(code: str, claims: dict[str, Any]) -> Any:
        if internal is None:
            return jsonify(error="not_found", error_description="no internal service"), 404
        access_token = request.headers["Authorization"].partition(" ")[2].strip()
        answer = internal.txn_token(access_token, code, request.remote_addr)
        if answer.status_code != 200:
            # The token service refused this transaction (or is down): say which, not why.
            status = 503 if answer.status_code == 503 else 403
            return jsonify(error="transaction_refused", status=answer.status_code), status
        stats = internal.stats(answer.json()["access_token"], code)
        return Response(stats.content, stats.status_code, mimetype="application/json")

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
    parser.add_argument("--internal-url", help="the internal statistics service's base URL")
    parser.add_argument("--workload-id", default="countries-api-workload")
    parser.add_argument("--workload-key", type=Path, help="the workload's EC private key (PEM)")
    parser.add_argument("--workload-kid", help="its kid in the workload's registered JWK Set")
    parser.add_argument("--trust-domain", default="trust-domain.example")
    args = parser.parse_args()
    internal = None
    if args.internal_url:
        internal = InternalCalls(
            sts=args.sts,
            internal_url=args.internal_url,
            client_id=args.workload_id,
            key=load_pem_private_key(args.workload_key.read_bytes(), None),
            kid=args.workload_kid,
            trust_domain=args.trust_domain,
        )
    sts_port = args.sts.rsplit(":", 1)[-1].strip("/")
    origins = tuple(
        args.allow_origin or (f"http://127.0.0.1:{sts_port}", f"http://localhost:{sts_port}")
    )
    api = create_api(args.sts, allowed_origins=origins, internal=internal)
    api.run("127.0.0.1", args.port, threaded=True)


if __name__ == "__main__":
    main()
