"""Noticing that the store lost its data, and failing closed for what depended on it.

Revocations and single-use markers (DPoP proof and client assertion ``jti``s) live in the
store. A Redis that restarts without persistence, fails over to an empty replica or is
flushed forgets them silently: a revoked token would be active again, a used proof usable again.

So the store holds an **epoch marker** (``te:v1:epoch``: a random id and the time it was
written). ``StoreEpoch`` wraps the store: every ``get`` and ``add`` (the durable reads and
single-use writes) reads the marker *after* its own key, in the same round trip where the store
can pipeline (``Pipelined``), else in a second call. Data lost before the key was read is
lost before the marker was read too: the marker is then missing, or another process has
already written a new one with another id. Nobody ever writes an old id again, so a process
cannot miss a reset that its own read was exposed to, and no process needs to have been told.

A missing marker is written anew with ``SET NX`` (one writer wins; everybody adopts its id).
The current epoch's start (``since``: its creation time plus ``skew``) is what every process
judges by, the ones that saw the reset and the ones started after it alike:

* a token of ours issued (``iat``) at or before ``since`` cannot be proven unrevoked: it is
  inactive at ``/introspect`` and refused as a subject or actor token, until it expires (at
  the latest ``since`` + the longest token lifetime: the "reset window");
* a DPoP proof could have been used before the loss if its ``iat`` is before ``since`` + the
  proof window (RFC 9449 §11.1): refused;
* a client assertion could have been used before the loss if its ``iat`` is before ``since``
  + its leeway, or it has none and could still be unexpired: refused.

``skew`` covers clocks of replicas that disagree (the marker is written with one replica's
clock, tokens are stamped with another's): a token issued up to ``skew`` seconds after the
reset is refused too. A fresh, empty store looks exactly like a reset one: the first start
logs ``store_reset`` with ``previous_epoch`` null, and nothing older than it exists to refuse.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..oauth.clock import Clock
from ..oauth.profile import STORE_EPOCH
from ..obs.logs import event
from .store import Store, StoreUnavailable

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

log = logging.getLogger(__name__)

#: The marker's key (``te:v1:epoch`` in the store).
EPOCH_KEY = "epoch"
#: The marker's TTL ("always a TTL"); any process that reads it extends it once a day, so it
#: expires only in a store nobody has used for this long (and then it is a reset, fail closed).
MARKER_TTL = 30 * 86400
REFRESH_INTERVAL = 86400
#: A process that has not read the marker for this long reads it before it mints a token.
RECHECK = 1.0
#: Default allowance, seconds, for clocks of replicas that disagree (NTP keeps them within ms).
CLOCK_SKEW = 2.0


def mark_reset(store: Store) -> None:
    """Make ``store`` look reset to every process that reads it (``store mark-reset``): its
    marker expires at once, so the next read writes a new epoch. For a store restored from a
    copy, whose old marker would otherwise hide that the writes since the copy are gone."""
    store.set(EPOCH_KEY, b"-", 0.001)


@runtime_checkable
class Pipelined(Protocol):
    """What a store may offer to read the marker in the same round trip (optional)."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, read in this order, in one round trip."""
        ...

    def add_then_get(
        self, key: str, value: bytes, ttl: float, then: str
    ) -> tuple[bool, bytes | None]:
        """``add(key, value, ttl)``, then ``get(then)``, in this order, in one round trip."""
        ...


