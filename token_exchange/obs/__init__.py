"""Observability: structured log events (``logs``) and Prometheus metrics (``metrics``). Fed by
every other floor.

May import: ``oauth``.
"""
