"""The fault clients of ``bench/run.py --fault``: an asyncio HTTP/1.1 load (stdlib only).

Run by run.py as a subprocess::

    python bench/httpload.py fault --url http://127.0.0.1:8080/token --bodies bodies.txt \\
        --clients 16 [--retry honour|immediate] --out records.json

Each of ``--clients`` clients POSTs its form body (line ``i % lines`` of ``--bodies``) over one
keep-alive connection, again and again, reconnecting when the server closes it. Every answer is
recorded: start, end (``time.monotonic()``, which is system-wide on Linux) and the status, or
``timeout`` (no answer within ``--timeout``), ``error`` (the connection failed or broke) or, for
requests still open when the load stops, ``pending``. Between requests a client waits as a
well-behaved client would: after a 503 or 429 it honours ``Retry-After``, capped at 2 s, with
+/-20 % jitter (1 s when the header is missing); after any other failure 1 s +/-20 %; after a 200
``--think`` seconds (it has its token). ``--retry immediate`` drops the waits after failures, for a
harsher load. Commands on stdin: ``mark T`` makes it print ``first200 T2`` for the first 200 that
arrives at or after monotonic time T; ``stop`` (or end of input) stops it, and it writes the
records to ``--out``. It stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

RETRY_AFTER_CAP = 2.0
JITTER = 0.2
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20


class Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when needed."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post_form(self, body: bytes) -> tuple[int, dict[str, str]]:
        """POST ``body`` (form-encoded); the status and headers of the answer, body read.

        A kept-alive connection the server closed while idle is retried once on a new one (as
        HTTP clients do), so that it does not count as a failed request."""
        if self.writer is not None:
            try:
                return await self._post_once(body)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    raise
                self.close()
        return await self._post_once(body)

    async def _post_once(self, body: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
            + body
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            raise ValueError("answer head too large")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size > MAX_BODY_BYTES:
                    raise ValueError("chunk too large")
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > MAX_BODY_BYTES:
                raise ValueError("answer too large")
            await self.reader.readexactly(length)
        else:  # no length: the body ends with the connection
            await self.reader.read(MAX_BODY_BYTES)
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers


async def _post(conn: Connection, body: bytes, timeout: float) -> tuple[int | str, dict[str, str]]:
    try:
        return await asyncio.wait_for(conn.post_form(body), timeout)
    except TimeoutError:
        conn.close()
        return "timeout", {}
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ValueError, IndexError):  # fmt: skip
        conn.close()
        return "error", {}


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - not cryptographic


def client_delay(status: int | str, headers: dict[str, str], retry: str, think: float) -> float:
    """How long a fault client waits before its next request."""
    if status == 200:
        return think
    if retry == "immediate":
        return 0.05 if status == "error" else 0.0  # no hot loop against a closed port
    if status in (429, 503):
        try:
            seconds = float(headers.get("retry-after", "1"))
        except ValueError:
            seconds = 1.0
        return _jittered(min(max(seconds, 0.0), RETRY_AFTER_CAP))
    return _jittered(1.0)


# -- fault clients --------------------------------------------------------------------------------


@dataclass
class FaultLoad:
    url: str
    bodies: list[bytes]
    clients: int
    retry: str
    think: float
    timeout: float
    records: list[tuple[float, float, int | str]] = field(default_factory=list)
    in_flight: dict[int, float] = field(default_factory=dict)
    mark: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, i: int) -> None:
        conn = Connection(self.url)
        body = self.bodies[i % len(self.bodies)]
        await asyncio.sleep(random.uniform(0, 0.05))  # noqa: S311 - spread the first requests
        try:
            while not self.stop.is_set():
                start = self.in_flight[i] = time.monotonic()
                status, headers = await _post(conn, body, self.timeout)
                end = time.monotonic()
                del self.in_flight[i]
                self.records.append((start, end, status))
                if status == 200 and self.mark is not None and end >= self.mark:
                    print(f"first200 {end}", flush=True)
                    self.mark = None
                delay = client_delay(status, headers, self.retry, self.think)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
        finally:
            conn.close()

    async def commands(self) -> None:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            words = (await reader.readline()).split()
            if not words or words[0] == b"stop":
                self.stop.set()
                return
            if words[0] == b"mark":
                self.mark = float(words[1])


async def _fault(args: argparse.Namespace) -> None:
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    load = FaultLoad(args.url, bodies, args.clients, args.retry, args.think, args.timeout)
    tasks = [asyncio.create_task(load.client(i)) for i in range(args.clients)]
    print("ready", flush=True)
    commands = asyncio.create_task(load.commands())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.stop.wait(), args.max_seconds)
    load.stop.set()
    stopped = time.monotonic()
    # Clients waiting between requests stop at once; requests in flight are given up.
    await asyncio.wait(tasks, timeout=0.5)
    pending = [(start, stopped, "pending") for start in load.in_flight.values()]
    for task in tasks:
        task.cancel()
    commands.cancel()
    Path(args.out).write_text(json.dumps({"records": load.records + pending}))
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fault = sub.add_parser("fault", help="fault clients (see the module docstring)")
    fault.add_argument("--url", required=True, help="the token endpoint")
    fault.add_argument("--bodies", required=True, help="form bodies, one per line")
    fault.add_argument("--clients", type=int, required=True)
    fault.add_argument("--retry", choices=["honour", "immediate"], default="honour")
    fault.add_argument("--think", type=float, default=1.0, help="seconds after a 200")
    fault.add_argument("--timeout", type=float, default=15.0, help="seconds per request")
    fault.add_argument("--max-seconds", type=float, default=300.0)
    fault.add_argument("--out", required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_fault(args))


if __name__ == "__main__":
    main()
