"""test_tracing.py: distributed tracing end to end: a client -> the gateway -> hello A -> hello B
(A's GET /chain calls B with polis_fetch), every hop exporting to collector.py: one trace, each
span the child of the one before, and the sampling decision carried along the whole chain."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from collector import Collector
from harness import SANITIZER_PATTERNS, base_config, free_port, port_accepts

TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
SERVER, CLIENT = 2, 3


@pytest.fixture
def hello_bin(polis_bin):
    """The hello example of the same build as the gateway under test (POLIS_HELLO overrides)."""
    b = os.environ.get("POLIS_HELLO") or os.path.join(os.path.dirname(polis_bin),
                                                      "polis-example-hello")
    if not os.access(b, os.X_OK):
        pytest.skip(f"hello example not built: {b}")
    return b


class Service:
    """One hello instance; stop() checks that it exits 0 without a sanitizer report."""

    def __init__(self, binary, name, tmp_path, args):
        self.port = free_port()
        self.name = name
        self.log = tmp_path / f"hello-{name}-{self.port}.log"
        self._err = open(self.log, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.port}", "--name", name] + list(args),
            stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL, env=env)
        # Ready when it accepts: an HTTP probe would be traced, and its span would get in the way.
        deadline = time.monotonic() + 10
        while not port_accepts(self.port):
            assert self.proc.poll() is None, f"hello {name} exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"hello {name} did not start"
            time.sleep(0.05)

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def url(self, path):
        return f"http://{self.addr}{path}"

    def stop(self):
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append("did not exit after SIGTERM")
        if self.proc.returncode != 0:
            problems.append(f"exit status {self.proc.returncode}")
        self._err.close()
        data = self.log.read_bytes()
        if any(p.search(data) for p in SANITIZER_PATTERNS):
            problems.append("sanitizer report")
        return [f"hello {self.name}: {p}\n{data[-3000:].decode(errors='replace')}"
                for p in problems]


@pytest.fixture
def services(hello_bin, tmp_path):
    started = []

    def start(name, *args):
        s = Service(hello_bin, name, tmp_path, args)
        started.append(s)
        return s

    yield start
    problems = []
    for s in reversed(started):
        problems += s.stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def chain(gateways, services, col, ratio):
    """B, then A calling B, both tracing to col; a gateway routing /chain and /echo to A."""
    b = services("b", "--trace-endpoint", col.endpoint)
    a = services("a", "--trace-endpoint", col.endpoint, "--next", f"http://{b.addr}")

    def make(port, admin_port):
        cfg = base_config(port, admin_port, workers=2)
        cfg["clusters"] = [{"name": "a", "instances": [a.addr], "timeout": "5s"}]
        cfg["routes"] = [
            {"name": "chain", "match": {"prefix": "/chain"}, "cluster": "a"},
            {"name": "echo", "match": {"prefix": "/echo"}, "cluster": "a"},
        ]
        cfg["tracing"] = {"endpoint": col.endpoint, "sample_ratio": ratio,
                          "service_name": "polis-gateway"}
        return cfg

    return gateways.start(config=make), a, b


def wait_trace(col, trace_id, n, timeout=15.0):
    """The spans of one trace, once n of them arrived (and a moment for any extra one)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in col.spans if s["trace_id"] == trace_id]
        if len(spans) >= n:
            time.sleep(0.3)
            return [s for s in col.spans if s["trace_id"] == trace_id]
        assert time.monotonic() < deadline, (
            f"{len(spans)} spans of trace {trace_id} within {timeout}s; all: {col.spans}")
        time.sleep(0.05)


def one(spans, service, kind, **attrs):
    found = [s for s in spans if s["service_name"] == service and s["kind"] == kind
             and all(s["attributes"].get(k.replace("_", ".")) == v for k, v in attrs.items())]
    assert len(found) == 1, (service, kind, attrs, spans)
    return found[0]


