"""OpenTelemetry traces, configured the standard way (the ``OTEL_*`` environment variables).

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` is set (and ``OTEL_SDK_DISABLED`` is not ``true``, nor the exporter
``none``); off otherwise, and then nothing of OpenTelemetry is even imported. The SDK reads the
rest itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
its argument, ``OTEL_BSP_*`` (batch delays and sizes), ``OTEL_EXPORTER_OTLP_*`` (headers,
timeout, compression, certificates), ``OTEL_PROPAGATORS`` and the span limits. The protocol is
``http/protobuf`` unless ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` says ``grpc``.

Each app (one per worker, built after the fork) has its own ``Tracing``. The request's server
span makes it the current one (a context variable): the floors below open their spans with the
module's ``span()``, which costs one context-variable read when tracing is off.

What a span may carry: names of our own (client ids, audiences, outcomes, refusal reasons,
configured dependencies' addresses). Never a token, a secret, a claim value, a query string or
an ``Authorization`` header; an exception is recorded by its type alone, since its message may
quote what the caller sent.

May import: ``oauth``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ..oauth.errors import OAuthError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: Span kinds, by name (OpenTelemetry's ``SpanKind`` is imported only when tracing is on).
SERVER, CLIENT, INTERNAL = "SERVER", "CLIENT", "INTERNAL"

#: Protocols of the OTLP exporter (the OpenTelemetry specification's default first).
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")

#: Our attribute names (no semantic convention names an OAuth decision).
CLIENT_ID = "token_exchange.client_id"
AUDIENCE = "token_exchange.audience"
OUTCOME = "token_exchange.outcome"
REASON = "token_exchange.reason"
GRANT = "token_exchange.grant"


class TracingConfigError(ValueError):
    """The ``OTEL_*`` variables ask for what this service cannot do."""


def requested(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return _exporter_names(exporters) != ["none"]
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def problems(env: Mapping[str, str]) -> list[str]:
    """What is wrong with the tracing variables (empty when tracing is off or they are
    fine): checked before workers start, so a typo stops ``serve`` with one clear line."""
    if not requested(env):
        return []
    found = []
    names = _exporter_names(env.get("OTEL_TRACES_EXPORTER") or "otlp")
    for name in names:
        if name not in EXPORTERS:
            found.append(
                f"OTEL_TRACES_EXPORTER names {name!r}; the exporters are {', '.join(EXPORTERS)}"
            )
    if "otlp" in names:
        protocol = _protocol(env)
        if protocol not in PROTOCOLS:
            found.append(
                f"the OTLP protocol {protocol!r} is not supported; use {' or '.join(PROTOCOLS)}"
            )
    return found


def _exporter_names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _protocol(env: Mapping[str, str]) -> str:
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or PROTOCOLS[0]
    ).strip()


class _NoSpan:
    """What ``span()`` yields when tracing is off: attributes go nowhere."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()
_NOTHING = contextlib.nullcontext(NO_SPAN)

#: The tracing of the request this thread serves, if it is traced (set by the server span).
_active: ContextVar[Tracing | None] = ContextVar("token_exchange_tracing", default=None)


