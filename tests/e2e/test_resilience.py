"""test_resilience.py: issue 3's must-show behaviours with real processes: instances killed and
hung under load, a 503 outage not amplified by retries, the circuit breaker's cycle, weighted
splits and header routing, POSTs never sent twice, the admin API steering instances."""

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import base_config, free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class OriginProc:
    """An origin in a process of its own (origin_proc.py), killable with SIGKILL."""

    def __init__(self, name, port=None, mode="echo", status=200):
        args = ["/usr/bin/python3", os.path.join(HERE, "origin_proc.py"), "--name", name,
                "--mode", mode, "--status", str(status)]
        if port:
            args += ["--port", str(port)]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        assert line and line[0] == "ready", "origin process did not start"
        self.port = int(line[1])
        self.addr = f"127.0.0.1:{self.port}"

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(5)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def procs():
    made = []

    def make(*a, **kw):
        o = OriginProc(*a, **kw)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


def cluster(name, instances, **over):
    c = {"name": name, "instances": instances, "timeout": "2s", "connect_timeout": "500ms"}
    c.update(over)
    return c


def load(url, seconds, threads=4, headers=None, method="GET", stop=None):
    """GET url from `threads` keep-alive clients for `seconds` (bounded). Returns
    (statuses list, latencies)."""
    statuses, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds

    def run():
        s = requests.Session()
        got = []
        n = 0
        while time.monotonic() < deadline and n < 20000 and not (stop and stop.is_set()):
            n += 1
            try:
                r = s.request(method, url, headers=headers, timeout=5)
                got.append(r.status_code)
            except requests.RequestException as e:
                got.append(f"error: {e}")
        with lock:
            statuses.extend(got)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    return statuses


def test_killed_and_hung_instances_lose_no_request(gateways, procs):
    """Three instances under steady GET load; one killed with SIGKILL, one hung (accepts, never
    answers): every client request still succeeds."""
    a, b, c = procs("a"), procs("b"), procs("c")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster(
            "app", [a.addr, b.addr, c.addr],
            retry={"attempts": 4, "on": ["connect_failure", "reset", "timeout"],
                   "per_try_timeout": "300ms", "backoff_base": "5ms", "backoff_max": "20ms",
                   "budget_min": 4},
            outlier_detection={"consecutive_gateway_errors": 2, "base_ejection_time": "10s"},
            health_check={"path": "/health", "interval": "200ms", "timeout": "150ms",
                          "unhealthy_threshold": 2, "healthy_threshold": 2})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    url = g.url("/load")
    assert requests.get(url, timeout=5).status_code == 200
    result = {}

    def run():
        result["statuses"] = load(url, 6.0, threads=4)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.5)
    a.kill()
    time.sleep(1.0)
    b.p.send_signal(signal.SIGUSR1)  # hung from now on
    t.join(60)
    statuses = result["statuses"]
    failed = [s for s in statuses if s != 200]
    assert len(statuses) > 200, f"too little load: {len(statuses)}"
    assert failed == [], f"{len(failed)} of {len(statuses)} failed: {failed[:5]}"
    st = json.loads(g.admin_get("/admin/v1/clusters/app")[1])
    by = {i["address"]: i for i in st["instances"]}
    assert not by[a.addr]["available"] and not by[b.addr]["available"], st
    assert by[c.addr]["available"], st


def test_outage_503_not_amplified(gateways, make_origin):
    """All instances answer 503 for a while: the retry budget keeps upstream attempts at most 1.2
    times the client requests."""
    origins = [make_origin(f"o{i}") for i in range(3)]
    for o in origins:
        o.set("fixed", status=503, body="down")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster(
            "app", [o.addr for o in origins],
            retry={"attempts": 3, "on": ["connect_failure", "reset", 503],
                   "backoff_base": "25ms", "backoff_max": "100ms",
                   "budget_percent": 20, "budget_min": 3})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    statuses = load(g.url("/x"), 30.0, threads=32)
    assert statuses and all(s == 503 for s in statuses), set(map(str, statuses))
    attempts = sum(len(o.snapshot()) for o in origins)
    ratio = attempts / len(statuses)
    assert ratio <= 1.2, f"{attempts} upstream attempts for {len(statuses)} requests ({ratio:.2f})"
    assert ratio > 1.0, "no retry happened at all: the budget was not exercised"


