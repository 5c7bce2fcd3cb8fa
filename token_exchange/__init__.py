"""token-exchange: an OAuth 2.0 Token Exchange (RFC 8693) security token service."""

from __future__ import annotations

__version__ = "0.1.0"
