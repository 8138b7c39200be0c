"""test_discovery.py: the gateway following its discovery sources end to end: the embedded
registry (register, deregister, expiry, long polls, the hello example registering itself), DNS
(a stub server's SRV answers) and etcd (a real etcd-server)."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import base_config, build_dir, free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def registry_config(**cluster_over):
    def make(port, admin_port):
        cfg = base_config(port, admin_port, registry={"enabled": True})
        c = {"name": "hello", "discovery": {"type": "registry"}, "timeout": "2s",
             "connect_timeout": "500ms"}
        c.update(cluster_over)
        cfg["clusters"] = [c]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "hello"}]
        return cfg

    return make


def until(pred, timeout, step=0.005):
    """Seconds until pred() is true, or None after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def origin_of(g, s):
    try:
        r = s.get(g.url("/who"), timeout=2)
    except requests.RequestException:
        return None
    return r.json().get("origin") if r.status_code == 200 else r.status_code


def test_registered_instance_takes_traffic_and_leaves_within_1s(gateways, make_origin):
    o = make_origin("reg1")
    g = gateways.start(config=registry_config())
    s = requests.Session()
    r = s.get(g.url("/x"), timeout=2)
    assert r.status_code == 503 and r.json()["error"] == "service_unavailable"
    api = f"http://127.0.0.1:{g.admin_port}/registry/v1/services/hello/instances/i1"
    t0 = time.monotonic()
    r = requests.put(api, json={"address": "127.0.0.1", "port": o.port, "ttl_s": 30,
                                "metadata": {"version": "v1"}}, timeout=2)
    assert r.status_code in (200, 201), r.text
    took = until(lambda: origin_of(g, s) == "reg1", 1.0)
    assert took is not None, "a registered instance got no traffic within 1 s"
    # Deregistered: out within 1 s.
    assert requests.delete(api, timeout=2).status_code == 200
    assert until(lambda: origin_of(g, s) == 503, 1.0) is not None
    # Expired: registered with ttl_s 1 and never renewed, out within 1 s of its expiry.
    requests.put(api, json={"address": "127.0.0.1", "port": o.port, "ttl_s": 1}, timeout=2)
    assert until(lambda: origin_of(g, s) == "reg1", 1.0) is not None
    t_reg = time.monotonic()
    assert until(lambda: origin_of(g, s) == 503, 2.5) is not None
    assert time.monotonic() - t_reg <= 2.0 + 0.2
    # The admin API shows the discovered instances.
    requests.put(api, json={"address": "127.0.0.1", "port": o.port, "ttl_s": 30}, timeout=2)
    until(lambda: origin_of(g, s) == "reg1", 1.0)
    st = json.loads(g.admin_get("/admin/v1/clusters/hello")[1])
    assert st["discovery"] == "registry" and st["instances"][0]["id"] == "i1"
    # The registry shows the gateway's view of the instance; drained, it says so.
    base = f"http://127.0.0.1:{g.admin_port}"
    assert requests.get(base + "/registry/v1/services/hello",
                        timeout=2).json()["instances"][0]["health"] == "healthy"
    requests.put(f"{base}/admin/v1/clusters/hello/instances/127.0.0.1:{o.port}/state",
                 json={"state": "draining"}, timeout=2)
    assert requests.get(base + "/registry/v1/services/hello",
                        timeout=2).json()["instances"][0]["health"] == "draining"


def test_long_poll_learns_of_a_change_within_100ms(gateways, make_origin):
    o = make_origin("lp")
    g = gateways.start(config=registry_config())
    base = f"http://127.0.0.1:{g.admin_port}/registry/v1/services/hello"
    idx = requests.get(base, timeout=2).json()["index"]
    got = {}

    def watch():
        r = requests.get(f"{base}?index={idx}&wait=10s", timeout=15)
        got["t"] = time.monotonic()
        got["body"] = r.json()

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    requests.put(f"{base}/instances/w1", json={"address": "127.0.0.1", "port": o.port},
                 timeout=2)
    t.join(12)
    assert got["t"] - t0 < 0.1, f"watcher woke after {(got['t'] - t0) * 1000:.0f} ms"
    assert got["body"]["index"] > idx and got["body"]["instances"][0]["id"] == "w1"