def check_chain(spans, a, b):
    """The five spans of one GET /chain, each the child of the one before. Returns them."""
    assert len(spans) == 5, spans
    assert {s["service_name"] for s in spans} == {"polis-gateway", "hello"}
    gw_server = one(spans, "polis-gateway", SERVER)
    gw_client = one(spans, "polis-gateway", CLIENT)
    a_server = one(spans, "hello", SERVER, url_path="/chain")
    a_client = one(spans, "hello", CLIENT)
    b_server = one(spans, "hello", SERVER, url_path="/hello/chained")
    assert len({s["trace_id"] for s in spans}) == 1
    assert len({s["span_id"] for s in spans}) == 5
    assert gw_client["parent_span_id"] == gw_server["span_id"]
    assert a_server["parent_span_id"] == gw_client["span_id"]
    assert a_client["parent_span_id"] == a_server["span_id"]
    assert b_server["parent_span_id"] == a_client["span_id"]

    g = gw_server["attributes"]
    assert g["http.request.method"] == "GET" and g["http.response.status_code"] == 200
    assert g["url.path"] == "/chain"
    assert gw_client["attributes"]["server.port"] == a.port

    for s, path in ((a_server, "/chain"), (b_server, "/hello/chained")):
        x = s["attributes"]
        assert s["name"] == f"GET {path}"
        assert x["http.request.method"] == "GET" and x["url.path"] == path
        assert x["http.response.status_code"] == 200 and x["url.scheme"] == "http"
        assert x["network.protocol.version"] == "1.1"
        assert x["client.address"] == "127.0.0.1" and isinstance(x["client.port"], int)
        assert s["status"] == 0  # unset: not an error
    assert b_server["attributes"]["server.address"] == "127.0.0.1"
    assert b_server["attributes"]["server.port"] == b.port
    assert b_server["attributes"]["user_agent.original"] == "polis-fetch"
    c = a_client["attributes"]
    assert a_client["name"] == "GET"
    assert c["http.request.method"] == "GET" and c["http.response.status_code"] == 200
    assert c["server.address"] == "127.0.0.1" and c["server.port"] == b.port
    assert c["url.full"] == f"http://{b.addr}/hello/chained"

    # Each child lies within its parent (one machine, one clock).
    nested = [gw_server, gw_client, a_server, a_client, b_server]
    for parent, child in zip(nested, nested[1:]):
        assert parent["start_ns"] <= child["start_ns"] <= child["end_ns"] <= parent["end_ns"], (
            parent, child)
    return gw_server


