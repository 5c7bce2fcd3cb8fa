#!/usr/bin/env python3
"""In-process CPU per request of POST /token (Flask's test client: no server, no sockets), for
three requests on the same warm subject token and a permissions answer that is always yes:

* ``spa``: a warm token exchange by the public client ``spa``;
* ``private_key_jwt exchange``: the same exchange by a confidential client that authenticates
  with private_key_jwt (a fresh ES256 client assertion, its jti single-use, every request);
* ``txn``: a Txn-Token request (draft-ietf-oauth-transaction-tokens-10) by a workload that
  authenticates the same way.

    python bench/profile_txn.py            # µs of process CPU per request, each
    python bench/profile_txn.py --profile  # and cProfile of the txn requests

It tells the Txn-Token's own cost from its client authentication's. Run from the repository
root (it borrows the test suite's fakes); the store is in-process memory.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes import (
    ENV,
    ClientAssertions,
    TokenMaker,
    base_config,
    make_signing_key,
)
from token_exchange.config.settings import parse_settings
from token_exchange.sources.permissions import Decision, PermissionRequest
from token_exchange.sources.store import MemoryStore
from token_exchange.web.app import Overrides, create_app

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
API = "https://countries.example.test"


class Yes:
    def decide(self, request: PermissionRequest) -> Decision:
        return Decision(allow=True, claims={"custom_access_to_countries": ["nl"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="requests per kind")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    issuer = TokenMaker(
        "https://tenant.example.test/",
        [rsa.generate_private_key(public_exponent=65537, key_size=2048)],
    )
    workload = ClientAssertions("orders-gateway")
    tmp = Path(tempfile.mkdtemp(prefix="te-profile-txn-"))
    make_signing_key(tmp / "keys")
    config = copy.deepcopy(base_config(issuer.issuer, "https://permissions.example.test/"))
    config["store"] = {"url": "memory://"}
    config["transaction_tokens"] = {"audience": "trust-domain.example", "permissions": "webapp"}
    for client_id, extra in (
        ("orders-gateway", {"transaction_tokens": True}),
        ("pk-client", {"audiences": [API]}),
    ):
        config["clients"].append(
            {"client_id": client_id, "type": "confidential", "jwks": workload.jwks(),
             "token_endpoint_auth_method": "private_key_jwt", **extra}
        )  # fmt: skip
    settings = parse_settings(config, env=ENV, base_dir=tmp)
    overrides = Overrides(
        key_sources={issuer.issuer: issuer.key_source()},
        permission_sources={"webapp": Yes()},
        store=MemoryStore(),
    )
    client = create_app(settings, overrides=overrides).test_client()
    subject = issuer.token(scope="countries:read")
    common = {"grant_type": EXCHANGE, "subject_token": subject, "scope": "countries:read",
              "subject_token_type": ACCESS_TOKEN}  # fmt: skip

    def spa(_: str | None) -> dict[str, Any]:
        return {**common, "client_id": "spa", "audience": API}

    def pk_exchange(assertion: str | None) -> dict[str, Any]:
        return {**common, "audience": API, "client_assertion_type": ASSERTION,
                "client_assertion": assertion}  # fmt: skip

    def txn(assertion: str | None) -> dict[str, Any]:
        return {**common, "audience": "trust-domain.example", "client_assertion_type": ASSERTION,
                "client_assertion": assertion,
                "requested_token_type": "urn:ietf:params:oauth:token-type:txn_token"}  # fmt: skip

    kinds: list[tuple[str, Callable[[str | None], dict[str, Any]], str | None]] = [
        ("spa", spa, None),
        ("private_key_jwt exchange", pk_exchange, "pk-client"),
        ("txn", txn, "orders-gateway"),
    ]
    for name, form, client_id in kinds:
        signer = ClientAssertions(client_id, workload.key) if client_id else None
        assertions = [signer.assertion() if signer else None for _ in range(args.n + 1)]
        first = client.post("/token", data=form(assertions[0]))
        assert first.status_code == 200, first.text
        started = time.process_time()
        for assertion in assertions[1:]:
            response = client.post("/token", data=form(assertion))
        assert response.status_code == 200, response.text
        print(f"{name:26} {(time.process_time() - started) / args.n * 1e6:6.0f} µs CPU")
        if args.profile and name == "txn":
            more = [signer.assertion() for _ in range(args.n)] if signer else []
            profile = cProfile.Profile()
            profile.enable()
            for assertion in more:
                client.post("/token", data=form(assertion))
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