def test_breaker_opens_answers_fast_and_closes(gateways, tmp_path):
    """A dead service's breaker opens; while open the gateway answers 503 with Retry-After at
    once (well under 1 ms inside the gateway); it closes again through half-open once the
    service is back."""
    port = free_port()
    alog = tmp_path / "access.log"

    def make(p, admin_port):
        cfg = base_config(p, admin_port, access_log=str(alog))
        cfg["clusters"] = [cluster(
            f"app", [f"127.0.0.1:{port}"], retry={"attempts": 1},
            circuit_breaker={"window": "count", "window_size": 20, "minimum_calls": 5,
                             "failure_rate": 50, "open_duration": "1500ms",
                             "half_open_calls": 2})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    s = requests.Session()
    codes = [s.get(g.url("/a"), timeout=5).status_code for _ in range(5)]
    assert codes == [502] * 5
    r = s.get(g.url("/open"), timeout=5)
    assert r.status_code == 503 and r.json()["error"] == "circuit_open"
    assert int(r.headers["Retry-After"]) >= 1
    for _ in range(200):
        assert s.get(g.url("/open"), timeout=5).status_code == 503
    time.sleep(0.3)  # the access log is flushed by the workers
    lines = [json.loads(x) for x in alog.read_text().splitlines() if '"/open"' in x]
    durs = [x["duration_ms"] for x in lines]
    assert len(durs) >= 200
    assert statistics.median(durs) < 0.5 and max(durs) < 5, sorted(durs)[-5:]
    st = json.loads(g.admin_get("/admin/v1/clusters/app")[1])
    assert st["breaker"]["state"] == "open"
    # The service comes back; after open_duration, probes close it.
    from harness import Origin
    o = Origin("back", port=port)
    try:
        time.sleep(1.6)
        codes = [s.get(g.url("/b"), timeout=5).status_code for _ in range(5)]
        assert codes == [200] * 5, codes
        st = json.loads(g.admin_get("/admin/v1/clusters/app")[1])
        assert st["breaker"]["state"] == "closed", st["breaker"]
    finally:
        o.close()


def test_split_95_5_and_header_routing(gateways, make_origin):
    v1a, v1b, v2 = make_origin("v1a"), make_origin("v1b"), make_origin("v2")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("shop", [
            {"address": v1a.addr, "metadata": {"version": "v1"}},
            {"address": v1b.addr, "metadata": {"version": "v1"}},
            {"address": v2.addr, "metadata": {"version": "v2"}}])]
        cfg["routes"] = [
            {"name": "canary", "match": {"prefix": "/", "headers": {"x-canary": "always"}},
             "cluster": "shop", "subset": {"version": "v2"}},
            {"name": "main", "match": {"prefix": "/"}, "cluster": "shop",
             "split": [{"subset": {"version": "v1"}, "weight": 95},
                       {"subset": {"version": "v2"}, "weight": 5}]}]
        return cfg

    g = gateways.start(config=make)
    statuses = []
    n = 20000
    lock = threading.Lock()

    def run(count):
        s = requests.Session()
        got = [s.get(g.url("/s"), timeout=5).status_code for _ in range(count)]
        with lock:
            statuses.extend(got)

    ts = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert statuses.count(200) == n
    share = len(v2.snapshot()) / n * 100
    assert 4.0 <= share <= 6.0, f"v2 got {share:.2f}%"
    assert len(v1a.snapshot()) + len(v1b.snapshot()) + len(v2.snapshot()) == n
    # Header routing is exact: every marked request goes to v2, none elsewhere.
    before = [len(o.snapshot()) for o in (v1a, v1b, v2)]
    s = requests.Session()
    for _ in range(300):
        assert s.get(g.url("/c"), headers={"X-Canary": "always"}, timeout=5).status_code == 200
    after = [len(o.snapshot()) for o in (v1a, v1b, v2)]
    assert after[0] == before[0] and after[1] == before[1] and after[2] == before[2] + 300


