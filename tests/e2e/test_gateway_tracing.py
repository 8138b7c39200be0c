"""Tracing in the gateway: W3C traceparent joined or started, a server span per request and a
client span per upstream attempt exported as OTLP/HTTP JSON, sampling, propagation upstream,
the trace id in the access log, and no slowdown when the collector is down."""
import json
import re
import time

import requests

from collector import Collector
from harness import base_config, free_port

TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def traced(origin_addr, endpoint, ratio, **extra):
    def make(port, admin_port):
        cfg = base_config(port, admin_port, workers=2)
        cfg["clusters"] = [{"name": "app", "instances": [origin_addr], "timeout": "3s"}]
        cfg["routes"] = [{"name": "api", "match": {"prefix": "/api/"}, "cluster": "app"}]
        cfg["tracing"] = {"endpoint": endpoint, "sample_ratio": ratio}
        cfg.update(extra)
        return cfg

    return make


def upstream_traceparent(origin):
    rec = origin.wait_requests(1, timeout=3)[-1]
    m = TP.match(rec.header("traceparent") or "")
    assert m, f"upstream traceparent: {rec.header('traceparent')!r}"
    return m.group(1), m.group(2), m.group(3)


def test_new_trace_gets_server_and_client_spans(gateways, origin):
    with Collector() as col:
        g = gateways.start(config=traced(origin.addr, col.endpoint, 1.0))
        r = requests.get(g.url("/api/items?x=1"), headers={"User-Agent": "t"}, timeout=5)
        assert r.status_code == 200
        trace, parent, flags = upstream_traceparent(origin)
        assert flags == "01"
        spans = col.wait_for_spans(2, timeout=10)
    server = [s for s in spans if s["kind"] == 2]
    client = [s for s in spans if s["kind"] == 3]
    assert len(server) == 1 and len(client) == 1, spans
    server, client = server[0], client[0]
    assert server["trace_id"] == client["trace_id"] == trace
    assert server["parent_span_id"] is None
    assert client["parent_span_id"] == server["span_id"]
    assert client["span_id"] == parent  # the upstream's parent is the client span
    assert server["service_name"] == "polis-gateway"
    a = server["attributes"]
    assert a["http.request.method"] == "GET" and a["url.path"] == "/api/items"
    assert a["http.response.status_code"] == 200 and a["http.route"] == "api"
    assert a["client.address"] == "127.0.0.1" and a["url.scheme"] == "http"
    assert client["attributes"]["http.response.status_code"] == 200
    assert client["attributes"]["server.port"] == int(origin.addr.rsplit(":", 1)[1])
    assert server["start_ns"] <= client["start_ns"] <= client["end_ns"] <= server["end_ns"]


def test_incoming_sampled_context_is_continued(gateways, origin):
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with Collector() as col:
        g = gateways.start(config=traced(origin.addr, col.endpoint, 0.0))
        r = requests.get(g.url("/api/x"), timeout=5,
                         headers={"traceparent": f"00-{trace}-{span}-01",
                                  "tracestate": "vendor=1"})
        assert r.status_code == 200
        up_trace, up_parent, flags = upstream_traceparent(origin)
        rec = origin.wait_requests(1)[-1]
        assert rec.header("tracestate") == "vendor=1"
        assert len(rec.header_all("traceparent")) == 1  # replaced, not added
        spans = col.wait_for_spans(2, timeout=10)
    assert up_trace == trace and flags == "01" and up_parent != span
    server = [s for s in spans if s["kind"] == 2][0]
    assert server["trace_id"] == trace and server["parent_span_id"] == span


def test_unsampled_requests_propagate_but_export_nothing(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")
    trace = "0af7651916cd43dd8448eb211c80319c"
    with Collector() as col:
        g1 = gateways.start(config=traced(a.addr, col.endpoint, 1.0))
        g0 = gateways.start(config=traced(b.addr, col.endpoint, 0.0))
        # sampled=0 from the client wins over ratio 1.0
        requests.get(g1.url("/api/x"), timeout=5,
                     headers={"traceparent": f"00-{trace}-b7ad6b7169203331-00"})
        up_trace, _, flags = upstream_traceparent(a)
        assert up_trace == trace and flags == "00"
        # ratio 0 and no context: a new trace, not sampled, still propagated
        requests.get(g0.url("/api/y"), timeout=5)
        up_trace, _, flags = upstream_traceparent(b)
        assert up_trace != trace and flags == "00"
        time.sleep(1.5)  # more than one export period
        assert col.spans == []


def test_access_log_carries_the_trace_id(gateways, origin, tmp_path):
    log = tmp_path / "access.log"
    with Collector() as col:
        g = gateways.start(config=traced(origin.addr, col.endpoint, 1.0, access_log=str(log)))
        requests.get(g.url("/api/logged"), timeout=5)
        trace, _, _ = upstream_traceparent(origin)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not log.read_text().strip():
            time.sleep(0.05)
    line = json.loads(log.read_text().splitlines()[0])
    assert line["trace_id"] == trace


def test_collector_down_never_slows_the_gateway(gateways, origin):
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    g = gateways.start(config=traced(origin.addr, dead, 1.0))
    t0 = time.monotonic()
    with requests.Session() as s:
        for i in range(300):
            assert s.get(g.url(f"/api/n{i}"), timeout=5).status_code == 200
    assert time.monotonic() - t0 < 20
    m = requests.get(f"http://127.0.0.1:{g.admin_port}/metrics", timeout=5).text
    dropped = float(re.search(r"^polis_tracing_spans_dropped (\S+)$", m, re.M).group(1))
    assert dropped > 0
