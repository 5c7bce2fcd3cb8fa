"""An example internal service of the trust domain: it is called within a transaction, with a
Txn-Token (draft-ietf-oauth-transaction-tokens-10 §7), never with the user's access token.

Run it next to ``token-exchange`` (configured with ``[transaction_tokens]``)::

    python examples/internal_service.py --sts http://127.0.0.1:8080 \\
        --trust-domain trust-domain.example --port 8082

``GET /stats/<code>`` needs a ``Txn-Token`` header whose ``scope`` has ``countries:read`` and
whose ``tctx`` (the permissions answer of this transaction) lists ``code`` in
``custom_access_to_countries``. It answers with the statistics, and with who they are for
(``sub``), in which transaction (``txn``) and on whose request (``req_wl``).
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, jsonify

from token_exchange.verify import TxnToken, TxnTokenAuth, TxnTokenVerifier

STATS = {
    "nl": {"population": 17_900_000},
    "de": {"population": 84_500_000},
    "be": {"population": 11_800_000},
    "fr": {"population": 68_200_000},
}


def create_service(sts: str, *, trust_domain: str) -> Flask:
    """The statistics service, trusting the Txn-Tokens of the token service at ``sts``."""
    app = Flask("internal_service")
    txn = TxnTokenAuth(TxnTokenVerifier(issuer=sts, trust_domain=trust_domain))

    @app.get("/stats/<code>")
    @txn.require("countries:read")
    def stats(code: str, txn_token: TxnToken) -> Any:
        # The authorization context of this transaction, decided once by the permissions API
        # when the transaction began, and carried unchanged through the call chain.
        if code not in txn_token.tctx.get("custom_access_to_countries", []):
            return jsonify(error="forbidden", error_description=f"no access to {code}"), 403
        if code not in STATS:
            return jsonify(error="not_found"), 404
        return jsonify(
            code=code, **STATS[code], sub=txn_token.sub, txn=txn_token.txn, req_wl=txn_token.req_wl
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sts", default="http://127.0.0.1:8080", help="token-exchange issuer")
    parser.add_argument("--trust-domain", default="trust-domain.example")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    app = create_service(args.sts, trust_domain=args.trust_domain)
    app.run("127.0.0.1", args.port, threaded=True)


if __name__ == "__main__":
    main()