def span(
    name: str, kind: str = INTERNAL, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """``with span(...) as s:`` a child of the request's current span; nothing when the
    request is not traced."""
    tracing = _active.get()
    if tracing is None:
        return _NOTHING
    return tracing.child(name, kind, attributes)


def active() -> bool:
    """Whether this request is traced."""
    return _active.get() is not None


def inject(headers: MutableMapping[str, str]) -> None:
    """The current trace's context into an outbound request's ``headers`` (W3C
    ``traceparent``, or what ``OTEL_PROPAGATORS`` names)."""
    tracing = _active.get()
    if tracing is not None:
        tracing.propagator.inject(headers)


def failed(current: Any, error_type: str) -> None:
    """Mark span ``current`` as failed with ``error_type`` (an HTTP status, say)."""
    tracing = _active.get()
    if tracing is not None:
        tracing.failed(current, error_type)


def annotate(**attributes: Any) -> None:
    """Set ``attributes`` (None values left out) on the request's server span."""
    tracing = _active.get()
    if tracing is not None:
        server = tracing.server_span.get()
        if server is not None:
            server.set_attributes({k: v for k, v in attributes.items() if v is not None})


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), for the audit line; None when not traced."""
    tracing = _active.get()
    if tracing is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class Tracing:
    """One app's tracer provider, exporter(s) and propagator."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("token_exchange", _version())
        self.propagator = propagate.get_global_textmap()
        self._kinds = {
            SERVER: SpanKind.SERVER,
            CLIENT: SpanKind.CLIENT,
            INTERNAL: SpanKind.INTERNAL,
        }
        self._error = Status(StatusCode.ERROR)
        self._trace = trace
        #: The request's server span, for attributes known only at its end.
        self.server_span: ContextVar[Span | None] = ContextVar(
            "token_exchange_server_span", default=None
        )

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Tracing | None:
        """The tracing the environment asks for, or None. Raises ``TracingConfigError``."""
        if not requested(env):
            return None
        found = problems(env)
        if found:
            raise TracingConfigError("; ".join(found))
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create({SERVICE_VERSION: _version()})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "token-exchange"}))
        # The sampler (OTEL_TRACES_SAMPLER) and span limits are read from the environment.
        provider = TracerProvider(resource=resource)
        for name in _exporter_names(env.get("OTEL_TRACES_EXPORTER") or "otlp"):
            if name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            elif name == "otlp":
                provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is queued, then stop."""
        self.provider.shutdown()

    @contextlib.contextmanager
    def request(
        self,
        name: str,
        environ: Mapping[str, Any] | None,
        attributes: Mapping[str, Any],
        *,
        link_only: bool = False,
    ) -> Iterator[Span]:
        """The server span of one request, current while the request is served.

        ``environ``: the WSGI environ whose headers carry the caller's trace context (an
        incoming ``traceparent``); it is the parent, or, with ``link_only``, only linked to.
        """
        from opentelemetry.trace import Link

        parent = links = None
        if environ is not None:
            # A Getter by its methods (its class is imported only when tracing is on).
            incoming = self.propagator.extract(environ, getter=_ENVIRON_GETTER)  # type: ignore[arg-type]
            if link_only:
                context = self._trace.get_current_span(incoming).get_span_context()
                links = [Link(context)] if context.is_valid else None
            else:
                parent = incoming
        tracing_token = _active.set(self)
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=self._kinds[SERVER],
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as server:
            server_token = self.server_span.set(server)
            try:
                yield server
            except BaseException as e:
                self._failed(server, e)
                raise
            finally:
                self.server_span.reset(server_token)
                _active.reset(tracing_token)

    @contextlib.contextmanager
    def child(self, name: str, kind: str, attributes: Mapping[str, Any] | None) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name,
            kind=self._kinds[kind],
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as current:
            try:
                yield current
            except BaseException as e:
                self._failed(current, e)
                raise

    def _failed(self, current: Span, error: BaseException) -> None:
        """An operation that ended with ``error``: an OAuth refusal names its outcome and
        reason (an error only when it is ours, 5xx); anything else is an error, by type."""
        if isinstance(error, OAuthError):
            current.set_attribute(OUTCOME, error.error)
            if error.reason:
                current.set_attribute(REASON, error.reason)
            if error.status_code < 500:
                return
            error_type = error.error
        else:
            error_type = type(error).__qualname__
        current.set_attribute("error.type", error_type)
        current.set_status(self._error)

    def failed(self, current: Span, error_type: str) -> None:
        """Mark ``current`` as failed with ``error_type`` (an HTTP status, say)."""
        current.set_attribute("error.type", error_type)
        current.set_status(self._error)


class _EnvironGetter:
    """Headers out of a WSGI environ, for the propagator (``textmap.Getter``)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [name[5:].lower().replace("_", "-") for name in carrier if name.startswith("HTTP_")]


_ENVIRON_GETTER = _EnvironGetter()


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    # Each exporter reads its endpoint, headers, timeout, compression and certificates from
    # the OTEL_EXPORTER_OTLP_* variables itself.
    if _protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def _version() -> str:
    try:
        return metadata.version("token-exchange")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"