def test_blue_green_switch_through_admin_drops_nothing(gateways, make_origin):
    blue, green = make_origin("blue"), make_origin("green")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("shop", [
            {"address": blue.addr, "metadata": {"color": "blue"}},
            {"address": green.addr, "metadata": {"color": "green"}}])]
        cfg["routes"] = [{"name": "main", "match": {"prefix": "/"}, "cluster": "shop",
                          "split": [{"subset": {"color": "blue"}, "weight": 100},
                                    {"subset": {"color": "green"}, "weight": 0}]}]
        return cfg

    g = gateways.start(config=make)
    result = {}
    t = threading.Thread(target=lambda: result.update(s=load(g.url("/bg"), 3.0, threads=4)))
    t.start()
    time.sleep(1.0)
    url = f"http://127.0.0.1:{g.admin_port}/admin/v1/routes/main/splits"
    r = requests.put(url, json={"splits": [{"subset": {"color": "green"}, "weight": 100}]},
                     timeout=5)
    assert r.status_code == 200, r.text
    switched = len(green.snapshot())
    t.join(30)
    assert [x for x in result["s"] if x != 200] == []
    assert switched == 0 or switched < 50
    n_blue = len(blue.snapshot())
    time.sleep(0.2)
    s = requests.Session()
    for _ in range(50):
        assert s.get(g.url("/after"), timeout=5).json()["origin"] == "green"
    assert len(blue.snapshot()) == n_blue
    bad = requests.put(url, json={"splits": [{"weight": "x"}]}, timeout=5)
    assert bad.status_code == 400 and bad.json()["field"] == "splits"


@pytest.mark.parametrize("mode", ["rst", "never", "garbage", "fixed503"])
def test_post_without_idempotency_key_never_sent_twice(gateways, make_origin, mode):
    a, b = make_origin("a"), make_origin("b")
    for o in (a, b):
        if mode == "fixed503":
            o.set("fixed", status=503, body="x")
        else:
            o.set(mode)

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster(
            "app", [a.addr, b.addr], timeout="300ms",
            retry={"attempts": 3, "on": ["connect_failure", "reset", "timeout", 503]})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    for i in range(6):
        r = requests.post(g.url(f"/pay/{i}"), data=b"amount=1", timeout=5)
        assert r.status_code in (502, 503, 504)
    time.sleep(0.4)
    seen = [r.target for o in (a, b) for r in o.snapshot() + o.partial]
    for i in range(6):
        assert seen.count(f"/pay/{i}") == 1, (mode, seen)
    if mode == "garbage":
        return  # an invalid answer is never retried, whatever the method
    # The same GETs are retried (the policy works; only the method stopped it).
    before = len(a.snapshot() + a.partial) + len(b.snapshot() + b.partial)
    requests.get(g.url("/get"), timeout=5)
    time.sleep(0.4)
    after = len(a.snapshot() + a.partial) + len(b.snapshot() + b.partial)
    assert after - before >= 2


def test_idempotency_key_allows_retry_where_the_route_says(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")
    a.set("fixed", status=503, body="x")
    b.set("fixed", status=503, body="x")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("app", [a.addr, b.addr],
                                   retry={"attempts": 2, "on": [503]})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app",
                          "retry_idempotency_key": True}]
        return cfg

    g = gateways.start(config=make)
    r = requests.post(g.url("/k"), headers={"Idempotency-Key": "abc"}, timeout=5)
    assert r.status_code == 503
    time.sleep(0.2)
    assert len(a.snapshot()) + len(b.snapshot()) == 2


