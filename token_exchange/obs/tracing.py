"""OpenTelemetry traces, configured the standard way (the ``OTEL_*`` environment variables).

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` is set (and ``OTEL_SDK_DISABLED`` is not ``true``, nor the exporter
``none``); off otherwise, and then nothing of OpenTelemetry is set up here (no provider, no
exporter, no span: one context-variable read per span site). The SDK reads the
rest itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
its argument, ``OTEL_BSP_*`` (batch delays and sizes), ``OTEL_EXPORTER_OTLP_*`` (headers,
timeout, compression, certificates) and the span limits. Trace context is W3C's
(``traceparent``, ``tracestate``); baggage is neither read nor sent. The protocol is
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
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ..oauth.errors import OAuthError
from ..oauth.tokens import TokenRejected

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: Span kinds, by name (OpenTelemetry's ``SpanKind`` is imported only when tracing is on).
SERVER, CLIENT, INTERNAL = "SERVER", "CLIENT", "INTERNAL"

#: Protocols of the OTLP exporter (the OpenTelemetry specification's default first).
PROTOCOLS = ("http/protobuf", "grpc")
#: The SDK's own samplers (OTEL_TRACES_SAMPLER).
SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)
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
    # The SDK reads a sampler it does not know, or a ratio that is no number, as "sample
    # everything", and says so only in a log line: a typo would trace every request.
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip()
    if sampler and sampler not in SAMPLERS:
        found.append(
            f"OTEL_TRACES_SAMPLER names {sampler!r}; the samplers are {', '.join(SAMPLERS)}"
        )
    if sampler.endswith("traceidratio"):
        ratio = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ok = not ratio or 0.0 <= float(ratio) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            found.append(f"OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not {ratio!r}")
    # The batch processor's numbers: the SDK refuses some combinations by raising, which would
    # stop every worker as it starts.
    sizes = {}
    for name, default in _BSP_DEFAULTS.items():
        value = env.get(name, "").strip()
        try:
            sizes[name] = int(value) if value else default
        except ValueError:
            found.append(f"{name} must be a whole number, not {value!r}")
            continue
        if sizes[name] <= 0:
            found.append(f"{name} must be above 0")
    queue = sizes.get("OTEL_BSP_MAX_QUEUE_SIZE", 1)
    if sizes.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 0) > queue > 0:
        found.append("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not be above OTEL_BSP_MAX_QUEUE_SIZE")
    return found


#: The batch span processor's variables and the SDK's defaults.
_BSP_DEFAULTS = {
    "OTEL_BSP_MAX_QUEUE_SIZE": 2048,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
    "OTEL_BSP_SCHEDULE_DELAY": 5000,
    "OTEL_BSP_EXPORT_TIMEOUT": 30000,
}


def _exporter_names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _protocol(env: Mapping[str, str]) -> str:
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or PROTOCOLS[0]
    ).strip()


class _NoSpan:
    """What ``span()`` yields when the request is not traced or not sampled: attributes go
    nowhere."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()
_NOTHING = contextlib.nullcontext(NO_SPAN)


class _Traced:
    """The request this thread serves, when it is traced: its tracing, its server span, and
    whether that span records (a request the sampler left out makes no child spans, but still
    passes its trace context on)."""

    __slots__ = ("recording", "server", "tracing")

    def __init__(self, tracing: Tracing, server: Span) -> None:
        self.tracing = tracing
        self.server = server
        self.recording = server.is_recording()


#: Set by the server span (``Tracing.begin``) for the request this thread serves.
_traced: ContextVar[_Traced | None] = ContextVar("token_exchange_traced", default=None)


