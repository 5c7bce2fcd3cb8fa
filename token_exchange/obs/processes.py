"""Whether a process lives: for the metrics of dead workers and the CPU claims of live ones.
Imports nothing (no prometheus_client: ``serve`` must set its directory first)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; True when that cannot be told (another user's process,
    a number no pid can be)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True
