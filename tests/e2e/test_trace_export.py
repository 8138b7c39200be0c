"""test_trace_export.py: the trace exporter alone, end to end: the unit-test binary of
lib/observe/trace.c in its driver mode (POLIS_TRACE_ENDPOINT set) sends spans to collector.py,
to a port where nothing listens, and to a collector that stalls or answers 503."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from collector import Collector  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
_build = os.environ.get("POLIS_BUILD", "build")
BUILD = _build if os.path.isabs(_build) else os.path.join(ROOT, _build)
DRIVER = os.path.join(BUILD, "unit_observe_trace")

SANITIZER = re.compile(rb"ERROR: \w*Sanitizer|runtime error:|WARNING: \w*Sanitizer")


@pytest.fixture(scope="module")
def driver():
    if not os.access(DRIVER, os.X_OK):
        pytest.skip(f"unit_observe_trace not built: {DRIVER}")
    return DRIVER


def run_driver(binary, endpoint, **env):
    e = dict(os.environ)
    e["POLIS_TRACE_ENDPOINT"] = endpoint
    for k, v in env.items():
        e["POLIS_TRACE_" + k.upper()] = str(v)
    p = subprocess.run([binary], env=e, capture_output=True, timeout=120)
    assert not SANITIZER.search(p.stderr), p.stderr.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def dead_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1/traces"


HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
DIGITS = re.compile(r"[0-9]+")


def test_all_spans_exported(driver):
    with Collector() as c:
        t0 = time.time_ns()
        stats = run_driver(driver, c.endpoint, mode="spans", spans=1000, batch_ms=50)
        t1 = time.time_ns()
        spans = c.wait_for_spans(1000, timeout=10)
        time.sleep(0.2)  # nothing more may come
        spans = list(c.spans)
        requests = list(c.requests)
        connections = c.connections
        assert not c.errors, c.errors

    assert stats["submitted"] == 1000
    assert stats["exported"] == 1000
    assert stats["dropped"] == 0
    assert stats["export_failures"] == 0
    assert len(spans) == 1000
    assert all(r["path"] == "/v1/traces" and r["answered"] == 200 for r in requests)
    assert all(r["content_type"] == "application/json" for r in requests)
    assert connections == 1  # one kept-alive connection

    by_name = {s["name"]: s for s in spans}
    assert len(by_name) == 1000
    assert len({s["span_id"] for s in spans}) == 1000
    trace_ids = set()
    for t in range(4):
        for i in range(125):
            root = by_name[f"root t{t} i{i}"]
            child = by_name[f"child t{t} i{i}"]
            for s in (root, child):
                assert HEX32.fullmatch(s["trace_id"]), s
                assert HEX16.fullmatch(s["span_id"]), s
                assert s["service_name"] == "trace-e2e"
                assert s["scope"] == "polis"
                for raw in ("start_time_unix_nano", "end_time_unix_nano"):
                    assert isinstance(s[raw], str) and DIGITS.fullmatch(s[raw]), s
                assert t0 <= s["start_ns"] <= s["end_ns"] <= t1, s
                for a in s["raw_attributes"]:
                    if "intValue" in a["value"]:
                        assert isinstance(a["value"]["intValue"], str), a
            assert root["parent_span_id"] is None
            assert child["parent_span_id"] == root["span_id"]
            assert child["trace_id"] == root["trace_id"]
            trace_ids.add(root["trace_id"])
            assert root["kind"] == 2 and child["kind"] == 3
            assert root["status"] == 1
            assert child["status"] == (2 if i % 10 == 0 else 1)
            assert root["attributes"] == {
                "http.request.method": "GET",
                "http.response.status_code": 200 + i,
                "polis.thread": t,
                "polis.text": 'a"b\\c\nd\x01\ufffd',
            }
            assert child["attributes"] == {"polis.seq": -i}
    assert len(trace_ids) == 500


def check_never_blocks(stats, timeout_ms, total=100000):
    # 100,000 submits from 4 threads: well under a second even with sanitizers.
    assert stats["submit_ms"] < 1000, stats
    assert stats["submitted"] == total, stats
    assert stats["submitted"] == stats["exported"] + stats["dropped"], stats
    assert stats["dropped_before_stop"] > 0, stats
    assert stats["export_failures"] >= 1, stats
    assert stats["stop_ms"] < timeout_ms + 300, stats


def test_collector_down_never_blocks(driver):
    stats = run_driver(driver, dead_endpoint(), mode="flood", spans=100000, timeout_ms=500)
    check_never_blocks(stats, 500)
    assert stats["exported"] == 0


def test_stalled_collector_never_blocks(driver):
    with Collector() as c:
        c.set_mode("stall")
        stats = run_driver(driver, c.endpoint, mode="flood", spans=100000, timeout_ms=1000)
        check_never_blocks(stats, 1000)
        assert stats["exported"] == 0
        assert not c.spans


def test_rejecting_collector(driver):
    with Collector() as c:
        c.set_mode("503")
        stats = run_driver(
            driver, c.endpoint, mode="spans", spans=400, max_batch=50, timeout_ms=1000
        )
        requests = list(c.requests)
    assert stats["submitted"] == 400
    assert stats["exported"] == 0
    assert stats["dropped"] == 400
    assert stats["export_failures"] == len(requests) >= 1
    assert all(r["answered"] == 503 for r in requests)


def test_collector_recovers(driver):
    """One tracer: batches fail while the collector answers 503, then export resumes."""
    with Collector() as c:
        c.set_mode("503")
        e = dict(os.environ)
        e.update(
            POLIS_TRACE_ENDPOINT=c.endpoint,
            POLIS_TRACE_SPANS="40",
            POLIS_TRACE_ROUNDS="20",
            POLIS_TRACE_ROUND_MS="250",
            POLIS_TRACE_BATCH_MS="20",
        )
        p = subprocess.Popen([driver], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not any(r["answered"] == 503 for r in list(c.requests)):
            assert time.monotonic() < deadline, "no request reached the collector"
            time.sleep(0.02)
        c.set_mode("ok")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and not SANITIZER.search(err), err.decode(errors="replace")
        stats = json.loads(out.decode().strip().splitlines()[-1])
        assert stats["submitted"] == 800
        assert stats["submitted"] == stats["exported"] + stats["dropped"]
        assert stats["export_failures"] >= 1 and stats["dropped"] >= 1
        # The backoff is at most a few hundred ms here: most later rounds get through.
        assert stats["exported"] >= 400, stats
        spans = c.wait_for_spans(stats["exported"], timeout=5)
        assert len(spans) == stats["exported"]
        assert any(s["name"] == "root t0 i0 r19" for s in spans)