def span(
    name: str, kind: str = INTERNAL, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """``with span(...) as s:`` a child of the request's current span; nothing when the
    request is not traced, or not sampled."""
    traced = _traced.get()
    if traced is None or not traced.recording:
        return _NOTHING
    return _Child(traced.tracing, name, kind, attributes)


def traced() -> bool:
    """Whether this request is traced (sampled or not: its context is passed on)."""
    return _traced.get() is not None


def recording() -> bool:
    """Whether this request's spans are recorded (traced and sampled)."""
    traced = _traced.get()
    return traced is not None and traced.recording


def inject(headers: MutableMapping[str, str]) -> None:
    """The current trace's context into an outbound request's ``headers`` (W3C
    ``traceparent`` and ``tracestate``)."""
    traced = _traced.get()
    if traced is not None:
        traced.tracing.propagator.inject(headers)


def failed(current: Any, error_type: str) -> None:
    """Mark span ``current`` as failed with ``error_type`` (an HTTP status, say)."""
    traced = _traced.get()
    if traced is not None and current.is_recording():
        traced.tracing.failed(current, error_type)


def annotate(**attributes: Any) -> None:
    """Set ``attributes`` (None values left out) on the request's server span."""
    traced = _traced.get()
    if traced is not None and traced.recording:
        traced.server.set_attributes({k: v for k, v in attributes.items() if v is not None})


def trace_id() -> str | None:
    """The request's trace id (32 hex digits), for the audit line; None when not traced."""
    traced = _traced.get()
    if traced is None:
        return None
    context = traced.server.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class _Request:
    """A request's server span, current until ``end``."""

    __slots__ = ("_context", "_traced", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span, context: object, traced: object) -> None:
        self._tracing = tracing
        self.span = span
        self._context = context
        self._traced = traced

    def end(self, error: BaseException | None = None) -> None:
        try:
            if error is not None:
                self._tracing._failed(self.span, error)
        finally:
            _traced.reset(self._traced)  # type: ignore[arg-type]
            self._tracing._detach(self._context)  # type: ignore[arg-type]
            self.span.end()


class _Child:
    """A child span of the current one, current while it lasts (what the SDK's
    ``start_as_current_span`` does, without its two generator context managers)."""

    __slots__ = ("_attributes", "_kind", "_name", "_span", "_token", "_tracing")

    def __init__(
        self, tracing: Tracing, name: str, kind: str, attributes: Mapping[str, Any] | None
    ) -> None:
        self._tracing = tracing
        self._name = name
        self._kind = kind
        self._attributes = attributes

    def __enter__(self) -> Span:
        tracing = self._tracing
        self._span = tracing.tracer.start_span(
            self._name,
            kind=tracing._kinds[self._kind],
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._token = tracing._attach(tracing._in_context(self._span))
        return self._span

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        try:
            if error is not None:
                self._tracing._failed(self._span, error)
        finally:
            self._tracing._detach(self._token)
            self._span.end()


class Tracing:
    """One app's tracer provider, exporter(s) and propagator."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("token_exchange", _version())
        # W3C Trace Context only (traceparent, tracestate). Never baggage: it would carry what
        # a browser wrote to the company's permissions API, and its parser logs each bad entry.
        self.propagator = TraceContextTextMapPropagator()
        self._kinds = {
            SERVER: SpanKind.SERVER,
            CLIENT: SpanKind.CLIENT,
            INTERNAL: SpanKind.INTERNAL,
        }
        self._error = Status(StatusCode.ERROR)
        self._trace = trace
        self._attach, self._detach = context.attach, context.detach
        self._in_context = trace.set_span_in_context
        self._shut = False

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
        """Export what is queued, then stop (once: later calls do nothing)."""
        if not self._shut:
            self._shut = True
            self.provider.shutdown()

    def begin(
        self,
        name: str,
        environ: Mapping[str, Any] | None,
        attributes: Mapping[str, Any],
        *,
        link_only: bool = False,
    ) -> _Request:
        """The server span of one request, current until ``_Request.end``.

        ``environ``: the WSGI environ whose headers carry the caller's trace context (an
        incoming ``traceparent``); it is the parent, or, with ``link_only``, only linked to.
        """
        parent = links = None
        if environ is not None and "HTTP_TRACEPARENT" in environ:
            # A Getter by its methods (its class is imported only when tracing is on).
            incoming = self.propagator.extract(environ, getter=_ENVIRON_GETTER)  # type: ignore[arg-type]
            if link_only:
                from opentelemetry.trace import Link

                context = self._trace.get_current_span(incoming).get_span_context()
                links = [Link(context)] if context.is_valid else None
            else:
                parent = incoming
        server = self.tracer.start_span(
            name,
            context=parent,
            kind=self._kinds[SERVER],
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _Request(
            self, server, self._attach(self._in_context(server)), _traced.set(_Traced(self, server))
        )

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
        elif isinstance(error, TokenRejected):
            # The caller's token refused: its reason, and no error of ours.
            current.set_attribute(OUTCOME, "rejected")
            current.set_attribute(REASON, error.code)
            return
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
