"""serve's threads per worker are counted from the dependencies' shares (overload.py): the same
guards the app builds, every kind of dependency included. A share the count missed would let a
hanging dependency take threads meant for other requests (test_isolation.py shows it for an
AuthZEN PDP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from token_exchange.web.overload import SPARE_THREADS, dependency_shares, serving_threads

from .fakes import COUNTRIES, Sts


def with_every_dependency(config: dict[str, Any]) -> None:
    config["upstreams"][0]["jwks_max_concurrency"] = 3
    config["permissions"]["webapp"]["max_concurrency"] = 5
    config["permissions"]["pdp"] = {
        "type": "authzen", "url": "http://127.0.0.1:9/pdp", "max_concurrency": 7,
    }  # fmt: skip
    config["apis"].append(
        {"audience": "https://pdp.example.test", "scopes": ["x"], "permissions": "pdp"}
    )
    config["clients"].append(
        {
            "client_id": "signer",
            "type": "confidential",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": "http://127.0.0.1:9/jwks.json",
            "audiences": [COUNTRIES],
        }
    )
    config["store"] = {"url": "sqlite:state/store.db", "max_concurrency": 11}


def test_the_threads_are_counted_from_the_guards_the_app_builds(
    make_sts: Callable[..., Sts],
) -> None:
    services = make_sts(with_every_dependency).app.extensions["token_exchange"]
    settings = services.settings
    limits = sorted(guard.bulkhead.limit for guard in services.guards)
    # The store, the issuer's key set, the client's key set, the HTTP source and the PDP.
    assert limits == [3, 4, 5, 7, 11]
    assert dependency_shares(settings) == sum(limits)
    assert serving_threads(settings) == settings.server.max_in_flight + 30 + SPARE_THREADS
