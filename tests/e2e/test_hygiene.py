"""test_hygiene.py: the gateway under slow and abusive clients: thousands of connections that
trickle their headers byte by byte (slowloris) while normal clients keep being served."""

import os
import resource
import socket
import sys
import threading
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import base_config  # noqa: E402

SLOW = 4000


def _raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def test_slowloris_4000_connections_do_not_starve_normal_clients(gateways, origin):
    if _raise_nofile(SLOW + 512) < SLOW + 512:
        import pytest
        pytest.skip("the open-file limit is too low for 4000 connections")

    def make(port, admin_port):
        cfg = base_config(port, admin_port, workers=2)
        cfg["timeouts"]["header_read"] = "4s"
        cfg["clusters"] = [{"name": "app", "instances": [origin.addr], "timeout": "2s"}]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    g = gateways.start(config=make)
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    socks = []
    for _ in range(SLOW):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    stop = threading.Event()
    sent = [0]

    def trickle():
        # One more byte on every slow connection about every 250 ms: each head takes minutes.
        i = 0
        while not stop.is_set() and i < len(head):
            for s in socks:
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    pass
            sent[0] += 1
            i += 1
            stop.wait(0.25)

    t = threading.Thread(target=trickle)
    t.start()
    ok, total, lock = [0], [0], threading.Lock()
    deadline = time.monotonic() + 6.0

    def normal():
        sess = requests.Session()
        n = 0
        while time.monotonic() < deadline and n < 5000:
            n += 1
            try:
                good = sess.get(g.url("/normal"), timeout=3).status_code == 200
            except requests.RequestException:
                good = False
            with lock:
                total[0] += 1
                ok[0] += good

    ns = [threading.Thread(target=normal) for _ in range(4)]
    for x in ns:
        x.start()
    for x in ns:
        x.join(30)
    # The header timeout (4 s) has cut the slow connections by now: each got a 408 or a close.
    time.sleep(0.5)
    closed = 0
    for s in socks:
        try:
            data = s.recv(4096)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    stop.set()
    t.join(10)
    for s in socks:
        s.close()
    assert total[0] > 500, f"too few normal requests: {total[0]}"
    assert ok[0] / total[0] >= 0.999, f"{total[0] - ok[0]} of {total[0]} normal requests failed"
    assert closed >= SLOW * 0.99, f"only {closed} of {SLOW} slow connections were cut"
    assert not [r for r in origin.snapshot() if r.target == "/slow"]
