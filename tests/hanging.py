"""A dependency on loopback that misbehaves on command: it hangs, fails, or answers.

``HangingServer`` speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to stand in
for a permissions API or a JWKS endpoint. In ``hang`` mode it reads each request and never
answers until ``release()``; it counts the requests that reached it and those it holds, so tests
prove isolation by counting rather than by timing.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from typing import Any, Literal

Mode = Literal["hang", "error", "ok"]
#: Longest a held request is kept, so that no test can leave a thread behind for long.
MAX_HOLD_SECONDS = 30


class HangingServer:
    def __init__(self, body: Any = None) -> None:
        self.mode: Mode = "hang"
        self.body = json.dumps(body if body is not None else {"allow": True, "ttl": 60}).encode()
        self.requests = 0
        self.held = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while outer._serve_one(self.rfile, self.wfile):
                    pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        """Let every held request go (its connection is closed without an answer)."""
        self._released.set()

    def hang_again(self) -> None:
        self._released = threading.Event()
        self.mode = "hang"

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def _serve_one(self, rfile: Any, wfile: Any) -> bool:
        """Read one request and deal with it per ``mode``; False ends the connection."""
        try:
            line = rfile.readline(65536)
            if not line:
                return False
            length = 0
            while (header := rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            rfile.read(length)
        except (OSError, ValueError):
            return False
        with self._lock:
            self.requests += 1
        if self.mode == "hang":
            with self._lock:
                self.held += 1
            self._released.wait(MAX_HOLD_SECONDS)
            with self._lock:
                self.held -= 1
            return False
        status, body = (
            ("500 Internal Server Error", b"{}")
            if self.mode == "error"
            else (
                "200 OK",
                self.body,
            )
        )
        try:
            wfile.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wfile.flush()
        except OSError:
            return False
        return True


def wait_until(condition: Any, seconds: float = 10.0) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
