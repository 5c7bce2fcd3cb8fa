"""Single use of a JWT by its ``jti`` (RFC 7523 §3 item 7, RFC 7519 §4.1.7): recorded in the
store every replica shares until the JWT expires, so that it is redeemed once across them all.

A store that cannot be written is temporarily_unavailable (we fail closed: a use that cannot
be recorded could be a replay). A store that lost its data (``epoch``) cannot say whether a JWT
made before the loss was used then: such a JWT is refused for a moment (503 with Retry-After),
after which a new one, made after the loss, is told apart.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from ..oauth import reasons
from ..oauth.clock import Clock
from ..oauth.errors import TemporarilyUnavailable
from ..sources.epoch import StoreEpoch
from ..sources.store import Store, StoreUnavailable


def first_use(
    store: Store,
    namespace: str,
    claims: Mapping[str, Any],
    *,
    clock: Clock,
    max_lifetime: float,
    leeway: float,
    what: str,
) -> bool:
    """True the first time (``iss``, ``jti``) of ``claims`` is seen, in ``namespace``; False for
    a replay. ``what`` names the JWTs in the caller's error (``client assertions``)."""
    digest = hashlib.sha256(f"{claims['iss']}\0{claims['jti']}".encode()).hexdigest()
    ttl = max(1.0, float(claims["exp"]) + leeway - clock())
    try:
        added = store.add(f"{namespace}:{digest}", b"1", ttl)
    except StoreUnavailable as e:
        raise TemporarilyUnavailable(
            f"replayed {what} cannot be detected now", reason=reasons.STORE_UNAVAILABLE
        ) from e
    if isinstance(store, StoreEpoch) and store.assertion_predates(
        claims.get("iat"), max_lifetime, leeway
    ):
        # The store lost its data (epoch.py): this one may have been used before that. One made
        # now can be told apart a moment later: not the caller's fault.
        now = clock()  # after the write: the loss may have been noticed by it
        wait = (store.since or 0) + leeway - now
        if not isinstance(claims.get("iat"), int | float):
            wait = (store.since or 0) + max_lifetime + 2 * leeway - now
        raise TemporarilyUnavailable(
            f"{what} made before now cannot be checked for replay; make a new one (with iat) "
            "after Retry-After",
            retry_after=math.ceil(wait) + 1,
            reason=reasons.STORE_RESET,
        )
    return added
