"""One CPU per worker under ``serve`` (``[server] cpu_affinity = "auto"``).

A worker's threads hand each request to one another (granian's I/O thread, the thread serving
the request, the CPU gate): on one CPU such a hand-off is a switch in a warm cache, across CPUs
it is a wake-up on another core and a cold one. Pinned, an exchange costs a tenth to a quarter
less CPU on a 2-core machine (bench/README.md, "CPU affinity").

Only when the service owns its CPUs: as many workers as CPUs it may run on (its affinity mask:
a container's cpuset, a dedicated machine). A container that may run on every CPU of a shared
host, limited by a CPU quota, has more CPUs in its mask than workers (``default_workers`` counts
the quota): there a pinned worker could not move away from a neighbour's busy core, so workers
are left to the kernel.

``serve`` makes a directory for the claims and names it in ``ENV_CLAIMS``; each worker, when it
starts, claims the lowest CPU that no live worker holds (a respawned worker takes the CPU of the
one it replaces) and pins every thread it has; the threads it starts later inherit the CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..obs.logs import event
from ..obs.processes import process_alive

log = logging.getLogger(__name__)

#: The directory of the workers' CPU claims, set by ``serve`` when workers are to be pinned.
ENV_CLAIMS = "TOKEN_EXCHANGE_CPU_CLAIMS"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def should_pin(mode: str, workers: int, cpus: Sequence[int]) -> bool:
    """``auto``: pin when there is one worker per CPU we may use, and more than one CPU; and
    workers are processes (free-threaded Python runs granian's workers as threads of one)."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return mode == "auto" and gil and 1 < workers == len(cpus)


@contextlib.contextmanager
def claims_directory(pin: bool) -> Iterator[None]:
    """While ``serve`` runs: ``ENV_CLAIMS`` names a fresh directory of claims, if ``pin`` and
    one can be made (else the workers run unpinned, and a warning says why)."""
    os.environ.pop(ENV_CLAIMS, None)
    if not pin:
        yield
        return
    try:
        directory = tempfile.mkdtemp(prefix="token-exchange-cpus-")
    except OSError as e:
        print(f"warning: workers not pinned to CPUs: no temporary directory ({e})", file=sys.stderr)
        yield
        return
    os.environ[ENV_CLAIMS] = directory
    try:
        yield
    finally:
        os.environ.pop(ENV_CLAIMS, None)
        shutil.rmtree(directory, ignore_errors=True)


def claim_cpu(
    directory: Path,
    cpus: Sequence[int],
    pid: int,
    *,
    alive: Callable[[int], bool] = process_alive,
) -> int | None:
    """Claim for ``pid`` the first of ``cpus`` that no live process holds; None if all are."""
    with open(directory / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for cpu in cpus:
            claim = directory / f"cpu-{cpu}"
            try:
                holder = int(claim.read_text() or "0")
            except (FileNotFoundError, ValueError):
                holder = 0
            if holder > 0 and holder != pid and alive(holder):
                continue
            claim.write_text(str(pid))
            return cpu
    return None


#: How long a worker that found every CPU claimed keeps trying (a reload starts the new
#: workers before it stops the old ones), and how often.
RETRY_SECONDS = 60.0
RETRY_INTERVAL = 0.5


def pin_this_worker(*, retry_seconds: float = RETRY_SECONDS) -> int | None:
    """Under ``serve`` with pinning on: claim a CPU and run every thread of this process on
    it. Returns the CPU, or None: not asked, the system refused, or every CPU is held (then a
    thread keeps trying for ``retry_seconds``, as the workers a reload replaces stop)."""
    directory = os.environ.get(ENV_CLAIMS)
    if not directory:
        return None
    cpu = _claim_and_pin(Path(directory))
    if cpu is None and retry_seconds > 0:
        threading.Thread(
            target=_retry, args=(Path(directory), retry_seconds), name="cpu-claim", daemon=True
        ).start()
    return cpu


def _retry(directory: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(RETRY_INTERVAL)
        if _claim_and_pin(directory, quiet=True) is not None:
            return
    event(log, "worker_not_pinned", level=logging.WARNING, reason="no free cpu")


def _claim_and_pin(directory: Path, *, quiet: bool = False) -> int | None:
    try:
        cpu = claim_cpu(directory, usable_cpus(), os.getpid())
        if cpu is None:
            return None
        for thread in _threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(thread, {cpu})
    except OSError as e:
        if not quiet:
            event(log, "worker_not_pinned", level=logging.WARNING, reason=type(e).__name__)
        return None
    event(log, "worker_pinned", pid=os.getpid(), cpu=cpu)
    return cpu


def _threads() -> list[int]:
    """This process's threads (their ids), or just the calling one where /proc is missing."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
