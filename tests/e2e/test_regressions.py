"""test_regressions.py: end-to-end tests for bugs fixed in the gateway after review: smuggling
after an early response, requests replayed on timeouts and stale connections, the wrong timeout
for uploads to a stalled upstream, access log gaps, tunnel half-closes and limits, a second
gateway sharing the port, HTTP/1.0 requests without Host. Each fails on the old behaviour."""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
import requests

from harness import (Closed, RawClient, base_config, free_port, quick_args,
                     request_bytes, simple_get, tcp_queued, wait_for)


def one_cluster(origin, cluster=None, workers=1, **over):
    """A config factory: one cluster "app" on origin behind a catch-all route."""

    def make(port, admin):
        cfg = base_config(port, admin, workers=workers)
        cl = {"name": "app", "instances": [origin.addr], "timeout": "3s"}
        cl.update(cluster or {})
        cfg["clusters"] = [cl]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        cfg.update(over)
        return cfg

    return make


# ---- 1. smuggling after an early response ------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
# The body repeats this unit and ends with SMUGGLED. Unsent body bytes parsed as a request from
# (almost) any offset give "X...XGET /smuggled": the attack does not depend on where the
# gateway's buffer happened to be cut.
SMUGGLE_UNIT = b"X" * 990 + SMUGGLED