@runtime_checkable
class Extendable(Protocol):
    """A store that can extend a key's TTL without writing it (Redis ``PEXPIRE``; optional)."""

    def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` ``ttl`` more seconds if it exists; True when it did."""
        ...


@dataclass(frozen=True)
class Epoch:
    id: str
    created: float

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "created": self.created}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Epoch | None:
        try:
            value = json.loads(raw)
            return cls(str(value["id"]), float(value["created"]))
        except (ValueError, TypeError, KeyError):
            return None


class StoreEpoch:
    """A ``Store`` whose ``get`` and ``add`` also watch the epoch marker (module docstring).

    ``lifetime``: the longest life of a token we mint (``signing.token_ttl``, or a Txn-Token's
    if longer), which is how long the reset window stays open. ``set``, ``incr``, ``ping`` and
    ``close`` pass straight through: writes need no watching (a revocation written to a store
    that was just emptied is recorded there all the same).
    """

    def __init__(
        self,
        store: Store,
        *,
        lifetime: float,
        skew: float = CLOCK_SKEW,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.lifetime = lifetime
        self.skew = skew
        self.clock = clock
        self.metrics = metrics
        self._epoch: Epoch | None = None
        #: The epoch the current one replaced, when this process adopted it (for its log line).
        self._adopted_from: str | None = None
        self._refreshed = 0.0
        self._observed = -math.inf
        self._window_logged: str | None = None
        self._lock = threading.Lock()

    # -- the Store protocol ---------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        if isinstance(self.store, Pipelined):
            value, marker = self.store.get_many([key, EPOCH_KEY])
        else:
            value = self.store.get(key)
            marker = self.store.get(EPOCH_KEY)  # after the key: see the module docstring
        self._observe(marker)
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if isinstance(self.store, Pipelined):
            *values, marker = self.store.get_many([*keys, EPOCH_KEY])
        else:
            values = self.store.get_many(keys)
            marker = self.store.get(EPOCH_KEY)
        self._observe(marker)
        return values

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self.store.set(key, value, ttl, durable=durable)

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        if isinstance(self.store, Pipelined):
            added, marker = self.store.add_then_get(key, value, ttl, EPOCH_KEY)
        else:
            added = self.store.add(key, value, ttl)
            marker = self.store.get(EPOCH_KEY)
        self._observe(marker)
        return added

    def incr(self, key: str, ttl: float) -> int:
        return self.store.incr(key, ttl)

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        self.store.close()

    # -- what callers judge by ------------------------------------------------------------

    def check(self) -> Epoch:
        """Read the marker now (start-up, readiness); the current epoch. ``StoreUnavailable``
        passes through."""
        return self._observe(self.store.get(EPOCH_KEY))

    @property
    def since(self) -> float | None:
        """Durable state recorded before this time may have been lost (the current epoch's
        start plus ``skew``); None before the marker has been read."""
        epoch = self._epoch
        return None if epoch is None else epoch.created + self.skew

    def current(self) -> str | None:
        """The id of the epoch tokens are minted in now (``profile.STORE_EPOCH``), the marker
        read again when this process has not read it for ``RECHECK`` seconds (so a process
        whose requests touch no other state notices a reset within that time); None while the
        store has not answered."""
        if self.clock() - self._observed >= RECHECK:
            with contextlib.suppress(StoreUnavailable):
                self.check()
        epoch = self._epoch
        return None if epoch is None else epoch.id

    def token_predates(self, claims: Mapping[str, Any]) -> bool:
        """True when a token of ours may have been revoked in a lost store: minted in an earlier
        epoch (its ``STORE_EPOCH``), or, without that claim, issued (``iat``) before ``since``.

        Not bounded by the window: the token's own ``exp`` is (whatever ``token_ttl`` was).
        """
        since, epoch = self.since, self._epoch
        if since is None or epoch is None:
            return False
        minted_in = claims.get(STORE_EPOCH)
        if isinstance(minted_in, str):
            return minted_in != epoch.id
        iat = claims.get("iat")
        return not isinstance(iat, int | float) or isinstance(iat, bool) or iat <= since

    def proof_predates(self, iat: float, window: float) -> bool:
        """True when a DPoP proof made at ``iat`` may have been used before the loss: it was
        acceptable then if ``iat`` was within ``window`` of a time before ``since``."""
        since = self.since
        return since is not None and iat < since + window

    def reset_nonce(self, window: float) -> str | None:
        """A DPoP nonce (RFC 9449 §8) that only a proof made after the store lost its data can
        carry, while a proof from before could still be within its ``window`` (None after
        that, or before the marker has been read). Derived from the new epoch's id, which
        nobody knew before: it need not be secret, since a proof from before cannot be
        re-signed with it."""
        since, epoch = self.since, self._epoch
        if since is None or epoch is None or self.clock() >= since + 2 * window:
            return None
        digest = hashlib.sha256(b"token-exchange:dpop-reset-nonce:" + epoch.id.encode())
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()

    def assertion_predates(self, iat: object, max_lifetime: float, leeway: float) -> bool:
        """True when a client assertion (RFC 7523) may have been used before the loss: its
        ``iat`` is before ``since`` + ``leeway``, or it has none, while one used before the
        loss could still be unexpired."""
        since = self.since
        if since is None or self.clock() >= since + max_lifetime + 2 * leeway:
            return False
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            return True
        return iat < since + leeway

    def window_closes_at(self) -> float | None:
        since = self.since
        return None if since is None else since + self.lifetime

    # -- the marker -----------------------------------------------------------------------

    def _observe(self, raw: bytes | None) -> Epoch:
        self._observed = self.clock()
        epoch = Epoch.decode(raw) if raw is not None else None
        written_here = False
        if epoch is None:
            # Missing (or unreadable): the store was emptied. One writer wins the new id.
            fresh = Epoch(secrets.token_hex(16), self.clock())
            if self.store.add(EPOCH_KEY, fresh.encode(), MARKER_TTL):
                epoch, written_here = fresh, True
            else:
                stored = self.store.get(EPOCH_KEY)
                epoch = Epoch.decode(stored) if stored is not None else None
                if epoch is None:
                    # Fail closed: without an epoch nothing read from the store can be trusted.
                    raise StoreUnavailable("the store's epoch marker cannot be established")
        previous = self._epoch
        if previous is not None and previous.id == epoch.id and not written_here:
            self._maybe_refresh()
            self._maybe_log_closed(epoch)
            return epoch
        with self._lock:
            adopted = self._epoch is not None and self._epoch.id == epoch.id
            if not adopted:
                self._adopted_from = previous.id if previous is not None else None
                self._epoch = epoch
                self._refreshed = self.clock()
        if adopted and not written_here:
            return epoch
        # Adopted already, by another thread of this process that read the marker this one had
        # just written (and logged it as another's): the writer still says it wrote it, once.
        previous_id = self._adopted_from
        now = self.clock()
        closes_at = epoch.created + self.skew + self.lifetime
        if closes_at <= now:
            # An old epoch (adopted at start-up, or replaced long ago while this process was
            # idle): whatever it could have made us doubt has expired.
            self._window_logged = epoch.id
            return epoch
        event(
            log,
            "store_reset",
            level=logging.WARNING,
            epoch=epoch.id,
            previous_epoch=previous_id,
            # Whether this process wrote the new marker: one process per reset does.
            written_here=written_here,
            reset_at=round(epoch.created, 3),
            window_closes_at=round(closes_at, 3),
        )
        if self.metrics is not None:
            if written_here:  # counted once per reset, by the one writer of its new epoch
                self.metrics.store_resets.inc()
            self.metrics.store_reset_window_closes.set(closes_at)
        return epoch

    def _maybe_refresh(self) -> None:
        now = self.clock()
        if now - self._refreshed < REFRESH_INTERVAL or not isinstance(self.store, Extendable):
            return
        self._refreshed = now
        # Extends whatever marker is there, never rewrites it: a process that wrote back the
        # id it knows could hide a newer one from those that have not read it yet.
        self.store.expire(EPOCH_KEY, MARKER_TTL)

    def _maybe_log_closed(self, epoch: Epoch) -> None:
        if self._window_logged == epoch.id:
            return
        closes_at = epoch.created + self.skew + self.lifetime
        if self.clock() < closes_at:
            return
        self._window_logged = epoch.id
        if self.clock() - closes_at < self.lifetime:  # closed recently, not long ago
            event(log, "store_reset_window_closed", epoch=epoch.id, closed_at=round(closes_at, 3))
