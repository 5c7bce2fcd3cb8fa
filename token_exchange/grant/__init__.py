"""The grant, HTTP-free: token exchange (``exchange``), subject-token verification (``upstream``),
target and scope rules (``policy``), client authentication, introspection and revocation, rate
limits.

May import: ``oauth``, ``obs``, ``config``, ``sources``.
"""