def smuggle_body(n):
    return (SMUGGLE_UNIT * (n // len(SMUGGLE_UNIT) + 2))[-n:]


class Sender:
    """Sends data on a client socket from a thread, as fast as the peer takes it, until done,
    stopped or failed (the gateway closing on an unfinished upload is legitimate)."""

    def __init__(self, sock, data, block=1 << 16):
        self.sock, self.data, self.block = sock, data, block
        self.sent = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while self.sent < len(self.data) and not self.stop.is_set():
                n = self.sock.send(self.data[self.sent:self.sent + self.block])
                self.sent += n
        except OSError:
            pass

    def join(self):
        self.stop.set()
        self.t.join(5)


def settle(origin_port, rec, base, want=None, timeout=1.0):
    """Bytes of rec's body that reached the origin side (read along with the head + queued in
    the kernel), once the count stops moving (or reaches want)."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = tcp_queued(origin_port, rec.peer_port)
        v = None if q is None else base + q
        if v is not None and v == want:
            return v
        if v != last:
            last, since = v, time.monotonic()
        elif v is not None and time.monotonic() - since > 0.15:
            return v
        time.sleep(0.01)
    return last


def early_request(path, n, delay, hold):
    mode = f"early status=403 delay={delay} hold={hold}"
    return request_bytes("POST", path, headers=[("Content-Length", str(n)),
                                                ("X-Origin-Mode", mode)])


def wait_early_rec(origin, path):
    recs = wait_for(lambda: [r for r in origin.snapshot() if r.target == path], timeout=3)
    assert recs, f"{path} did not reach the origin"
    return recs[0]


@pytest.fixture
def smuggle_gw(gateways, make_origin):
    origin = make_origin("early")
    # A small receive buffer at the origin makes the bytes the kernel holds between the gateway
    # and a non-reading origin steady from one connection to the next (measured below).
    origin.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    g = gateways.start(config=one_cluster(origin, {"keepalive": 0}))
    return g, origin


def measure_capacity(g, origin, path, first=0, rest=12 << 20):
    """Body bytes that the path to a non-reading origin holds once the gateway stalls: first
    sent and left to flow, then rest as fast as the gateway takes it."""
    with RawClient(g.port) as c:
        c.send(early_request(path, 32 << 20, delay=1.5, hold=0) + b"x" * first)
        rec = wait_early_rec(origin, path)
        if first:
            settle(origin.port, rec, rec.early_buffered, want=first, timeout=0.6)
        s = Sender(c.sock, b"y" * rest)
        capacity = settle(origin.port, rec, rec.early_buffered, timeout=3)
        s.join()
    return capacity


def test_early_response_never_smuggles_the_body(smuggle_gw):
    """The origin answers 403 to a POST before reading its body. The old gateway left the body
    bytes it had read but not forwarded in the client buffer and parsed them as the next
    request, so a body ending in a request reached the origin as one. That needs the whole body
    read and only part of it forwarded when the answer comes: the upstream's capacity is
    measured first, then the body is sent in two parts so that its tail (less than one read)
    arrives when the upstream has room for only part of it, at a few offsets. Then bodies too
    large for the path: one 403, then the connection closes."""
    g, origin = smuggle_gw
    flood = measure_capacity(g, origin, "/calibrate-1")
    assert flood and flood > 20000, f"could not measure the upstream's capacity: {flood}"
    # in two steps the kernel holds a little more: measure it that way, as the tests send
    capacity = measure_capacity(g, origin, "/calibrate-2", first=flood - 4000, rest=100000)

    phase2 = 16000  # less than one 16 KiB read, so it is read at once
    kept_open = []
    for room in (3000, 8000, 13000):
        path = f"/upload-{room}"
        phase1 = capacity - room
        n = phase1 + phase2
        body = smuggle_body(n)
        assert body.endswith(SMUGGLED)
        with RawClient(g.port, timeout=5) as c:
            c.send(early_request(path, n, delay=0.8, hold=1) + body[:phase1])
            rec = wait_early_rec(origin, path)
            settle(origin.port, rec, rec.early_buffered, want=phase1, timeout=0.6)
            c.send(body[phase1:])
            r = c.read_response(timeout=5)
            assert r.status == 403, r
            closed = c.wait_closed(timeout=0.6)
            assert c.buf == b"", (
                f"a second response after the early 403 (body {n} bytes): {c.buf[:300]!r}")
            if not closed:
                kept_open.append((rec, n))
    for n in (4 << 20, 8 << 20):
        with RawClient(g.port, timeout=5) as c:
            c.send(early_request(f"/big-{n}", n, delay=0.5, hold=1))
            s = Sender(c.sock, smuggle_body(n))
            t = time.monotonic()
            r = c.read_response(timeout=5)
            assert r.status == 403, r
            assert c.wait_closed(timeout=2), f"not closed after the early 403: {c.buf[:200]!r}"
            assert time.monotonic() - t < 3
            s.join()
    time.sleep(0.3)
    smuggled = [r for r in origin.snapshot() if "smuggled" in (r.target or "")]
    assert not smuggled, f"the request hidden in a body reached the origin: {smuggled}"
    for rec, n in kept_open:  # keep-alive is right only when the whole body was forwarded
        assert wait_for(lambda: rec.body_len == n, timeout=3), (
            f"the connection stayed open after an early 403 although only {rec.body_len} of "
            f"{n} body bytes were forwarded")


# ---- 2. a POST is never sent twice -------------------------------------------------------------


def posts(origin, path):
    return [r for r in origin.snapshot() if r.method == "POST" and r.target == path]


@pytest.mark.parametrize("body", [b"", b"hello"], ids=["empty", "small-body"])
def test_timeout_never_replays_post(gateways, origin, body):
    """The old gateway treated a timeout on a reused pooled connection like a stale connection
    and sent the request again on a fresh one: the origin got the POST twice."""
    g = gateways.start(config=one_cluster(origin, {"timeout": "500ms"}))
    with RawClient(g.port, timeout=5) as c:
        c.send(request_bytes("GET", "/warm"))  # leaves a pooled connection to reuse
        assert c.read_response().status == 200
        t = time.monotonic()
        c.send(request_bytes("POST", "/slow", body=body,
                             headers=[("Content-Length", str(len(body))),
                                      ("X-Origin-Mode", "slow delay=2")]))
        r = c.read_response(timeout=5)
        took = time.monotonic() - t
    assert r.status == 504, r
    assert took < 1.5, f"504 after {took:.2f}s with a 500ms upstream timeout"
    time.sleep(0.3)
    seen = posts(origin, "/slow")
    assert len(seen) == 1, f"the origin got the POST {len(seen)} times: {seen}"


def test_stale_pooled_connection_retries_get_not_post(gateways, origin):
    """The origin closes a pooled keep-alive connection as the next request arrives (its idle
    timeout racing the reuse): a GET is retried on a fresh connection, a POST is not (502), and
    reaches the origin at most once."""
    origin.set("close_reused")
    g = gateways.start(config=one_cluster(origin))
    with RawClient(g.port, timeout=5) as c:
        c.send(request_bytes("GET", "/warm"))
        assert c.read_response().status == 200
        c.send(request_bytes("GET", "/get-on-stale"))
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/get-on-stale", r
        gets = [x for x in origin.snapshot() if x.target == "/get-on-stale"]
        assert len(gets) == 2 and gets[0].seq > 1 and gets[1].seq == 1, gets
    m = requests.get(f"http://127.0.0.1:{g.admin_port}/metrics", timeout=5).text
    assert 'polis_upstream_retries_total{cluster="app"} 1' in m.splitlines(), m
    for path, body in (("/post-empty", b""), ("/post-body", b"hello")):
        with RawClient(g.port, timeout=5) as c:
            c.send(request_bytes("GET", "/warm-" + path[1:]))  # a fresh pooled connection
            assert c.read_response().status == 200
            c.send(request_bytes("POST", path, body=body,
                                 headers=[("Content-Length", str(len(body)))]))
            r = c.read_response()
        time.sleep(0.2)
        seen = posts(origin, path)
        assert len(seen) <= 1, f"the origin got {path} {len(seen)} times: {seen}"
        assert r.status == 502, r


# ---- 3. upload to an upstream that never reads -------------------------------------------------


def test_upload_to_stalled_upstream_is_504_not_408(gateways, make_origin):
    """The client sends as fast as it can, the upstream stops reading: the client is not the
    one stalling, so the upstream's timeout (504) applies, not the client's body_read (408)."""
    origin = make_origin("stalled")
    g = gateways.start(config=one_cluster(origin, {"timeout": "2s"},
                                          timeouts={"header_read": "3s", "body_read": "1s",
                                                    "idle": "10s", "drain": "3s"}))
    n = 16 << 20
    with RawClient(g.port, timeout=8) as c:
        c.send(request_bytes("POST", "/upload", headers=[
            ("Content-Length", str(n)), ("X-Origin-Mode", "early status=200 delay=10")]))
        s = Sender(c.sock, b"u" * n)
        t = time.monotonic()
        try:
            r = c.read_response(timeout=8)
        except Closed:
            r = None
        took = time.monotonic() - t
        s.join()
    assert r is None or r.status != 408, f"408 after {took:.2f}s: the client was blamed"
    assert r is None or r.status == 504, r
    assert 1.5 < took < 4.5, f"answered after {took:.2f}s with a 2s upstream timeout"


# ---- 4. access log -----------------------------------------------------------------------------

ALOG_FIELDS = {"ts": str, "request_id": str, "client": str, "method": str, "path": str,
               "host": str, "status": int, "bytes_received": int, "bytes_sent": int,
               "duration_ms": (int, float), "upstream": str, "route": str, "cluster": str}


def read_log(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    return [ln for ln in text.split("\n") if ln]


def check_log_line(line):
    e = json.loads(line)
    assert set(e) >= set(ALOG_FIELDS), f"missing {set(ALOG_FIELDS) - set(e)}: {line}"
    for k, t in ALOG_FIELDS.items():
        assert isinstance(e[k], t) and not isinstance(e[k], bool), f"{k} of {line}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["ts"]), e["ts"]
    assert e["request_id"] and e["client"] == "127.0.0.1", line
    assert 100 <= e["status"] <= 599, line
    assert e["bytes_received"] >= 0 and e["bytes_sent"] >= 0 and e["duration_ms"] >= 0, line
    return e


@pytest.fixture
def logged(gateways, origin, tmp_path):
    log = tmp_path / "access.log"
    g = gateways.start(config=one_cluster(origin, access_log=str(log)))
    return g, origin, log


def test_access_log_bad_request_has_no_stale_fields(logged):
    g, origin, log = logged
    with RawClient(g.port) as c:
        c.send(request_bytes("GET", "/first-secret?token=abc"))
        assert c.read_response().status == 200
        c.send(b"GET /second HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        r = c.read_response()
        assert r.status == 400, r
    lines = wait_for(lambda: read_log(log) if len(read_log(log)) >= 2 else None, timeout=3)
    assert lines and len(lines) == 2, f"expected 2 access log lines: {read_log(log)}"
    entries = [check_log_line(ln) for ln in lines]
    assert entries[0]["status"] == 200 and "first-secret" in entries[0]["path"]
    bad = [ln for ln, e in zip(lines, entries) if e["status"] == 400]
    assert len(bad) == 1, lines
    assert "first-secret" not in bad[0] and "token" not in bad[0], (
        f"the 400 line carries the previous request's fields: {bad[0]}")
    assert entries[1]["request_id"] != entries[0]["request_id"]


def wait_log_entries(log, n, timeout=4.0):
    lines = wait_for(lambda: read_log(log) if len(read_log(log)) >= n else None, timeout=timeout)
    assert lines, f"expected {n} access log lines, got {read_log(log)}"
    return [check_log_line(ln) for ln in lines]


def test_access_log_client_gone_mid_body_is_499(logged):
    """The client goes away in the middle of its upload: the request was cut short and still
    gets its line, with 499 (the old gateway wrote none)."""
    g, origin, log = logged
    c = RawClient(g.port)
    c.send(request_bytes("POST", "/upload-gone", headers=[("Content-Length", "100000")])
           + b"x" * 1000)
    assert wait_for(lambda: origin.connections >= 1, timeout=2)
    time.sleep(0.1)
    c.close()
    entries = wait_log_entries(log, 1)
    assert len(entries) == 1, entries
    e = entries[0]
    assert (e["status"], e["method"], e["path"]) == (499, "POST", "/upload-gone"), e
    assert e["bytes_received"] >= 1000 and e["bytes_sent"] == 0, e



def test_access_log_client_reset_before_slow_response_is_499(logged):
    """The client resets its connection while the origin takes 1 s: nothing is answered to it,
    so its line says 499."""
    g, origin, log = logged
    c = RawClient(g.port)
    c.send(request_bytes("GET", "/slow-gone", headers=[("X-Origin-Mode", "slow delay=1")]))
    assert origin.wait_requests(1, timeout=2), "the request did not reach the origin"
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # a reset, not a FIN (which could be a half-close)
    entries = wait_log_entries(log, 1)
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["path"] == "/slow-gone" and e["cluster"] == "app", e
    assert e["status"] == 499, f"nothing was answered, yet the line says {e['status']}: {e}"


def test_client_fin_while_waiting_drops_the_exchange(logged):
    """The client sends its request and closes its side (FIN) while the origin takes 1 s: the
    gateway takes it as gone (as nginx does), drops the exchange at once instead of writing the
    answer to a dead socket, and logs 499."""
    g, origin, log = logged
    c = RawClient(g.port)
    c.send(request_bytes("GET", "/fin-gone", headers=[("X-Origin-Mode", "slow delay=1")]))
    assert origin.wait_requests(1, timeout=2), "the request did not reach the origin"
    t0 = time.monotonic()
    c.sock.shutdown(socket.SHUT_WR)
    assert c.wait_closed(timeout=0.8)  # closed, and well before the answer would come
    assert time.monotonic() - t0 < 0.8
    entries = wait_log_entries(log, 1)
    assert [(e["path"], e["status"], e["bytes_sent"]) for e in entries] == [("/fin-gone", 499, 0)]
    c.close()


def test_access_log_lines_are_json_with_documented_fields(logged):
    g, origin, log = logged
    assert simple_get(g.port, "/a?x=1").status == 200
    with RawClient(g.port) as c:
        c.send(request_bytes("POST", "/b", body=b"12345"))
        assert c.read_response().status == 200
        c.send(b"\x01garbage\r\n\r\n")
        assert c.read_response().status == 400
    lines = wait_for(lambda: read_log(log) if len(read_log(log)) >= 3 else None, timeout=3)
    assert lines and len(lines) == 3, read_log(log)
    a, b, bad = [check_log_line(ln) for ln in lines]
    assert (a["method"], a["path"], a["host"], a["status"]) == ("GET", "/a?x=1", "test.local", 200)
    assert a["upstream"] == origin.addr and a["route"] == "route-0" and a["cluster"] == "app"
    assert b["method"] == "POST" and b["bytes_received"] >= 5 and b["bytes_sent"] > 0
    assert bad["status"] == 400 and bad["upstream"] == "" and bad["cluster"] == ""
    assert len({a["request_id"], b["request_id"], bad["request_id"]}) == 3


# ---- 5. upgraded connections (WebSocket-like tunnels) ------------------------------------------


def upgrade(g, final=b"bye"):
    c = RawClient(g.port, timeout=5)
    c.send(request_bytes("GET", "/ws", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ("X-Origin-Mode", f"upgrade final={final.decode()}")]))
    r = c.read_response()
    assert r.status == 101, r
    return c


def recv_exactly(c, n, timeout=3.0):
    deadline = time.monotonic() + timeout
    while len(c.buf) < n:
        if not c._fill(deadline):
            raise Closed(f"closed after {len(c.buf)} of {n} bytes", c.buf, c.reset)
    out, c.buf = c.buf[:n], c.buf[n:]
    return out


def test_tunnel_passes_half_close_on(gateways, origin):
    """The client ends its side of an upgraded connection (shutdown SHUT_WR) and still gets all
    that the server sends afterwards; the old gateway closed the whole tunnel on the client's
    EOF."""
    g = gateways.start(config=one_cluster(origin))
    with upgrade(g, final=b"final-after-eof") as c:
        c.send(b"ping-1")
        assert recv_exactly(c, 6) == b"ping-1"
        c.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 3
        while c._fill(deadline):
            pass
        assert c.buf == b"final-after-eof", f"after the half-close the client got {c.buf!r}"
    rec = [r for r in origin.snapshot() if r.target == "/ws"]
    assert rec and rec[0].tunnel_data == b"ping-1", rec


def test_tunnel_outlives_request_timeout(gateways, origin):
    """timeouts.request bounds a request, not a tunnel that has switched protocols."""
    g = gateways.start(config=one_cluster(origin, timeouts={
        "header_read": "3s", "body_read": "3s", "idle": "10s", "drain": "3s", "request": "1s"}))
    with upgrade(g) as c:
        c.send(b"one")
        assert recv_exactly(c, 3) == b"one"
        time.sleep(1.4)
        try:
            c.send(b"two")
            got = recv_exactly(c, 3)
        except (Closed, OSError) as e:
            pytest.fail(f"the tunnel was cut by the 1s request timeout: {e!r}")
        assert got == b"two"


# ---- 6. a second gateway on the same port ------------------------------------------------------


def test_second_gateway_on_same_port_is_refused(gateways, origin, polis_bin, tmp_path):
    g = gateways.start(upstreams=[origin.addr])
    args = quick_args(g.port, free_port(), [origin.addr])
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=0:detect_leaks=1")
    t = time.monotonic()
    p = subprocess.Popen([polis_bin] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=env, cwd=str(tmp_path))
    try:
        _, err = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=5)
        pytest.fail("a second gateway started on a port that another gateway listens on")
    took = time.monotonic() - t
    err = err.decode("utf-8", "replace")
    assert p.returncode != 0, err
    assert "another process listens there" in err, err
    assert "Sanitizer" not in err, err
    assert took < 3, f"took {took:.1f}s to refuse"
    for i in range(4):  # the first still serves, every connection of it
        r = simple_get(g.port, f"/still-{i}")
        assert r.status == 200 and r.json()["path"] == f"/still-{i}", r


# ---- 7. HTTP/1.0 without Host ------------------------------------------------------------------


def test_http10_without_host_gets_host_upstream(gateways, origin):
    g = gateways.start(upstreams=[origin.addr])
    with RawClient(g.port) as c:
        c.send(b"GET /ten HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    recs = origin.snapshot()
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec.version == "HTTP/1.1" and rec.target == "/ten", rec
    assert rec.header_all("Host") == [origin.addr], rec.headers
    assert rec.body_len == 0 and not rec.chunked
