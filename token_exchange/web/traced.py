"""The server span of each request (OpenTelemetry's HTTP semantic conventions), outermost in
the app: a request shed for overload is traced too. Installed only when tracing is on.

The span names the method and the route (``POST /token``); it records the path but never the
query string (tokens sent in a URL are refused, and must not reach a trace on the way), the
caller's address, the status, and, from the view, the client, audience, outcome and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..obs.tracing import Tracing

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: How much of a User-Agent, and of a path, a span keeps (what the caller wrote).
MAX_USER_AGENT = 256
MAX_PATH = 512


class TracedRequests:
    """WSGI middleware: one server span per request, but for ``skip_paths``."""

    def __init__(
        self,
        app: WsgiApp,
        tracing: Tracing,
        *,
        routes: Iterable[str],
        skip_paths: Iterable[str],
        trust_incoming: bool,
    ) -> None:
        self.app = app
        self.tracing = tracing
        self.routes = frozenset(routes)
        self.skip_paths = frozenset(skip_paths)
        self.trust_incoming = trust_incoming

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO") or "/"
        if path in self.skip_paths:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        known = method in _METHODS
        route = path if path in self.routes else None
        attributes: dict[str, Any] = {
            "http.request.method": method if known else "_OTHER",
            "url.path": path[:MAX_PATH],
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
            "network.protocol.version": environ.get("SERVER_PROTOCOL", "").removeprefix("HTTP/"),
        }
        if not known:
            attributes["http.request.method_original"] = method[:32]
        if route is not None:
            attributes["http.route"] = route
        if (address := environ.get("REMOTE_ADDR")) is not None:
            attributes["client.address"] = address
        if (agent := environ.get("HTTP_USER_AGENT")) is not None:
            attributes["user_agent.original"] = agent[:MAX_USER_AGENT]
        name = f"{method if known else 'HTTP'} {route}" if route else (method if known else "HTTP")
        request = self.tracing.begin(name, environ, attributes, link_only=not self.trust_incoming)
        span = request.span

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = int(status[:3])
            span.set_attribute("http.response.status_code", code)
            if code >= 500:  # a server's 4xx is the caller's error, not ours
                self.tracing.failed(span, str(code))
            return start_response(status, headers, exc_info)

        try:
            answer = self.app(environ, start)
        except BaseException as e:
            request.end(e)
            raise
        request.end()
        return answer


_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
