"""The three sides running together: ``token-exchange dev`` and the example countries API."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import requests
from flask import Flask

from token_exchange.serve.devmode import COUNTRIES_API, create_dev_app

from .fakes import ACCESS_TOKEN, GRANT
from .helpers import free_port, serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import does: a dataclass resolves its annotations through it.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class DevWorld:
    sts_url: str
    api_url: str
    sts_app: Flask
    http: requests.Session

    def login(self, user: str = "alice") -> str:
        response = self.http.post(f"{self.sts_url}/dev/login", data={"user": user}, timeout=5)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def exchange(self, subject: str, country: str) -> requests.Response:
        return self.http.post(
            f"{self.sts_url}/token",
            data={
                "grant_type": GRANT,
                "client_id": "spa",
                "subject_token": subject,
                "subject_token_type": ACCESS_TOKEN,
                "resource": f"{COUNTRIES_API}/countries/{country}",
                "scope": "countries:read",
            },
            timeout=5,
        )

    def call(self, path: str, token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(f"{self.api_url}{path}", headers=headers, timeout=5)

    def sign(self, claims: dict[str, Any]) -> str:
        """A token signed with the service's own current key, with chosen claims."""
        token, _ = self.sts_app.extensions["token_exchange"].exchange.signer.sign(claims)
        return str(token)


@contextlib.contextmanager
def start_dev_world() -> Iterator[DevWorld]:
    """``token-exchange dev`` and ``examples/countries_api.py``, each on its own loopback port."""
    sts_port, api_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    sts_app = create_dev_app(sts_port, countries_api_url=api_url)
    stops: list[Callable[[], None]] = []
    _, stop = serve(sts_app, port=sts_port)
    stops.append(stop)
    countries = load_example("countries_api")
    origins = (f"http://127.0.0.1:{sts_port}", f"http://localhost:{sts_port}")
    _, stop = serve(
        countries.create_api(f"http://127.0.0.1:{sts_port}", allowed_origins=origins),
        port=api_port,
    )
    stops.append(stop)
    try:
        yield DevWorld(f"http://127.0.0.1:{sts_port}", api_url, sts_app, requests.Session())
    finally:
        for stop in stops:
            stop()