def test_bulkhead_rejects_at_once(gateways, make_origin):
    o = make_origin("slow")
    o.set("slow", delay=1.0)

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("app", [o.addr], max_requests=2)]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    results = []
    ts = [threading.Thread(target=lambda: results.append(requests.get(g.url("/s"), timeout=5)))
          for _ in range(2)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    r = requests.get(g.url("/s"), timeout=5)
    assert r.status_code == 503 and time.monotonic() - t0 < 0.2
    assert "max_requests" in r.json()["message"]
    for t in ts:
        t.join(10)
    assert sorted(x.status_code for x in results) == [200, 200]


def test_fault_injection(gateways, make_origin):
    o = make_origin("o")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("app", [o.addr])]
        cfg["routes"] = [
            {"match": {"prefix": "/abort"}, "cluster": "app",
             "fault": {"abort_status": 418, "abort_percent": 100}},
            {"match": {"prefix": "/delay"}, "cluster": "app",
             "fault": {"delay": "300ms", "delay_percent": 100}},
            {"match": {"prefix": "/half"}, "cluster": "app",
             "fault": {"abort_status": 503, "abort_percent": 50}}]
        return cfg

    g = gateways.start(config=make)
    r = requests.get(g.url("/abort"), timeout=5)
    assert r.status_code == 418 and r.json()["error"] == "fault_injected"
    t0 = time.monotonic()
    assert requests.get(g.url("/delay"), timeout=5).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    s = requests.Session()
    codes = [s.get(g.url("/half"), timeout=5).status_code for _ in range(400)]
    assert 140 <= codes.count(503) <= 260, codes.count(503)


def test_admin_drain_and_disable(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("app", [a.addr, b.addr])]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    base = f"http://127.0.0.1:{g.admin_port}/admin/v1/clusters/app/instances/{a.addr}"
    r = requests.put(base + "/state", json={"state": "draining"}, timeout=5)
    assert r.status_code == 200, r.text
    n = len(a.snapshot())
    s = requests.Session()
    for _ in range(40):
        assert s.get(g.url("/d"), timeout=5).status_code == 200
    assert len(a.snapshot()) == n
    st = json.loads(g.admin_get("/admin/v1/clusters/app")[1])
    assert {i["address"]: i["state"] for i in st["instances"]}[a.addr] == "draining"
    assert requests.put(base + "/state", json={"state": "bogus"}, timeout=5).status_code == 400
    requests.put(base + "/state", json={"state": "active"}, timeout=5)
    for _ in range(40):
        s.get(g.url("/d"), timeout=5)
    assert len(a.snapshot()) > n
    cfg = json.loads(g.admin_get("/admin/v1/config")[1])
    assert cfg["version"] >= 1 and cfg["clusters"] == ["app"]


def test_mirroring_compares_answers_and_never_returns_them(gateways, make_origin):
    """Requests mirrored to v2: matches, mismatches (a body field, a status, a header) and
    errors are counted; clients only ever see the primary's answer."""
    v1, v2 = make_origin("v1"), make_origin("v2")
    v1.set("fixed", status=200, body='{"a": 1, "ts": 111, "meta": {"id": 1}}',
           **{"h_Content-Type": "application/json"})

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("shop", [
            {"address": v1.addr, "metadata": {"version": "v1"}},
            {"address": v2.addr, "metadata": {"version": "v2"}}])]
        cfg["routes"] = [{"name": "main", "match": {"prefix": "/"}, "cluster": "shop",
                          "subset": {"version": "v1"},
                          "mirror": {"subset": {"version": "v2"}, "percent": 100,
                                     "compare_headers": ["content-type"],
                                     "ignore_fields": ["ts", "meta.id"]}}]
        return cfg

    g = gateways.start(config=make)

    def counts():
        text = g.admin_get("/metrics")[1].decode()
        out = {}
        for res in ("match", "mismatch", "error"):
            key = f'polis_mirror_requests_total{{route="main",result="{res}"}}'
            line = [x for x in text.splitlines() if x.startswith(key)]
            out[res] = float(line[0].split()[-1]) if line else 0.0
        return out

    s = requests.Session()

    def run(n, body_v2, status=200, ctype="application/json"):
        v2.set("fixed", status=status, body=body_v2, **{"h_Content-Type": ctype})
        for _ in range(n):
            r = s.get(g.url("/m"), timeout=5)
            assert r.status_code == 200 and r.json()["a"] == 1  # always the primary's

    run(10, '{"a": 1, "ts": 999, "meta": {"id": 7}}')  # differs only in ignored fields
    time.sleep(0.3)
    assert counts() == {"match": 10, "mismatch": 0, "error": 0}
    run(5, '{"a": 2, "ts": 111, "meta": {"id": 1}}')  # a field that counts
    run(3, '{"a": 1}', status=500)
    run(2, '{"a": 1, "ts": 1, "meta": {"id": 1}}', ctype="text/plain")
    time.sleep(0.3)
    assert counts() == {"match": 10, "mismatch": 10, "error": 0}
    v2.set("never")  # the mirror hangs: the primary is not delayed, the mirror times out
    t0 = time.monotonic()
    assert s.get(g.url("/m"), timeout=5).status_code == 200
    assert time.monotonic() - t0 < 0.5
    assert len(v2.snapshot()) + len(v2.partial) >= 20
    time.sleep(2.3)  # the cluster's 2 s timeout ends the hung mirror: an error
    assert counts() == {"match": 10, "mismatch": 10, "error": 1}


