"""The grant, HTTP-free: token exchange (``rfc8693``), subject-token verification (``upstream``),
target and scope rules (``policy``), client authentication, introspection and revocation, rate
limits.

May import: ``oauth``, ``obs``, ``config``, ``sources``.
"""
