"""test_features.py: the gateway's user-visible features end to end: CLI, admin, quick mode,
YAML routes, header rewriting, forwarding headers, keep-alive, bodies and the access log."""

import hashlib
import json
import os
import random
import re
import subprocess
import time

import pytest
import requests

from conftest import simple_config
from harness import (RawClient, base_config, pattern_chunks, pattern_sha256, request_bytes,
                     simple_get)


def run_polis(binary, *args, timeout=20):
    return subprocess.run([binary] + list(args), capture_output=True, text=True, timeout=timeout)


# ---- CLI ----------------------------------------------------------------------------------


def test_version(polis_bin):
    p = run_polis(polis_bin, "version")
    assert p.returncode == 0, p.stderr
    assert re.match(r"^polis \d+\.\d+\.\d+", p.stdout), p.stdout


GOOD = """\
listen: "127.0.0.1:18080"
admin: "127.0.0.1:19901"
clusters:
  - name: app
    instances: ["127.0.0.1:9001", {address: "127.0.0.1:9002", weight: 2}]
    timeout: 2s
routes:
  - match: {prefix: /api/}
    cluster: app
    strip_prefix: true
"""

BAD_CLUSTER = """\
listen: "127.0.0.1:18080"
clusters:
  - name: app
    instances: ["127.0.0.1:9001"]
routes:
  - match: {prefix: /}
    cluster: nope
"""

BAD_VALUE = """\
listen: "127.0.0.1:18080"
timeouts:
  idle: forever
clusters:
  - name: app
    instances: ["127.0.0.1:9001"]
routes:
  - match: {prefix: /}
    cluster: app
"""


