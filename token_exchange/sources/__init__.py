"""What the service asks or holds: upstream key sets (``jwks``), outbound HTTP, the stores
(memory, SQLite, Redis; ``epoch`` watches them), our signing keys, resilience guards, and the
permission sources (HTTP, static, AuthZEN).

May import: ``oauth``, ``obs``, ``config``.
"""
