"""Logs: the error log as JSON lines in a file, a failed upstream attempt logged with the
request's id and trace id, and both logs reopened on SIGUSR1 (log rotation)."""
import json
import signal
import time

import requests

from collector import Collector
from harness import base_config, free_port


def lines(path):
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def wait_lines(path, pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [l for l in lines(path) if pred(l)]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_upstream_failure_is_logged_with_request_and_trace_ids(gateways, tmp_path):
    elog, alog = tmp_path / "error.log", tmp_path / "access.log"
    dead = f"127.0.0.1:{free_port()}"
    with Collector() as col:
        def cfg(port, admin_port):
            c = base_config(port, admin_port, workers=1)
            c["error_log"] = str(elog)
            c["access_log"] = str(alog)
            c["tracing"] = {"endpoint": col.endpoint, "sample_ratio": 1.0}
            c["clusters"] = [{"name": "gone", "instances": [dead]}]
            c["routes"] = [{"match": {"prefix": "/"}, "cluster": "gone"}]
            return c

        g = gateways.start(config=cfg)
        r = requests.get(g.url("/lost"), headers={"X-Request-Id": "rid-123"}, timeout=5)
        assert r.status_code == 502
        warn = wait_lines(elog, lambda l: l.get("request_id") == "rid-123")
    assert warn, lines(elog)
    w = warn[0]
    assert w["level"] == "warn" and dead in w["msg"] and "cannot connect" in w["msg"]
    access = wait_lines(alog, lambda l: l["request_id"] == "rid-123")
    assert access and access[0]["trace_id"] == w["trace_id"] and len(w["trace_id"]) == 32
    # start-up lines carry no request context
    assert "request_id" not in lines(elog)[0]


def test_sigusr1_reopens_both_logs(gateways, origin, tmp_path):
    elog, alog = tmp_path / "error.log", tmp_path / "access.log"

    def cfg(port, admin_port):
        c = base_config(port, admin_port, workers=1)
        c["error_log"] = str(elog)
        c["access_log"] = str(alog)
        c["clusters"] = [{"name": "app", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg)
    assert requests.get(g.url("/before"), timeout=5).status_code == 200
    assert wait_lines(alog, lambda l: l["path"] == "/before")
    elog.rename(tmp_path / "error.log.1")
    alog.rename(tmp_path / "access.log.1")
    g.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not (alog.exists() and elog.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.get(g.url("/after"), timeout=5).status_code == 200
    assert wait_lines(alog, lambda l: l["path"] == "/after")
    assert not [l for l in lines(tmp_path / "access.log.1") if l["path"] == "/after"]
    assert wait_lines(elog, lambda l: "reopened" in l["msg"])


def test_access_log_upstream_timings_and_attempts(gateways, origin, tmp_path):
    alog = tmp_path / "access.log"

    def cfg(port, admin_port):
        c = base_config(port, admin_port, workers=1)
        c["access_log"] = str(alog)
        c["clusters"] = [{"name": "app", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg)
    with requests.Session() as s:
        s.get(g.url("/slow"), headers={"X-Origin-Mode": "slow delay=0.2"}, timeout=5)
        s.get(g.url("/again"), timeout=5)  # on the kept-alive upstream connection
    first = wait_lines(alog, lambda l: l["path"] == "/slow")[0]
    again = wait_lines(alog, lambda l: l["path"] == "/again")[0]
    assert first["attempts"] == 1 and first["upstream"] == origin.addr
    assert 200 <= first["upstream_ms"] <= first["duration_ms"] < 2000
    assert 0 <= first["upstream_connect_ms"] < 1000
    assert again["upstream_connect_ms"] == 0  # reused: nothing to open
    assert list(first) == ["ts", "request_id", "client", "method", "path", "host", "status",
                           "bytes_received", "bytes_sent", "duration_ms", "upstream",
                           "upstream_connect_ms", "upstream_ms", "attempts", "route",
                           "cluster"]  # documented order (trace_id only with tracing)


def test_access_log_fields_are_selectable(gateways, origin, tmp_path):
    alog = tmp_path / "access.log"

    def cfg(port, admin_port):
        c = base_config(port, admin_port, workers=1)
        c["access_log"] = str(alog)
        c["access_log_fields"] = ["status", "request_id", "path"]
        c["clusters"] = [{"name": "app", "instances": [origin.addr]}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return c

    g = gateways.start(config=cfg)
    requests.get(g.url("/picked"), headers={"X-Request-Id": "sel-1"}, timeout=5)
    line = wait_lines(alog, lambda l: l.get("request_id") == "sel-1")[0]
    assert line == {"request_id": "sel-1", "path": "/picked", "status": 200}
