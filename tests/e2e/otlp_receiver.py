"""A test OTLP trace receiver: gRPC and HTTP/protobuf on loopback, decoding
what it receives with the official protobuf definitions (PyPI's
opentelemetry-proto) and writing each span as one JSON line.

    python3 otlp_receiver.py OUT [--delay SECONDS] [--fail] [--count]
                                 [--tls CERT KEY]

prints `ready grpc=PORT http=PORT` once both listen. `--delay` answers each
export that much later; `--fail` refuses every export (gRPC UNAVAILABLE,
HTTP 503) after decoding it; `--count` (for benchmarks) writes nothing
but, when its stdin closes, `spans=N`: how many it decoded; `--tls` serves
gRPC over TLS with that certificate and key (PEM).
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()
COUNT = [0]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def record(request, transport, out):
    """Appends each span of `request` to `out` as a JSON line (or, without
    `out`, counts them)."""
    if out is None:
        n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with LOCK:
            COUNT[0] += n
        return
    lines = []
    for resource_spans in request.resource_spans:
        resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(json.dumps({
                    "transport": transport,
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {a.key: value(a.value) for a in span.attributes},
                    "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                }))
    with LOCK, open(out, "a") as f:
        for line in lines:
            f.write(line + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--count", action="store_true")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    if args.count:
        args.out = None

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record(request, "grpc", args.out)
            time.sleep(args.delay)
            if args.fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "refusing, as asked")
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    if args.tls:
        cert, key = (open(path, "rb").read() for path in args.tls)
        grpc_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Http(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            record(request, "http", args.out)
            time.sleep(args.delay)
            answer = b"" if args.fail else trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(503 if args.fail else 200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"ready grpc={grpc_port} http={http.server_address[1]}", flush=True)
    # Ends with the test: when its stdin closes.
    sys.stdin.read()
    server.stop(0)
    if args.count:
        print(f"spans={COUNT[0]}", flush=True)


if __name__ == "__main__":
    main()
