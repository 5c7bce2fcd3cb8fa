"""WSGI entry point: ``gunicorn 'token_exchange.wsgi:app'`` with ``TOKEN_EXCHANGE_CONFIG`` set.

``token-exchange serve`` uses ``application()`` in each worker after the fork, so that threads
and connection pools are never shared across processes.
"""

from __future__ import annotations

import gc
import multiprocessing.util
import os
from typing import Any

from flask import Flask

from ..config.settings import ENV_CONFIG, load_settings
from ..obs.metrics import forget_dead_workers
from ..web.app import create_app
from .affinity import pin_this_worker


def application() -> Flask:
    """Build the app from the config file named by ``TOKEN_EXCHANGE_CONFIG``."""
    path = os.environ.get(ENV_CONFIG)
    if not path:
        raise RuntimeError(f"{ENV_CONFIG} is not set")
    pin_this_worker()  # first: the threads the app starts run where the worker does
    forget_dead_workers()  # a worker starting may be replacing one that died
    app = create_app(load_settings(path))
    tracing = app.extensions.get("token_exchange.tracing")
    if tracing is not None:
        # A worker that granian started (a multiprocessing child) ends without running atexit
        # handlers, where the SDK would export the spans it holds: this runs at its end.
        multiprocessing.util.Finalize(None, tracing.shutdown, exitpriority=10)
    # Everything built so far lives as long as the worker: the cyclic collector need not
    # look at it again on every full collection.
    gc.freeze()
    return app


def __getattr__(name: str) -> Any:
    # `app` is built on first access, not at import, so importing this module has no effects.
    if name == "app":
        return application()
    raise AttributeError(name)
