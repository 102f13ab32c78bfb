"""An OTLP/gRPC receiver tabgrab did not write, for the trace and metrics tests
(crates/tabgrab/tests/traces.rs, crates/tabgrab/tests/telemetry.rs,
crates/pizzeria/tests/traces.rs).

Built on the official OpenTelemetry protocol definitions (PyPI's `opentelemetry-proto`) and
grpcio. It serves the OTLP TraceService and MetricsService on 127.0.0.1 (a free port, printed
as `port N` on stdout once it listens). It appends each received span as one JSON line to the
first file: trace id, span id, parent span id, name, kind, service, attributes, status (code
and message) and events
(each with its attributes); and each received data point to the second: metric name, unit,
type (sum, gauge, histogram), whether a sum is monotonic and cumulative, service, attributes,
and the value (a sum's or gauge's `value`; a histogram's `count`, `sum`, `bounds` and
`bucket_counts`).

    python otlp_receiver.py SPANS.jsonl METRICS.jsonl
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
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
                                "status": {
                                    "code": trace_pb2.Status.StatusCode.Name(span.status.code),
                                    "message": span.status.message,
                                },
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


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, path):
        self.path = path

    def Export(self, request, context):
        lines = []
        for resource_metrics in request.resource_metrics:
            resource = {a.key: value(a.value) for a in resource_metrics.resource.attributes}
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    common = {
                        "name": metric.name,
                        "unit": metric.unit,
                        "type": kind,
                        "service": resource.get("service.name"),
                    }
                    if kind == "sum":
                        common["monotonic"] = data.is_monotonic
                        common["cumulative"] = (
                            data.aggregation_temporality
                            == metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                        )
                    for point in data.data_points:
                        line = dict(common)
                        line["attributes"] = {a.key: value(a.value) for a in point.attributes}
                        if kind == "histogram":
                            line["count"] = point.count
                            line["sum"] = point.sum
                            line["bounds"] = list(point.explicit_bounds)
                            line["bucket_counts"] = list(point.bucket_counts)
                        else:
                            line["value"] = value_of(point)
                        lines.append(json.dumps(line))
        with open(self.path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def value_of(point):
    kind = point.WhichOneof("value")
    return getattr(point, kind) if kind else None


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(sys.argv[1]), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(sys.argv[2]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
