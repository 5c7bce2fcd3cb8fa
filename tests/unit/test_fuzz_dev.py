"""Hostile inputs against dev mode's app in-process: none gets a 500."""

from __future__ import annotations

import random
from typing import Any

from token_exchange.serve.devmode import create_dev_app

from ..test_fuzz import SEED, Failure, Hostile, _fuzz

DEV_PERMISSIONS_TOKEN = "fuzz-dev-permissions-token"


def test_no_hostile_input_gets_a_500_from_dev() -> None:
    hostile = Hostile(random.Random(SEED))  # noqa: S311 - reproducible, not secret
    r = hostile.rng
    app = create_dev_app(8080, permissions_token=DEV_PERMISSIONS_TOKEN)
    client = app.test_client()

    def send(case: int) -> Failure | None:
        roll = r.random()
        headers: dict[str, str] = {}
        data: Any = None
        method = "POST"
        if roll < 0.4:
            path = "/dev/permissions"
            token = DEV_PERMISSIONS_TOKEN if r.random() < 0.7 else hostile.header_text()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            question = {"subject": "dev|alice", "audience": "http://127.0.0.1:8000",
                        "resources": [], "scopes": ["countries:read"]}  # fmt: skip
            for _ in range(r.randrange(0, 3)):
                question[r.choice([*question, "x"])] = hostile.value()
            data = hostile.json_text(question)
        elif roll < 0.7:
            path, data = "/dev/login", {"user": r.choice(["alice", "bob", hostile.text()])}
        else:
            method = "GET"
            path = r.choice(
                ["/spa/", "/spa/config.json", "/dev/issuer/.well-known/jwks.json", "/spa/x"]
            )
            if r.random() < 0.3:
                path = "/spa/" + hostile.text()[:100].replace("?", "").replace("#", "")
        response = client.open(path, method=method, data=data, headers=headers)
        text = response.get_data(as_text=True)
        response.close()
        if response.status_code < 500:
            return None
        return Failure(case, method, path, data, headers, response.status_code, text)

    cases, failures = _fuzz(send)
    assert not failures, f"{len(failures)} of {cases} requests got a 500:\n" + "\n".join(
        str(f) for f in failures
    )
