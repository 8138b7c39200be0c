"""test_upstream.py: misbehaving upstreams: refused, reset, garbage, truncated, silent, slow,
1xx and bodiless responses; the client must get the right error fast and the gateway must keep
serving normal requests afterwards."""

import time

import pytest

from harness import Closed, RawClient, Timeout, dead_port, request_bytes, simple_get

ERR = {502: "bad_gateway", 504: "gateway_timeout"}


@pytest.fixture
def gw(gateways, origin):
    """A gateway with a 1 s upstream timeout in front of one origin."""
    g = gateways.start(upstreams=[origin.addr], extra=["--upstream-timeout", "1s"])
    return g, origin


def get_once(g, path="/m", timeout=6.0, headers=()):
    with RawClient(g.port, timeout=timeout) as c:
        c.send(request_bytes("GET", path, headers=headers))
        return c.read_response(timeout=timeout)


def assert_error(r, status):
    assert r.status == status, r
    assert r.header("Content-Type", "").startswith("application/json"), r
    j = r.json()
    assert j["status"] == status and j["error"] == ERR[status], j
    assert j.get("request_id"), j


def assert_still_serves(g, origin):
    origin.set("echo")
    r = simple_get(g.port, "/normal")
    assert r.status == 200 and r.json()["path"] == "/normal", r


def test_refused_is_502_fast(gateways, origin):
    g = gateways.start(upstreams=[f"127.0.0.1:{dead_port()}"], extra=["--upstream-timeout", "1s"])
    t = time.monotonic()
    r = get_once(g)
    assert time.monotonic() - t < 1.0, "a refused connection must fail fast"
    assert_error(r, 502)
    # and again: the gateway survives repeated refusals (502, or 503 once marked unhealthy)
    for _ in range(3):
        assert get_once(g).status in (502, 503)


def test_refused_then_other_cluster_serves(gateways, origin):
    dead = f"127.0.0.1:{dead_port()}"

    def cfg(port, admin):
        from harness import base_config
        c = base_config(port, admin)
        c["clusters"] = [{"name": "dead", "instances": [dead], "connect_timeout": "1s"},
                         {"name": "live", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/dead/"}, "cluster": "dead"},
                       {"match": {"prefix": "/"}, "cluster": "live"}]
        return c

    g = gateways.start(config=cfg)
    assert_error(get_once(g, "/dead/x"), 502)
    assert_still_serves(g, origin)


def test_reset_is_502(gw):
    g, origin = gw
    origin.set("rst")
    assert_error(get_once(g), 502)
    assert_still_serves(g, origin)


def test_garbage_is_502(gw):
    g, origin = gw
    origin.set("garbage")
    assert_error(get_once(g), 502)
    assert_still_serves(g, origin)


def test_close_before_complete_head_is_502(gw):
    g, origin = gw
    origin.set("raw", data=b"HTTP/1.1 200 OK\r\nContent-Le")
    assert_error(get_once(g), 502)
    origin.set("raw", data=b"")
    assert_error(get_once(g), 502)
    assert_still_serves(g, origin)


@pytest.mark.parametrize("mode", ["close_after_head", "close_mid_body"])
def test_truncated_response_closes_client(gw, mode):
    g, origin = gw
    origin.set(mode, n=100000)
    t = time.monotonic()
    with RawClient(g.port) as c:
        c.send(request_bytes("GET", "/t"))
        try:
            r = c.read_response(timeout=5)
        except Closed:
            pass  # head forwarded, then the connection closed: the truncation is visible
        except Timeout:
            pytest.fail("the client hangs after the upstream closed mid-response")
        else:
            assert r.status == 502, f"a truncated response was passed as complete: {r}"
    assert time.monotonic() - t < 3
    assert_still_serves(g, origin)


def test_bad_chunked_response_closes_client(gw):
    g, origin = gw
    origin.set("raw", data=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\nzz\r\n", keep=1)
    with RawClient(g.port) as c:
        c.send(request_bytes("GET", "/t"))
        try:
            r = c.read_response(timeout=5)
            assert r.status == 502, r
        except Closed:
            pass
        except Timeout:
            pytest.fail("the client hangs after a chunked framing error from the upstream")
    assert_still_serves(g, origin)


def test_never_answers_is_504_after_timeout(gw):
    g, origin = gw
    origin.set("never", hold=10)
    t = time.monotonic()
    r = get_once(g, timeout=8)
    took = time.monotonic() - t
    assert_error(r, 504)
    assert 0.8 <= took <= 3.0, f"504 after {took:.2f}s with --upstream-timeout 1s"
    assert_still_serves(g, origin)


def test_slow_within_timeout_is_200(gw):
    g, origin = gw
    origin.set("slow", delay=0.5)
    r = get_once(g)
    assert r.status == 200 and r.json()["path"] == "/m"


@pytest.mark.parametrize("code,count", [(103, 1), (103, 2), (100, 1)])
def test_1xx_before_final(gw, code, count):
    g, origin = gw
    origin.set("info", code=code, count=count)
    with RawClient(g.port) as c:
        c.send(request_bytes("GET", "/info"))
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/info"
        assert all(i.status == code for i in r.interim), r.interim
        assert len(r.interim) <= count
        origin.set("echo")
        c.send(request_bytes("GET", "/after"))
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/after"


def test_extra_bytes_after_response_not_used_for_next_request(gw):
    """An upstream sending more than its Content-Length must not desync the pooled connection:
    the extra bytes never become the answer to another request."""
    g, origin = gw
    origin.set("raw", data=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                           b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", keep=1)
    with RawClient(g.port) as c:
        c.send(request_bytes("GET", "/1"))
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok"
        origin.set("echo")
        time.sleep(0.1)
        for i in range(4):
            c.send(request_bytes("GET", f"/n{i}"))
            r = c.read_response()
            assert r.body != b"smuggled", "an upstream's extra bytes answered another request"
            assert r.status == 200 and r.json()["path"] == f"/n{i}", r


def test_upstream_closes_idle_pooled_connection(gw):
    """The upstream closes a keep-alive connection while it sits in the pool: the next request
    must still succeed (a fresh connection), not fail with 502."""
    g, origin = gw
    origin.set("raw", data=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # then closes
    r = get_once(g)
    assert r.status == 200 and r.body == b"ok"
    time.sleep(0.2)
    origin.set("echo")
    for i in range(3):
        r = get_once(g, f"/after{i}")
        assert r.status == 200, r
