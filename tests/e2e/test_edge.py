"""test_edge.py: edge security end to end: API keys and consumers, every spelling of a protected
path, rate limits (one gateway with two workers, two gateways sharing a real redis-server,
Redis stopped and restarted, a spoofed X-Forwarded-For), access lists."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO, RawClient, base_config, free_port  # noqa: E402

KEY_ALICE = "alice-key-0123456789abcdef"
KEY_BOB = "bob-key-0123456789abcdef"


def sha(k):
    return "sha256:" + hashlib.sha256(k.encode()).hexdigest()


def consumers():
    return [{"name": "alice", "groups": ["gold"], "keys": [sha(KEY_ALICE)]},
            {"name": "bob", "groups": ["free"], "keys": [sha(KEY_BOB)]}]


def test_api_keys_consumers_and_forwarded_identity(gateways, make_origin):
    o = make_origin("svc")

    def make(port, admin_port):
        cfg = base_config(port, admin_port, consumers=consumers())
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        cfg["routes"] = [
            {"name": "gold", "match": {"prefix": "/gold"}, "cluster": "app",
             "auth": {"api_key": True, "consumers": {"allow_groups": ["gold"]}}},
            {"name": "any", "match": {"prefix": "/"}, "cluster": "app",
             "auth": {"api_key": True}}]
        return cfg

    g = gateways.start(config=make)
    r = requests.get(g.url("/x"), timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert "WWW-Authenticate" in r.headers
    assert requests.get(g.url("/x"), headers={"X-API-Key": "wrong"}, timeout=5).status_code == 401
    r = requests.get(g.url("/x"), headers={"X-API-Key": KEY_BOB, "X-Consumer": "alice"},
                     timeout=5)
    assert r.status_code == 200
    seen = o.snapshot()[-1]
    assert seen.header_all("x-consumer") == ["bob"], "a client's X-Consumer must not pass"
    assert requests.get(g.url("/gold"), headers={"X-API-Key": KEY_BOB},
                        timeout=5).status_code == 403
    assert requests.get(g.url("/gold"), headers={"X-API-Key": KEY_ALICE},
                        timeout=5).status_code == 200


def _spellings():
    out = []
    for line in open(os.path.join(REPO, "tests", "data", "paths", "spellings.txt")):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        target, expected = line.split()[:2]
        out.append((target, expected))
    return out


def test_no_spelling_of_a_protected_path_reaches_it_without_credentials(gateways, make_origin):
    """Every spelling in tests/data/paths/spellings.txt (over 60), sent as raw bytes: none reaches
    the protected route's service without a key; with the key, the accepted ones arrive in their
    normalised form."""
    secret, public = make_origin("secret"), make_origin("public")

    def make(port, admin_port):
        cfg = base_config(port, admin_port, consumers=consumers())
        cfg["clusters"] = [{"name": "admin", "instances": [secret.addr]},
                           {"name": "pub", "instances": [public.addr]}]
        cfg["routes"] = [
            {"name": "admin", "match": {"prefix": "/admin"}, "cluster": "admin",
             "auth": {"api_key": True}},
            {"name": "public", "match": {"prefix": "/"}, "cluster": "pub"}]
        return cfg

    g = gateways.start(config=make)
    cases = _spellings()
    assert len(cases) >= 60
    for target, expected in cases:
        with RawClient(g.port) as c:
            c.send(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            r = c.read_response(timeout=5)
        if expected.startswith("reject:"):
            assert r.status == 400, (target, r.status)
        elif expected.startswith("/admin"):
            assert r.status == 401, (target, r.status)
    assert secret.snapshot() == [], [x.target for x in secret.snapshot()]
    # With the key, what arrives is the normalised path, never another spelling.
    for target, expected in cases:
        if expected.startswith("reject:") or not expected.startswith("/admin"):
            continue
        with RawClient(g.port) as c:
            c.send(f"GET {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_ALICE}\r\n"
                   f"Connection: close\r\n\r\n".encode())
            r = c.read_response(timeout=5)
        assert r.status == 200, (target, r.status)
        assert secret.snapshot()[-1].target.split("?")[0] == expected, target


def _rate(g, seconds, threads, headers=None, path="/r"):
    """Requests per outcome over `seconds` from `threads` keep-alive clients."""
    ok, limited, other, lock = [0], [0], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def run():
        s = requests.Session()
        n = 0
        while time.monotonic() < deadline and n < 50000:
            n += 1
            try:
                code = s.get(g.url(path), headers=headers, timeout=5).status_code
            except requests.RequestException:
                code = 0
            with lock:
                if code == 200:
                    ok[0] += 1
                elif code == 429:
                    limited[0] += 1
                else:
                    other[0] += 1

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    return ok[0], limited[0], other[0]


def limited_config(o, backend="local", redis_port=None, on_failure="local", trusted=None):
    def make(port, admin_port):
        rl = {"name": "per-consumer", "rate": "100/s", "burst": 10, "key": "consumer",
              "backend": backend}
        if backend == "redis":
            rl["redis"] = {"address": f"127.0.0.1:{redis_port}", "timeout": "50ms",
                           "on_failure": on_failure}
        cfg = base_config(port, admin_port, workers=2, consumers=consumers(),
                          rate_limits=[rl])
        if trusted:
            cfg["trusted_proxies"] = trusted
            cfg["rate_limits"].append({"name": "per-ip", "rate": "50/s", "burst": 5,
                                       "key": "client_ip"})
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        routes = [{"name": "api", "match": {"prefix": "/r"}, "cluster": "app",
                   "auth": {"api_key": True}, "rate_limit": "per-consumer"}]
        if trusted:
            routes.insert(0, {"name": "ip", "match": {"prefix": "/ip"}, "cluster": "app",
                              "rate_limit": "per-ip"})
        cfg["routes"] = routes
        return cfg

    return make


def test_rate_limit_per_consumer_two_workers_within_5_percent(gateways, make_origin):
    o = make_origin("svc")
    g = gateways.start(config=limited_config(o))
    time.sleep(0.2)
    ok, limited, other = _rate(g, 10.0, 8, headers={"X-API-Key": KEY_ALICE})
    expected = 100 * 10 + 10
    assert other == 0
    assert limited > 0
    assert abs(ok - expected) <= expected * 0.05, (ok, expected)
    r = requests.get(g.url("/r"), headers={"X-API-Key": KEY_BOB}, timeout=5)
    assert r.status_code == 200 and "RateLimit-Remaining" in r.headers
    for _ in range(50):
        r = requests.get(g.url("/r"), headers={"X-API-Key": KEY_BOB}, timeout=5)
        if r.status_code == 429:
            break
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_spoofed_x_forwarded_for_earns_no_quota(gateways, make_origin):
    o = make_origin("svc")
    g = gateways.start(config=limited_config(o, trusted=["10.0.0.0/8"]))
    s = requests.Session()
    got = 0
    for i in range(200):
        r = s.get(g.url("/ip"), headers={"X-Forwarded-For": f"198.51.100.{i % 250}"}, timeout=5)
        got += r.status_code == 200
    assert got <= 5 + 50 * 2, got  # the burst and at most ~2 s of the rate, whatever XFF says


@pytest.fixture
def redis_server():
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(exe, os.X_OK):
        pytest.skip("redis-server not installed")
    port = free_port()
    procs = []

    def start():
        p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return p
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis did not start")

    def stop():
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(5)

    start()
    yield port, start, stop
    stop()


def test_two_gateways_share_a_redis_limit(gateways, make_origin, redis_server):
    port, _, _ = redis_server
    o = make_origin("svc")
    g1 = gateways.start(config=limited_config(o, "redis", port))
    g2 = gateways.start(config=limited_config(o, "redis", port))
    time.sleep(0.2)
    res = {}
    ts = [threading.Thread(target=lambda g=g, k=k: res.__setitem__(
        k, _rate(g, 10.0, 4, headers={"X-API-Key": KEY_ALICE}))) for k, g in
        (("a", g1), ("b", g2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    ok = res["a"][0] + res["b"][0]
    expected = 100 * 10 + 10
    assert res["a"][2] == 0 and res["b"][2] == 0
    assert abs(ok - expected) <= expected * 0.05, (res, expected)


@pytest.mark.parametrize("on_failure", ["open", "closed", "local"])
def test_redis_stopped_and_restarted(gateways, make_origin, redis_server, on_failure):
    port, start, stop = redis_server
    o = make_origin("svc")
    g = gateways.start(config=limited_config(o, "redis", port, on_failure=on_failure))
    hdr = {"X-API-Key": KEY_ALICE}
    s = requests.Session()
    assert s.get(g.url("/r"), headers=hdr, timeout=5).status_code == 200
    stop()
    time.sleep(0.2)
    codes = [s.get(g.url("/r"), headers=hdr, timeout=5).status_code for _ in range(300)]
    if on_failure == "open":
        assert set(codes) == {200}
    elif on_failure == "closed":
        assert set(codes) == {503}
    else:  # the same limit, kept by this gateway alone
        assert 200 in codes and 429 in codes
    start()
    deadline = time.monotonic() + 5
    recovered = False
    while time.monotonic() < deadline and not recovered:
        time.sleep(0.3)
        ok, limited, other = _rate(g, 1.0, 2, headers=hdr)
        recovered = other == 0 and ok > 0 and ok <= 100 + 10 + 10
    assert recovered, "decisions did not go back to redis"


def test_access_lists(gateways, make_origin):
    o = make_origin("svc")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        cfg["routes"] = [
            {"name": "deny", "match": {"prefix": "/internal"}, "cluster": "app",
             "access": {"allow": ["10.0.0.0/8"]}},
            {"name": "open", "match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    r = requests.get(g.url("/internal/x"), timeout=5)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert requests.get(g.url("/x"), timeout=5).status_code == 200


def test_connections_per_address_capped_and_top_level_deny(gateways, make_origin):
    o = make_origin("svc")

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["limits"] = {"max_connections_per_ip": 5}
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    held = [socket.create_connection(("127.0.0.1", g.port), timeout=2) for _ in range(5)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", g.port), timeout=2)
    extra.settimeout(2)
    try:
        assert extra.recv(1) == b"", "a sixth connection from one address must be closed"
    except ConnectionResetError:
        pass
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.2)
    assert requests.get(g.url("/x"), timeout=5).status_code == 200  # counts were given back

    def deny(port, admin_port):
        cfg = make(port, admin_port)
        cfg["access"] = {"deny": ["127.0.0.0/8"]}
        return cfg

    g2 = gateways.start(config=deny)
    with pytest.raises(requests.RequestException):
        requests.get(g2.url("/x"), timeout=2)


def test_cors_preflight_and_response_headers(gateways, make_origin):
    o = make_origin("svc")
    o.set("fixed", status=200, body="ok", **{"h_Access-Control-Allow-Origin": "*"})

    def make(port, admin_port):
        cfg = base_config(port, admin_port, consumers=consumers())
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        cfg["routes"] = [{"name": "api", "match": {"prefix": "/"}, "cluster": "app",
                          "auth": {"api_key": True},
                          "cors": {"origins": ["https://app.example"], "methods": ["GET", "PUT"],
                                   "headers": ["X-API-Key"], "credentials": True,
                                   "max_age": "10m"}}]
        return cfg

    g = gateways.start(config=make)
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
           "Access-Control-Request-Headers": "x-api-key"}
    r = requests.options(g.url("/x"), headers=pre, timeout=5)  # no key: preflights need none
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "PUT" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert o.snapshot() == []
    bad = dict(pre, Origin="https://evil.example")
    r = requests.options(g.url("/x"), headers=bad, timeout=5)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    r = requests.get(g.url("/x"), headers={"Origin": "https://app.example",
                                           "X-API-Key": KEY_ALICE}, timeout=5)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"  # not the service's *
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in r.headers.get("Vary", "")
    r = requests.get(g.url("/x"), headers={"Origin": "https://evil.example",
                                           "X-API-Key": KEY_ALICE}, timeout=5)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_consumers_through_the_admin_api(gateways, make_origin):
    o = make_origin("svc")

    def make(port, admin_port):
        cfg = base_config(port, admin_port, consumers=consumers())
        cfg["clusters"] = [{"name": "app", "instances": [o.addr]}]
        cfg["routes"] = [
            {"name": "gold", "match": {"prefix": "/gold"}, "cluster": "app",
             "auth": {"api_key": True, "consumers": {"allow_groups": ["gold"]}}},
            {"name": "any", "match": {"prefix": "/"}, "cluster": "app",
             "auth": {"api_key": True}}]
        return cfg

    g = gateways.start(config=make)
    api = f"http://127.0.0.1:{g.admin_port}/admin/v1/consumers"
    key = "carol-key-0123456789abcdef"
    assert requests.get(g.url("/x"), headers={"X-API-Key": key}, timeout=5).status_code == 401
    r = requests.put(api + "/carol", json={"groups": ["gold"], "key": key}, timeout=5)
    assert r.status_code == 200, r.text
    r = requests.get(g.url("/gold/x"), headers={"X-API-Key": key}, timeout=5)
    assert r.status_code == 200 and o.snapshot()[-1].header("x-consumer") == "carol"
    listed = requests.get(api, timeout=5).json()["consumers"]
    assert {"name": "carol", "source": "admin", "keys": 1} in listed
    assert key not in requests.get(api, timeout=5).text  # keys are never shown
    # A key another consumer has is refused; a name from the file cannot be changed here.
    r = requests.put(api + "/dave", json={"key": KEY_ALICE}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "keys"
    assert requests.put(api + "/alice", json={"key": "x" * 20}, timeout=5).status_code == 409
    assert requests.put(api + "/eve", json={"keys": ["plain"]}, timeout=5).status_code == 400
    assert requests.delete(api + "/carol", timeout=5).status_code == 200
    assert requests.get(g.url("/x"), headers={"X-API-Key": key}, timeout=5).status_code == 401
    assert requests.get(g.url("/x"), headers={"X-API-Key": KEY_ALICE}, timeout=5).status_code == 200
