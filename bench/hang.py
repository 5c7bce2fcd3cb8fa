"""A dependency that hangs on demand, for the fault mode of ``bench/run.py`` (stdlib only).

    python bench/hang.py --port 9400 --jwks slow-jwks.json [--hang]

One asyncio HTTP/1.1 server on 127.0.0.1 that plays both slow dependencies of the fault
scenarios:

- ``POST /permissions``: the permissions API of ``https://slow.example.test`` (always allows,
  like ``bench/fakes.py``, and grants ``slow:read`` as well as ``countries:read``);
- ``GET /slow-jwks.json``: the JWKS of the second issuer (the file given with ``--jwks``).

In **hang** mode it reads each request and then never answers: the connection is held open,
costing one idle coroutine, until the client gives up or the mode changes. In **normal** mode it
answers at once, with keep-alive. ``POST /control/hang`` and ``POST /control/recover`` switch
modes (recover closes the connections held so far); ``GET /control/state`` reports the mode and
how many requests are being held. ``--hang`` starts in hang mode.

Bounded: at most ``MAX_CONNECTIONS`` connections (more are closed at once), a request is held for
at most ``MAX_HOLD`` seconds, and the process exits when its parent goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from pathlib import Path

MAX_CONNECTIONS = 10_000
MAX_HOLD = 300.0
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20

ALLOW = json.dumps(
    {
        "allow": True,
        "scopes": ["countries:read", "slow:read"],
        "claims": {"custom_access_to_countries": ["nl", "de", "be"]},
        "ttl": 60,
    }
).encode()


class Fake:
    def __init__(self, jwks: bytes, hang: bool) -> None:
        self.routes = {("POST", "/permissions"): ALLOW, ("GET", "/slow-jwks.json"): jwks}
        self.hanging = hang
        self.recovered = asyncio.Event()
        self.connections = 0
        self.held = 0
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        try:
            while await self.one_request(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> bool:  # fmt: skip
        """Serve one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            return False
        if length:
            await reader.readexactly(length)
        path = target.split("?", 1)[0]
        close = headers.get("connection", "").lower() == "close"

        if path.startswith("/control/"):
            if method == "POST" and path == "/control/hang":
                self.hanging = True
                self.recovered = asyncio.Event()
            elif method == "POST" and path == "/control/recover":
                self.hanging = False
                self.recovered.set()
            state = {"hanging": self.hanging, "held": self.held, "served": self.served,
                     "connections": self.connections}  # fmt: skip
            await self.answer(writer, 200, json.dumps(state).encode(), close)
            return not close

        body = self.routes.get((method, path))
        if self.hanging and body is not None:
            await self.hold(reader)
            return False  # held connections are closed, never answered
        self.served += 1
        await self.answer(writer, 200 if body else 404, body or b"", close)
        return not close

    async def hold(self, reader: asyncio.StreamReader) -> None:
        """Never answer: wait until the client closes, the fake recovers, or MAX_HOLD."""
        self.held += 1
        eof = asyncio.ensure_future(reader.read())  # returns at EOF (the client gave up)
        recovered = asyncio.ensure_future(self.recovered.wait())
        try:
            await asyncio.wait({eof, recovered}, timeout=MAX_HOLD,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            eof.cancel()
            recovered.cancel()
            self.held -= 1

    @staticmethod
    async def answer(writer: asyncio.StreamWriter, status: int, body: bytes, close: bool) -> None:
        reason = {200: "OK", 404: "Not Found"}[status]
        extra = "Connection: close\r\n" if close else ""
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n")  # fmt: skip
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    fake = Fake(Path(args.jwks).read_bytes(), args.hang)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", args.port, backlog=4096)
    parent = os.getppid()
    async with server:
        while os.getppid() == parent:  # exit when run.py goes away
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", required=True, help="JWKS file served at /slow-jwks.json")
    parser.add_argument("--hang", action="store_true", help="start in hang mode")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
