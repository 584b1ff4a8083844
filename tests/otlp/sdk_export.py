#!/usr/bin/env python3
"""Exports logs and spans with the real OpenTelemetry Python SDK and its OTLP exporters,
for the integration tests in tests/it/otlp.rs. Prints one JSON object on stdout.

Usage:
  sdk_export.py http  <base-url> <token> <run>       logs + spans over HTTP/protobuf, a wrong token
  sdk_export.py retry <base-url> <token> <run> <n>   n spans in one export, retried as told
  sdk_export.py grpc  <host:port> <token> <run>     logs (gzip) + spans over gRPC, a wrong token
  sdk_export.py grpc-retry <host:port> <token> <run> <n>   n spans over gRPC, retried as told
  sdk_export.py grpc-calls <host:port>               raw unary calls from stdin (JSON list of
                                                     {path, token, body_hex, gzip}), each
                                                     answered as {code, details, trailers, response_hex}
"""
import json
import logging
import sys
import time

from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk._logs._internal.export.in_memory_log_exporter import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RESOURCE = Resource.create({
    "service.name": "game-server",
    "service.version": "3.1.4",
    "deployment.environment.name": "prod",
    "game.id": "g1",
})


def spans(run, count=None):
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=RESOURCE)
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("croupier-it")
    if count is not None:
        for i in range(count):
            with tracer.start_as_current_span("user.login", attributes={"game.user_id": f"{run}-r{i}"}):
                pass
        return mem.get_finished_spans()
    with tracer.start_as_current_span("session.start", attributes={
            "game.user_id": f"{run}-u1", "game.session_id": f"{run}-s1", "game.platform": "android",
            "game.region": "eu-west", "game.country": "fr", "game.app_version": "1.4.0",
            "session.entry_point": "push"}):
        with tracer.start_as_current_span("GET /api/profile"):
            pass
    with tracer.start_as_current_span("monetization.purchase_success", attributes={
            "game.user_id": f"{run}-u1", "game.platform": "android", "game.region": "eu-west",
            "monetization.order_id": f"{run}-order-1", "monetization.price_usd": 4.99,
            "monetization.sku_id": "gems_500"}):
        pass
    return mem.get_finished_spans()


def logs(run):
    mem = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=RESOURCE)
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    logger = lp.get_logger("croupier-it")
    t = time.time_ns()
    logger.emit(LogRecord(timestamp=t, event_name="progression.complete", body="level 7 done", attributes={
        "game.user_id": f"{run}-u2", "game.session_id": f"{run}-s2", "game.platform": "ios",
        "game.country": "de", "progression.level_id": 7, "progression.stars": 3,
        "loot": ["sword", "shield"]}))
    logger.emit(LogRecord(timestamp=t, body="not an event", attributes={"game.user_id": f"{run}-u2"}))
    logger.emit(LogRecord(timestamp=t, attributes={"event.name": "boss_killed", "game.user_id": f"{run}-u2",
                                                   "boss": "hydra"}))
    return mem.get_finished_logs()


def grpc_exporters(addr, headers, timeout, compression=None):
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
    c = Compression.Gzip if compression == "gzip" else Compression.NoCompression
    kw = dict(endpoint=f"http://{addr}", insecure=True, headers=headers, timeout=timeout, compression=c)
    return GrpcLogExporter(**kw), GrpcSpanExporter(**kw)


def grpc_calls(addr, calls):
    import base64
    import grpc
    from google.rpc.error_details_pb2 import RetryInfo
    from google.rpc.status_pb2 import Status
    out = []
    with grpc.insecure_channel(addr) as channel:
        for c in calls:
            call = channel.unary_unary(c["path"])
            metadata = (("authorization", f"Bearer {c['token']}"),)
            compression = grpc.Compression.Gzip if c.get("gzip") else None
            try:
                response, rpc = call.with_call(bytes.fromhex(c["body_hex"]), metadata=metadata, timeout=10,
                                               compression=compression)
                got = {"code": rpc.code().name, "response_hex": response.hex()}
            except grpc.RpcError as e:
                got = {"code": e.code().name, "details": e.details(), "trailers": {}}
                for k, v in e.trailing_metadata() or ():
                    if k == "grpc-status-details-bin":
                        status = Status.FromString(v)
                        info = RetryInfo()
                        details = [d.type_url for d in status.details]
                        if status.details and status.details[0].Unpack(info):
                            details.append(info.retry_delay.seconds)
                        got["trailers"][k] = [status.code, status.message, details]
                    elif k.endswith("-bin"):
                        got["trailers"][k] = base64.b64encode(v).decode()
                    else:
                        got["trailers"][k] = v
            out.append(got)
    return out


def name(result):
    return result.name


def main():
    mode, base = sys.argv[1:3]
    if mode == "grpc-calls":
        print(json.dumps(grpc_calls(base, json.load(sys.stdin))))
        return
    token, run = sys.argv[3:5]
    headers = {"Authorization": f"Bearer {token}"}
    if mode == "http":
        out = {}
        out["logs"] = name(OTLPLogExporter(endpoint=f"{base}/v1/logs", headers=headers, timeout=10).export(logs(run)))
        out["spans"] = name(OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, timeout=10).export(spans(run)))
        bad = {"Authorization": "Bearer not-the-token-of-any-game"}
        out["wrong_token"] = name(OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=bad, timeout=10).export(spans(run + "-bad")))
        print(json.dumps(out))
    elif mode == "retry":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        count = int(sys.argv[5])
        start = time.time()
        exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, timeout=120)
        result = exporter.export(spans(run, count))
        print(json.dumps({"result": name(result), "seconds": round(time.time() - start, 1)}))
    elif mode == "grpc":
        # gRPC metadata keys are lower case.
        grpc_headers = {"authorization": f"Bearer {token}"}
        log_exp, _ = grpc_exporters(base, grpc_headers, 10, "gzip")
        _, span_exp = grpc_exporters(base, grpc_headers, 10)
        out = {"logs": name(log_exp.export(logs(run))), "spans": name(span_exp.export(spans(run)))}
        _, bad = grpc_exporters(base, {"authorization": "Bearer not-the-token-of-any-game"}, 10)
        out["wrong_token"] = name(bad.export(spans(run + "-bad")))
        print(json.dumps(out))
    elif mode == "grpc-retry":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        count = int(sys.argv[5])
        start = time.time()
        _, exporter = grpc_exporters(base, {"authorization": f"Bearer {token}"}, 60)
        result = exporter.export(spans(run, count))
        print(json.dumps({"result": name(result), "seconds": round(time.time() - start, 1)}))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