def get_chain(g, headers=None):
    r = requests.get(g.url("/chain"), headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["instance"] == "a" and body["next_status"] == 200
    assert body["next"]["instance"] == "b" and body["next"]["who"] == "chained"
    return body


def echo_traceparent(g, headers=None):
    """The traceparent A received for a GET /echo through the gateway: (trace, parent, flags)."""
    r = requests.get(g.url("/echo"), headers=headers or {}, timeout=10)
    assert r.status_code == 200
    hdrs = r.json()["headers"]
    m = TP.match(hdrs.get("traceparent", ""))
    assert m, hdrs
    return m.group(1), m.group(2), m.group(3), hdrs


def test_one_trace_from_the_gateway_through_two_services(gateways, services):
    with Collector() as col:
        g, a, b = chain(gateways, services, col, 1.0)
        get_chain(g)
        deadline = time.monotonic() + 15
        while not [s for s in col.spans if s["parent_span_id"] is None]:
            assert time.monotonic() < deadline, col.spans
            time.sleep(0.05)
        roots = [s for s in col.spans if s["parent_span_id"] is None]
        assert len(roots) == 1, roots
        spans = wait_trace(col, roots[0]["trace_id"], 5)
        root = check_chain(spans, a, b)
        assert root["parent_span_id"] is None
        assert root["service_name"] == "polis-gateway"
        assert len(col.spans) == 5  # nothing else was exported
        assert not col.errors


def test_incoming_sampled_context_is_continued_through_the_chain(gateways, services):
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with Collector() as col:
        g, a, b = chain(gateways, services, col, 0.0)  # the caller's decision wins
        get_chain(g, {"traceparent": f"00-{trace}-{span}-01", "tracestate": "vendor=1"})
        spans = wait_trace(col, trace, 5)
        root = check_chain(spans, a, b)
        assert root["parent_span_id"] == span
        # A receives the trace (with its tracestate) from the gateway's client span.
        up_trace, up_parent, flags, hdrs = echo_traceparent(
            g, {"traceparent": f"00-{trace}-{span}-01", "tracestate": "vendor=1"})
        assert (up_trace, flags) == (trace, "01") and up_parent != span
        assert hdrs.get("tracestate") == "vendor=1"


def test_unsampled_context_propagates_but_nothing_is_exported(gateways, services):
    trace, span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    unsampled = {"traceparent": f"00-{trace}-{span}-00"}
    with Collector() as col:
        g, a, b = chain(gateways, services, col, 1.0)  # sampled=0 wins over ratio 1.0
        get_chain(g, unsampled)
        up_trace, up_parent, flags, _ = echo_traceparent(g, unsampled)
        assert (up_trace, flags) == (trace, "00") and up_parent != span
        # A sampled request afterwards: once its spans are in, so would be any earlier ones.
        barrier = "1bf92f3577b34da6a3ce929d0e0e4737"
        get_chain(g, {"traceparent": f"00-{barrier}-{span}-01"})
        check_chain(wait_trace(col, barrier, 5), a, b)
        time.sleep(1.2)  # and one more export period
        assert {s["trace_id"] for s in col.spans} == {barrier}
        assert len(col.spans) == 5


def test_ratio_zero_exports_nothing_but_still_propagates(gateways, services):
    with Collector() as col:
        g, a, b = chain(gateways, services, col, 0.0)
        get_chain(g)
        up_trace, up_parent, flags, _ = echo_traceparent(g)
        assert flags == "00" and up_trace != "0" * 32 and up_parent != "0" * 16
        up_trace2, _, _, _ = echo_traceparent(g)
        assert up_trace2 != up_trace  # a new trace per request
        # Parent-based: an incoming sampled context is recorded even at ratio 0.
        barrier = "2bf92f3577b34da6a3ce929d0e0e4738"
        get_chain(g, {"traceparent": f"00-{barrier}-00f067aa0ba902b7-01"})
        check_chain(wait_trace(col, barrier, 5), a, b)
        time.sleep(1.2)
        assert {s["trace_id"] for s in col.spans} == {barrier}
        assert len(col.spans) == 5


def test_service_alone_starts_and_continues_traces(services):
    """Without the gateway: a request to A with no context makes A's server span a root."""
    with Collector() as col:
        b = services("b", "--trace-endpoint", col.endpoint)
        a = services("a", "--trace-endpoint", col.endpoint, "--next", f"http://{b.addr}")
        r = requests.get(a.url("/chain"), timeout=10)
        assert r.status_code == 200 and r.json()["next"]["instance"] == "b"
        spans = col.wait_for_spans(3, timeout=15)
        time.sleep(0.3)
        spans = list(col.spans)
        assert len(spans) == 3 and len({s["trace_id"] for s in spans}) == 1
        a_server = one(spans, "hello", SERVER, url_path="/chain")
        a_client = one(spans, "hello", CLIENT)
        b_server = one(spans, "hello", SERVER, url_path="/hello/chained")
        assert a_server["parent_span_id"] is None
        assert a_client["parent_span_id"] == a_server["span_id"]
        assert b_server["parent_span_id"] == a_client["span_id"]
        # B gone: A's client span is an error, and so is its server span (it answers 502).
        col.clear()
        assert b.stop() == []
        r = requests.get(a.url("/chain"), timeout=10)
        assert r.status_code == 502
        spans = col.wait_for_spans(2, timeout=15)
        a_server = one(spans, "hello", SERVER, url_path="/chain")
        a_client = one(spans, "hello", CLIENT)
        assert a_client["status"] == 2 and a_client["attributes"]["error.type"] == (
            "connection_error")
        assert a_server["status"] == 2
        assert a_server["attributes"]["http.response.status_code"] == 502
        # A logged the failure; the line carries the request's id and its trace id.
        r2 = requests.get(a.url("/chain"), headers={"X-Request-Id": "chain-rid-7"}, timeout=10)
        assert r2.status_code == 502
        deadline = time.monotonic() + 5
        warned = []
        while not warned and time.monotonic() < deadline:
            warned = [json.loads(l) for l in a.log.read_text().splitlines()
                      if l.startswith("{") and "chain-rid-7" in l]
            time.sleep(0.05)
        assert warned, a.log.read_text()
        assert warned[0]["level"] == "warn" and len(warned[0]["trace_id"]) == 32
