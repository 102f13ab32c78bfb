"""An OTLP/gRPC trace receiver tabgrab did not write, for the trace tests
(crates/tabgrab/tests/traces.rs, crates/pizzeria/tests/traces.rs).

Built on the official OpenTelemetry protocol definitions (PyPI's `opentelemetry-proto`) and
grpcio. It serves the OTLP TraceService on 127.0.0.1 (a free port, printed as `port N` on
stdout once it listens) and appends each received span as one JSON line to the file given as
its argument: trace id, span id, parent span id, name, kind, service, attributes and events
(each with its attributes).

    python otlp_receiver.py SPANS.jsonl
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.path = path

    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                                "service": resource.get("service.name"),
                                "attributes": {a.key: value(a.value) for a in span.attributes},
                                "events": [
                                    {
                                        "name": e.name,
                                        "attributes": {
                                            a.key: value(a.value) for a in e.attributes
                                        },
                                    }
                                    for e in span.events
                                ],
                            }
                        )
                    )
        with open(self.path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(sys.argv[1]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
