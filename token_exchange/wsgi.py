"""``token_exchange.wsgi:app``, the WSGI entry point users' servers name (``serve/wsgi.py``)."""

from __future__ import annotations

from typing import Any

from .serve.wsgi import application

__all__ = ["app", "application"]  # noqa: F822 (app: built on access, __getattr__)


def __getattr__(name: str) -> Any:
    # `app` is built on first access, not at import, as serve/wsgi.py does.
    if name == "app":
        return application()
    raise AttributeError(name)