def test_check_good_file(polis_bin, tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    p = run_polis(polis_bin, "check", "-c", str(f))
    assert p.returncode == 0, p.stderr
    assert f"{f}: ok" in p.stdout


@pytest.mark.parametrize("text,lines", [(BAD_CLUSTER, {6, 7}), (BAD_VALUE, {2, 3})],
                         ids=["unknown-cluster", "bad-duration"])
def test_check_bad_file(polis_bin, tmp_path, text, lines):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    p = run_polis(polis_bin, "check", "-c", str(f))
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    found = [int(n) for n in re.findall(re.escape(str(f)) + r":(\d+):", p.stderr)]
    assert found, f"no file:line in stderr: {p.stderr!r}"
    assert set(found) & lines, f"error lines {found}, expected one of {lines}: {p.stderr}"


def test_check_yaml_syntax_error(polis_bin, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("listen: \"127.0.0.1:1\"\nclusters: [\n  {name: a\n")
    p = run_polis(polis_bin, "check", "-c", str(f))
    assert p.returncode == 1
    assert re.search(re.escape(str(f)) + r":\d+:", p.stderr), p.stderr


def test_check_missing_file(polis_bin, tmp_path):
    p = run_polis(polis_bin, "check", "-c", str(tmp_path / "nope.yaml"))
    assert p.returncode != 0 and "nope.yaml" in p.stderr


# ---- admin, quick mode --------------------------------------------------------------------


def test_health_and_ready(quick):
    g, _ = quick
    st, body = g.admin_get("/health")
    assert st == 200 and json.loads(body) == {"status": "ok"}
    st, _ = g.admin_get("/ready")
    assert st == 200


def test_logs_are_json_lines(quick):
    g, _ = quick
    assert simple_get(g.port, "/").status == 200
    g.stop()
    lines = [ln for ln in g.stderr_text().splitlines() if ln.strip()]
    for ln in lines:
        json.loads(ln)  # every stderr line is one JSON object


def test_quick_mode_round_robin(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")
    g = gateways.start(upstreams=[a.addr, b.addr], workers=1)
    seen = []
    with requests.Session() as s:
        for i in range(10):
            r = s.get(g.url(f"/rr{i}"), timeout=5)
            assert r.status_code == 200
            seen.append(r.json()["origin"])
    assert seen.count("a") == 5 and seen.count("b") == 5, seen


def test_no_route_404_json(gateways, origin):
    def cfg(port, admin):
        c = base_config(port, admin)
        c["clusters"] = [{"name": "app", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/only/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg)
    r = requests.get(g.url("/other"), timeout=5)
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("application/json")
    j = r.json()
    assert j["error"] == "no_route" and j["status"] == 404 and j["request_id"]
    assert r.headers.get("X-Request-Id") == j["request_id"]
    assert origin.snapshot() == []


# ---- routing ------------------------------------------------------------------------------


@pytest.fixture
def routed(gateways, make_origin):
    a, b, c = make_origin("a"), make_origin("b"), make_origin("c")

    def cfg(port, admin):
        conf = base_config(port, admin)
        conf["clusters"] = [{"name": n, "instances": [o.addr], "timeout": "2s"}
                            for n, o in (("ca", a), ("cb", b), ("cc", c))]
        conf["routes"] = [
            {"match": {"host": "api.example.com"}, "cluster": "ca"},
            {"match": {"host": "*.wild.test", "prefix": "/"}, "cluster": "cc"},
            {"match": {"prefix": "/svc/"}, "cluster": "cb", "strip_prefix": True},
            {"match": {"path": "/exact"}, "cluster": "cc"},
            {"match": {"path": "/users/{id}/orders"}, "cluster": "cc"},
            {"match": {"prefix": "/post-only/", "methods": ["POST"]}, "cluster": "cb"},
            {"match": {"prefix": "/hdr/", "headers": {"X-Canary": "1"}}, "cluster": "cc"},
            {"match": {"prefix": "/hdr/"}, "cluster": "cb"},
            {"match": {"prefix": "/old/"}, "cluster": "ca", "rewrite": "/new/"},
            {"match": {"prefix": "/hx/"}, "cluster": "ca",
             "request_headers": {"add": {"X-Added": "yes"}, "remove": ["X-Secret"]},
             "response_headers": {"add": {"X-Resp-Added": "1"}, "remove": ["X-Origin"]}},
        ]
        return conf

    g = gateways.start(config=cfg)
    return g, a, b, c


def _who(g, path, method="GET", host="test.local", headers=()):
    with RawClient(g.port) as cl:
        cl.send(request_bytes(method, path, host=host,
                              headers=list(headers) + [("Connection", "close")]))
        r = cl.read_response()
    if r.status != 200:
        return r.status, None
    j = r.json()
    return j["origin"], j


def test_route_by_host(routed):
    g, *_ = routed
    assert _who(g, "/anything", host="api.example.com")[0] == "a"
    assert _who(g, "/anything", host="API.Example.com:8080")[0] == "a"
    assert _who(g, "/x", host="s1.wild.test")[0] == "c"
    assert _who(g, "/anything", host="other.test")[0] == 404


def test_route_prefix_strip(routed):
    g, *_ = routed
    who, j = _who(g, "/svc/items?x=1")
    assert who == "b" and j["path"] == "/items?x=1"
    who, j = _who(g, "/svc/")
    assert who == "b" and j["path"] == "/"


def test_route_exact_and_pattern(routed):
    g, *_ = routed
    assert _who(g, "/exact")[0] == "c"
    assert _who(g, "/exact/more")[0] == 404
    assert _who(g, "/exactly")[0] == 404
    who, j = _who(g, "/users/42/orders?all=1")
    assert who == "c" and j["path"] == "/users/42/orders?all=1"
    assert _who(g, "/users//orders")[0] == 404
    assert _who(g, "/users/1/2/orders")[0] == 404


def test_route_methods(routed):
    g, *_ = routed
    assert _who(g, "/post-only/x", method="POST")[0] == "b"
    assert _who(g, "/post-only/x", method="GET")[0] == 404


def test_route_header_condition(routed):
    g, *_ = routed
    assert _who(g, "/hdr/x", headers=[("X-Canary", "1")])[0] == "c"
    assert _who(g, "/hdr/x", headers=[("X-Canary", "2")])[0] == "b"
    assert _who(g, "/hdr/x")[0] == "b"


def test_route_rewrite(routed):
    g, *_ = routed
    who, j = _who(g, "/old/thing")
    assert who == "a" and j["path"] == "/new/thing"


def test_request_and_response_header_ops(routed):
    g, a, *_ = routed
    r = requests.get(g.url("/hx/1"), headers={"X-Secret": "s", "X-Other": "o"}, timeout=5)
    assert r.status_code == 200
    got = {k.lower(): v for k, v in r.json()["headers"]}
    assert got.get("x-added") == "yes" and "x-secret" not in got and got["x-other"] == "o"
    assert r.headers.get("X-Resp-Added") == "1"
    assert "X-Origin" not in r.headers


# ---- proxy headers ------------------------------------------------------------------------


def test_forwarding_headers(quick):
    g, origin = quick
    r = requests.get(g.url("/fw"), headers={"Host": "front.example:81"}, timeout=5)
    assert r.status_code == 200
    h = {}
    for k, v in r.json()["headers"]:
        h.setdefault(k.lower(), []).append(v)
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["front.example:81"]
    assert h["host"] == ["front.example:81"]
    assert any("1.1 polis" in v for v in h["via"]), h["via"]
    rid = h["x-request-id"][0]
    assert rid and r.headers["X-Request-Id"] == rid


def test_request_id_unique_and_passthrough(quick):
    g, _ = quick
    ids = set()
    with requests.Session() as s:
        for _ in range(20):
            ids.add(s.get(g.url("/"), timeout=5).headers["X-Request-Id"])
        assert len(ids) == 20
        r = s.get(g.url("/"), headers={"X-Request-Id": "my-id-1"}, timeout=5)
        assert r.headers["X-Request-Id"] == "my-id-1"
        got = {k.lower(): v for k, v in r.json()["headers"]}
        assert got["x-request-id"] == "my-id-1"


def test_via_appended_to_existing(quick):
    g, _ = quick
    r = requests.get(g.url("/"), headers={"Via": "1.0 other"}, timeout=5)
    vias = [v for k, v in r.json()["headers"] if k.lower() == "via"]
    joined = ", ".join(vias)
    assert "1.0 other" in joined and "1.1 polis" in joined, vias


# ---- connections and bodies ---------------------------------------------------------------


def test_upstream_keepalive_reuse(gateways, origin):
    g = gateways.start(upstreams=[origin.addr], workers=1)
    with requests.Session() as s:
        for i in range(20):
            assert s.get(g.url(f"/k{i}"), timeout=5).status_code == 200
    assert len(origin.snapshot()) == 20
    assert origin.connections < 20, origin.connections
    assert origin.connections <= 2, f"{origin.connections} upstream connections for 20 requests"


def test_client_keepalive_and_pipelining(quick):
    g, _ = quick
    with RawClient(g.port) as c:
        c.send(b"".join(request_bytes("GET", f"/p{i}") for i in range(10)))
        for i in range(10):
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == f"/p{i}"
        c.send(request_bytes("GET", "/after"))
        assert c.read_response().json()["path"] == "/after"


def test_head_has_no_body(quick):
    g, origin = quick
    with RawClient(g.port) as c:
        c.send(request_bytes("HEAD", "/h"))
        r = c.read_response(head_request=True)
        assert r.status == 200 and r.body == b""
        # nothing else arrives: the next response is the next request's
        c.send(request_bytes("GET", "/after-head"))
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/after-head"
    assert origin.snapshot()[0].method == "HEAD"


@pytest.mark.parametrize("status", [204, 304])
def test_204_304_without_body(quick, status):
    g, origin = quick
    origin.set("nobody", status=status)
    with RawClient(g.port) as c:
        for _ in range(3):
            c.send(request_bytes("GET", "/nb"))
            r = c.read_response(timeout=3)
            assert r.status == status and r.body == b""
            assert r.header("Transfer-Encoding") is None
        origin.set("echo")
        c.send(request_bytes("GET", "/after"))
        r = c.read_response(timeout=3)
        assert r.status == 200 and r.json()["path"] == "/after"


def test_chunked_request_forwarded_intact(quick):
    g, origin = quick
    rnd = random.Random(7)
    data = bytes(rnd.getrandbits(8) for _ in range(200000))
    parts, i = [], 0
    while i < len(data):
        n = rnd.randint(1, 9000)
        parts.append(b"%x\r\n%s\r\n" % (len(data[i:i + n]), data[i:i + n]))
        i += n
    body = b"".join(parts) + b"0\r\n\r\n"
    with RawClient(g.port) as c:
        c.send(request_bytes("POST", "/chunked", headers=[("Transfer-Encoding", "chunked")]))
        for k in range(0, len(body), 4096):  # in pieces, so framing spans reads
            c.send(body[k:k + 4096])
        r = c.read_response()
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == len(data) and j["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_chunked_response_forwarded_intact(quick):
    g, origin = quick
    origin.set("chunked", size=5)
    r = requests.get(g.url("/cr"), timeout=5)
    assert r.status_code == 200 and r.json()["path"] == "/cr"


def test_expect_100_continue(quick):
    g, origin = quick
    with RawClient(g.port) as c:
        c.send(b"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        c.sock.settimeout(3)
        first = c.read_head(time.monotonic() + 3)
        if first.status == 100:
            c.send(b"hello")
            r = c.read_response()
            assert r.status == 200 and r.json()["body_len"] == 5
        else:
            assert first.status >= 200  # a final response instead of 100 is allowed


MIB10 = 10 * 1024 * 1024


def test_10mib_upload(quick):
    g, _ = quick
    data = os.urandom(MIB10)
    r = requests.post(g.url("/up"), data=data, timeout=30)
    assert r.status_code == 200
    assert r.json()["body_len"] == MIB10
    assert r.json()["body_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("chunked", [0, 1])
def test_10mib_download(quick, chunked):
    g, origin = quick
    origin.set("large", n=MIB10, chunked=chunked)
    h = hashlib.sha256()
    n = 0
    with requests.get(g.url("/down"), stream=True, timeout=30) as r:
        assert r.status_code == 200
        for blk in r.iter_content(1 << 16):
            h.update(blk)
            n += len(blk)
    assert n == MIB10 and h.hexdigest() == pattern_sha256(MIB10)


def test_max_body_flag(gateways, origin):
    g = gateways.start(upstreams=[origin.addr], extra=["--max-body", "1KiB"])
    r = requests.post(g.url("/big"), data=b"x" * 2048, timeout=5)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert requests.post(g.url("/ok"), data=b"x" * 1000, timeout=5).status_code == 200
    assert len(origin.snapshot()) == 1


# ---- access log ---------------------------------------------------------------------------

ALOG_KEYS = {"ts", "request_id", "method", "path", "status", "bytes_sent", "duration_ms",
             "upstream", "route", "cluster"}


def test_access_log_file(gateways, origin, tmp_path):
    log = tmp_path / "access.log"
    g = gateways.start(config=simple_config([origin.addr], access_log=str(log)))
    with requests.Session() as s:
        assert s.get(g.url("/a1?q=1"), timeout=5).status_code == 200
        assert s.post(g.url("/a2"), data=b"abc", timeout=5).status_code == 200
    g.stop()
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    for e in lines:
        missing = ALOG_KEYS - set(e)
        assert not missing, f"access log line lacks {missing}: {e}"
        assert e["status"] == 200 and e["upstream"] == origin.addr
        assert e["cluster"] == "app"
    assert [e["method"] for e in lines] == ["GET", "POST"]
    assert lines[0]["path"].startswith("/a1")
    assert len({e["request_id"] for e in lines}) == 2


def test_access_log_quick_mode_flag(gateways, origin, tmp_path):
    log = tmp_path / "quick-access.log"
    g = gateways.start(upstreams=[origin.addr], extra=["--access-log", str(log)])
    assert simple_get(g.port, "/q").status == 200
    assert simple_get(g.port, "/missing-upstream-not-needed").status == 200
    g.stop()
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ALOG_KEYS <= set(e) for e in lines), lines


def test_pattern_chunks_helper_consistent():
    assert sum(len(b) for b in pattern_chunks(100001)) == 100001


def test_admin_token_is_required_when_configured(gateways, origin):
    token = "s3cr3t-t0ken-0123456789"

    def cfg(port, admin_port):
        c = base_config(port, admin_port)
        c["admin_token"] = token
        c["clusters"] = [{"name": "app", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg, admin_token=token)
    admin = f"http://127.0.0.1:{g.admin_port}"
    for path in ("/health", "/metrics", "/status"):
        r = requests.get(admin + path, timeout=5)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        bad = requests.get(admin + path, headers={"Authorization": "Bearer " + token[:-1] + "x"},
                           timeout=5)
        assert bad.status_code == 401
        ok = requests.get(admin + path, headers={"Authorization": "Bearer " + token}, timeout=5)
        assert ok.status_code == 200, path
    assert requests.get(g.url("/x"), timeout=5).status_code == 200  # the proxy is not affected


def test_check_refuses_a_public_admin_listener_without_token(polis_bin, tmp_path):
    path = tmp_path / "polis.yaml"
    path.write_text('listen: "127.0.0.1:8080"\nadmin: "0.0.0.0:9901"\n')
    r = subprocess.run([polis_bin, "check", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "admin: 0.0.0.0:9901 is reachable from other machines" in r.stderr