def test_hello_example_registers_and_deregisters_before_draining(gateways):
    hello = os.path.join(build_dir(), "polis-example-hello")
    if not os.access(hello, os.X_OK):
        pytest.skip("polis-example-hello not built")
    g = gateways.start(config=registry_config())
    port = free_port()
    p = subprocess.Popen([hello, "--listen", f"127.0.0.1:{port}", "--register",
                          f"http://127.0.0.1:{g.admin_port}", "--service", "hello", "--id", "h1",
                          "--ttl", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        s = requests.Session()
        # Any answer of the service's own (not the gateway's 503) shows it is reached.
        assert until(lambda: s.get(g.url("/hello"), timeout=2).status_code != 503, 3.0,
                     0.02) is not None
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        r = requests.get(f"http://127.0.0.1:{g.admin_port}/registry/v1/services/hello",
                         timeout=2)
        assert r.json()["instances"] == []
        assert until(lambda: s.get(g.url("/hello"), timeout=2).status_code == 503, 1.0,
                     0.02) is not None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture
def dnsstub(tmp_path):
    zone = tmp_path / "zone.json"
    zone.write_text("{}")
    port = free_port()
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "dnsstub.py"), "--port",
                          str(port), "--zone", str(zone)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().split() == ["ready"], "dnsstub did not start"

    def write(obj):
        tmp = tmp_path / "zone.tmp"
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, zone)

    yield port, write
    p.terminate()
    p.wait(5)


def test_dns_srv_discovery_follows_the_answers(gateways, make_origin, dnsstub):
    dns_port, write = dnsstub
    a, b = make_origin("dns-a"), make_origin("dns-b")
    write({"_http._tcp.shop.test.": {"SRV": [[10, 1, a.port, "n.test."],
                                             [10, 1, b.port, "n.test."]], "ttl": 1},
           "n.test.": {"A": ["127.0.0.1"]}})

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [{"name": "shop", "timeout": "2s", "discovery": {
            "type": "dns", "name": "_http._tcp.shop.test", "record": "srv",
            "server": f"127.0.0.1:{dns_port}", "min_ttl": "200ms", "max_ttl": "1s"}}]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "shop"}]
        return cfg

    g = gateways.start(config=make)
    s = requests.Session()
    seen = set()
    assert until(lambda: seen.add(origin_of(g, s)) or {"dns-a", "dns-b"} <= seen, 3.0) is not None
    write({"_http._tcp.shop.test.": {"SRV": [[10, 1, b.port, "n.test."]], "ttl": 1},
           "n.test.": {"A": ["127.0.0.1"]}})
    time.sleep(1.5)
    assert {origin_of(g, s) for _ in range(30)} == {"dns-b"}


@pytest.fixture
def etcd(tmp_path):
    exe = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(exe, os.X_OK):
        pytest.skip("etcd-server not installed")
    cport, pport = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="polis-etcd-e2e-")
    url, peer = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    p = subprocess.Popen([exe, "--name", "default", "--data-dir", data,
                          "--listen-client-urls", url, "--advertise-client-urls", url,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", f"default={peer}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok = until(lambda: _etcd_ok(url), 15.0, 0.1)
        assert ok is not None, "etcd did not start"
        yield url
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(data, ignore_errors=True)


def _etcd_ok(url):
    try:
        return requests.get(url + "/health", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def _b64(s):
    return base64.b64encode(s.encode()).decode()


def test_etcd_discovery_follows_the_keys(gateways, make_origin, etcd):
    o = make_origin("etcd-a")
    prefix = "/polis/services/shop/"

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [{"name": "shop", "timeout": "2s", "discovery": {
            "type": "etcd", "endpoints": [etcd], "prefix": prefix}}]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "shop"}]
        return cfg

    g = gateways.start(config=make)
    s = requests.Session()
    assert s.get(g.url("/x"), timeout=2).status_code == 503
    value = json.dumps({"address": "127.0.0.1", "port": o.port, "metadata": {"zone": "a"}})
    r = requests.post(etcd + "/v3/kv/put", json={"key": _b64(prefix + "a1"),
                                                 "value": _b64(value)}, timeout=5)
    assert r.status_code == 200, r.text
    assert until(lambda: origin_of(g, s) == "etcd-a", 1.0) is not None
    requests.post(etcd + "/v3/kv/deleterange", json={"key": _b64(prefix + "a1")}, timeout=5)
    assert until(lambda: origin_of(g, s) == 503, 1.0) is not None