def test_strangler_fig_example(gateways, make_origin):
    """examples/config/strangler.yaml as shipped, on free ports: moved paths reach the new
    services, everything else the legacy application."""
    import re
    text = open(os.path.join(HERE, "..", "..", "examples", "config", "strangler.yaml")).read()
    origins = {}
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(9\d\d\d)", text)) - {"9901"}):
        o = make_origin(f"o{port}")
        origins[port] = o
        text = text.replace(f"127.0.0.1:{port}", o.addr)

    def make(port, admin_port):
        return (text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                .replace("127.0.0.1:9901", f"127.0.0.1:{admin_port}"))

    g = gateways.start(config=make)
    s = requests.Session()
    assert s.get(g.url("/api/orders/7"), timeout=5).json()["origin"] in ("o9101", "o9102")
    assert s.get(g.url("/api/orders"), timeout=5).json()["origin"] in ("o9101", "o9102")
    assert s.get(g.url("/api/inventory/x"), timeout=5).json()["origin"] == "o9201"
    for path in ("/", "/api/customers", "/api/ordersx"):
        assert s.get(g.url(path), timeout=5).json()["origin"] == "o9000"


def test_cookie_routing_to_a_subset_is_exact(gateways, make_origin):
    v1, v2 = make_origin("v1"), make_origin("v2")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("shop", [
            {"address": v1.addr, "metadata": {"version": "v1"}},
            {"address": v2.addr, "metadata": {"version": "v2"}}])]
        cfg["routes"] = [
            {"name": "beta", "match": {"prefix": "/", "cookies": {"beta": "yes"}},
             "cluster": "shop", "subset": {"version": "v2"}},
            {"name": "main", "match": {"prefix": "/"}, "cluster": "shop",
             "subset": {"version": "v1"}}]
        return cfg

    g = gateways.start(config=make)
    s = requests.Session()
    for i in range(100):
        cookie = {"Cookie": f"a=1; beta=yes; z={i}"} if i % 2 else {"Cookie": "beta=no"}
        r = s.get(g.url("/c"), headers=cookie, timeout=5)
        assert r.json()["origin"] == ("v2" if i % 2 else "v1")
    assert len(v1.snapshot()) == 50 and len(v2.snapshot()) == 50


def test_retry_deadline_bounds_the_whole_request(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")
    for o in (a, b):
        o.set("slow", delay=2.0)

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [cluster("app", [a.addr, b.addr], timeout="5s",
                                   retry={"attempts": 3, "on": ["timeout"],
                                          "per_try_timeout": "200ms", "deadline": "300ms"})]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    t0 = time.monotonic()
    r = requests.get(g.url("/d"), timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 504
    assert 0.25 <= took < 0.6, took  # one try of 200 ms, a retry cut to the 100 ms left
