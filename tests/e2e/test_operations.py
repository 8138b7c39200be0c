"""test_operations.py: stress and operations tests (marked "operations"): 1 GiB streamed both ways
in bounded memory (release build), SIGHUP reloads under load, SIGTERM drain."""

import hashlib
import os
import signal
import socket
import threading
import time

import pytest

from harness import (Closed, RawClient, base_config, pattern_chunks, pattern_sha256,
                     request_bytes, to_yaml)

GIB = 1 << 30
RSS_LIMIT_KIB = 16 * 1024


class RssMonitor:
    """Samples a process's VmRSS every 20 ms in a thread; .peak in KiB."""

    def __init__(self, g):
        self.g = g
        self.peak = 0
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.peak = max(self.peak, self.g.rss_kib())
            except OSError:
                return
            time.sleep(0.02)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()


@pytest.fixture
def big_gw(gateways, origin, release_bin):
    g = gateways.start(upstreams=[origin.addr], workers=1, binary=release_bin,
                       extra=["--max-body", "2GiB", "--upstream-timeout", "30s"])
    # warm up (buffers, pools) before the baseline
    with RawClient(g.port) as c:
        for _ in range(3):
            c.send(request_bytes("POST", "/warm", body=b"x" * 100000))
            assert c.read_response().status == 200
    return g, origin


def test_1gib_upload_bounded_memory(big_gw):
    g, origin = big_gw
    base = g.rss_kib()
    t = time.monotonic()
    with RssMonitor(g) as mon, RawClient(g.port, timeout=60) as c:
        c.send(request_bytes("POST", "/upload", headers=[("Content-Length", str(GIB))]))
        h = hashlib.sha256()
        for blk in pattern_chunks(GIB, block=os.urandom(1 << 16) * 4):
            c.send(blk)
            h.update(blk)
        r = c.read_response(timeout=60)
    took = time.monotonic() - t
    assert r.status == 200, r
    j = r.json()
    assert j["body_len"] == GIB and j["body_sha256"] == h.hexdigest()
    assert took < 60, f"1 GiB upload took {took:.1f}s"
    grew = mon.peak - base
    assert grew < RSS_LIMIT_KIB, f"VmRSS grew by {grew} KiB (base {base} KiB) during the upload"


def test_1gib_download_bounded_memory(big_gw):
    g, origin = big_gw
    origin.set("large", n=GIB)
    base = g.rss_kib()
    t = time.monotonic()
    h = hashlib.sha256()
    n = [0]

    def sink(b):
        h.update(b)
        n[0] += len(b)

    with RssMonitor(g) as mon, RawClient(g.port, timeout=60) as c:
        c.send(request_bytes("GET", "/download"))
        r = c.read_response(timeout=60, sink=sink)
    took = time.monotonic() - t
    assert r.status == 200 and n[0] == GIB
    assert h.hexdigest() == pattern_sha256(GIB)
    assert took < 60, f"1 GiB download took {took:.1f}s"
    grew = mon.peak - base
    assert grew < RSS_LIMIT_KIB, f"VmRSS grew by {grew} KiB (base {base} KiB) during the download"


def _cfg(port, admin, addr):
    c = base_config(port, admin)
    c["clusters"] = [{"name": "app", "instances": [addr], "timeout": "2s"}]
    c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
    return to_yaml(c) + "\n"


def _write_atomic(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_sighup_reload_under_load(gateways, make_origin):
    a, b = make_origin("a"), make_origin("b")
    holder = {}

    def first(port, admin):
        holder["port"], holder["admin"] = port, admin
        return _cfg(port, admin, a.addr)

    g = gateways.start(config=first)
    path = gateways.tmp_path / f"polis-{gateways.count}.yaml"
    conf_a = _cfg(holder["port"], holder["admin"], a.addr)
    conf_b = _cfg(holder["port"], holder["admin"], b.addr)
    invalid = conf_b.replace('"app"\n    instances', '"app"\n    bogus_key: 1\n    instances')
    invalid = invalid.replace('cluster: "app"', 'cluster: "missing"')
    assert invalid != conf_b

    stop = threading.Event()
    results = {"ok": 0, "fail": [], "a": 0, "b": 0}
    lock = threading.Lock()

    def load(idx):
        c = None
        n = 0
        while not stop.is_set():
            try:
                if c is None:
                    c = RawClient(g.port, timeout=5)
                c.send(request_bytes("GET", f"/load{idx}-{n}"))
                r = c.read_response(timeout=5)
                n += 1
                with lock:
                    if r.status == 200:
                        results["ok"] += 1
                        results[r.json()["origin"]] += 1
                    else:
                        results["fail"].append(r.status)
                if "close" in (r.header("Connection") or "").lower():
                    c.close()
                    c = None
            except (Closed, OSError) as e:
                with lock:
                    results["fail"].append(repr(e))
                if c:
                    c.close()
                c = None
        if c:
            c.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        # a -> b -> a -> invalid (stays a) -> b -> a
        for i, text in enumerate((conf_b, conf_a, invalid, conf_b, conf_a)):
            time.sleep(1.0)
            assert g.alive(), f"polis died (status {g.proc.returncode}) before SIGHUP #{i + 1}"
            _write_atomic(path, text)
            g.signal(signal.SIGHUP)
            if text is invalid:
                time.sleep(0.5)
                with RawClient(g.port) as c:
                    c.send(request_bytes("GET", "/after-invalid",
                                         headers=[("Connection", "close")]))
                    r = c.read_response()
                    assert r.status == 200 and r.json()["origin"] == "a", (
                        "the invalid configuration was applied or broke routing")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert g.alive(), f"polis died (status {g.proc.returncode}) during the reloads"
    assert not results["fail"], f"{len(results['fail'])} failed requests: {results['fail'][:10]}"
    assert results["ok"] > 50 and results["a"] > 0 and results["b"] > 0, results
    with RawClient(g.port) as c:  # the last valid configuration routes to a
        c.send(request_bytes("GET", "/final", headers=[("Connection", "close")]))
        assert c.read_response().json()["origin"] == "a"
    assert str(path) in g.stderr_text(), "the refused reload did not log the file's errors"


def test_sigterm_drains_in_flight(gateways, origin):
    def cfg(port, admin):
        c = base_config(port, admin)
        c["timeouts"]["drain"] = "5s"
        c["clusters"] = [{"name": "app", "instances": [origin.addr], "timeout": "5s"}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg)
    n = 5
    results = [None] * n

    def slow(i):
        try:
            with RawClient(g.port, timeout=8) as c:
                c.send(request_bytes("GET", f"/slow{i}",
                                     headers=[("X-Origin-Mode", "slow delay=1")]))
                results[i] = c.read_response(timeout=8).status
        except Exception as e:  # noqa: BLE001 (recorded for the assertion)
            results[i] = repr(e)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    assert len(origin.wait_requests(n, timeout=3)) == n, "the slow requests did not arrive"
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = False
    try:
        socket.create_connection(("127.0.0.1", g.port), timeout=0.5).close()
    except ConnectionRefusedError:
        refused = True
    st, _ = g.admin_get("/ready", timeout=0.5)
    for t in threads:
        t.join(10)
    rc = g.wait_exit(8)
    took = time.monotonic() - t0
    assert results == [200] * n, results
    assert refused, "new connections were still accepted while draining"
    assert st in (None, 503), f"/ready answered {st} while draining"
    assert rc == 0, f"exit status {rc} after the drain"
    assert took < 5.5, f"drain took {took:.1f}s"
