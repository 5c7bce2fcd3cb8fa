"""Minting: the RFC 9068 access token a grant issues, signed with our key, and the answer
that carries it (RFC 8693 §2.2.1, RFC 6749 §5.1).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..oauth import reasons
from ..oauth.errors import TemporarilyUnavailable
from ..oauth.profile import TOKEN_TYPE_BEARER
from ..sources.keys import KeyStoreError, Signer


@dataclass(frozen=True)
class IssuedToken:
    """The result of a grant, rendered by the view per RFC 8693 §2.2.1."""

    access_token: str
    issued_token_type: str
    expires_in: int
    scope: str
    #: ``DPoP`` for a token bound to a proof's key (RFC 9449 §5).
    token_type: str = TOKEN_TYPE_BEARER

    def response(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


def new_jti() -> str:
    """A minted token's ``jti`` (RFC 7519 §4.1.7): 128 random bits."""
    return secrets.token_urlsafe(16)


def sign(signer: Signer, claims: dict[str, Any]) -> tuple[str, str]:
    """The token of ``claims`` signed with our current key, and that key's ``kid``; no key is
    temporarily_unavailable (never an unsigned token)."""
    try:
        token, key = signer.sign(claims)
    except KeyStoreError as e:
        raise TemporarilyUnavailable(
            "no signing key is available",
            retry_after=30,
            reason=reasons.SIGNING_KEY_UNAVAILABLE,
        ) from e
    return token, key.kid
