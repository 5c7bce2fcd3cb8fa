"""OpenTelemetry collector stand-ins: they receive OTLP trace exports as a collector does
(OTLP/HTTP with protobuf bodies, or OTLP/gRPC) and decode them with opentelemetry-proto."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector decoded it."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    links: list[tuple[str, str]]
    resource: dict[str, Any]

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class Received:
    """What the collector received: the raw bodies and the spans decoded from them."""

    bodies: list[bytes] = field(default_factory=list)
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, raw: bytes) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=s.name,
                            kind=KINDS[s.kind],
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            resource=resource,
                        )
                    )
        with self._lock:
            self.bodies.append(raw)
            self.spans.extend(spans)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]

    def as_text(self) -> str:
        """Everything received, as JSON text, to look for what must never be in it."""
        return "\n".join(
            str(MessageToDict(trace_service_pb2.ExportTraceServiceRequest.FromString(b)))
            for b in self.bodies
        )


class HttpCollector(Received):
    """OTLP/HTTP: ``POST /v1/traces`` with an ``application/x-protobuf`` body."""

    def __init__(self, server: HTTPServer) -> None:
        super().__init__()
        self.server = server
        self.content_types: list[str] = []
        server.expect_request("/v1/traces", method="POST").respond_with_handler(self._handle)

    @property
    def endpoint(self) -> str:
        return self.server.url_for("/v1/traces")

    def _handle(self, request: Request) -> Response:
        raw = request.get_data()
        self.content_types.append(request.content_type or "")
        self.add(trace_service_pb2.ExportTraceServiceRequest.FromString(raw), raw)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return Response(answer, content_type="application/x-protobuf")


class GrpcCollector(Received):
    """OTLP/gRPC: the collector's TraceService on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        received = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                received.add(request, request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)
