"""Metrics and status: exact counters, a known latency in the right histogram buckets,
upstream errors by kind, /status, promtool on the real output, and a real Prometheus server
scraping the gateway and a libpolis service."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest
import requests

from harness import base_config, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("POLIS_BUILD", "build"))
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): float} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not an exposition line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def sample(metrics, name, **labels):
    return metrics.get((name, frozenset(labels.items())))


def scrape(g):
    r = requests.get(f"http://127.0.0.1:{g.admin_port}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.text


def two_routes(origin_addr, **extra):
    def make(port, admin_port):
        cfg = base_config(port, admin_port, workers=2)
        cfg["clusters"] = [{"name": "app", "instances": [origin_addr], "timeout": "3s"}]
        cfg["routes"] = [{"name": "api", "match": {"prefix": "/api/"}, "cluster": "app"},
                         {"name": "slow", "match": {"prefix": "/slow"}, "cluster": "app"}]
        cfg.update(extra)
        return cfg

    return make


def test_request_counters_are_exact(gateways, origin):
    g = gateways.start(config=two_routes(origin.addr))
    with requests.Session() as s:
        for i in range(25):
            assert s.get(g.url(f"/api/x{i}"), timeout=5).status_code == 200
        for i in range(3):
            assert s.get(g.url(f"/nowhere{i}"), timeout=5).status_code == 404
        r = s.get(g.url("/api/teapot"), headers={"X-Origin-Mode": "fixed status=503"}, timeout=5)
        assert r.status_code == 503
    m = parse_metrics(scrape(g))
    assert sample(m, "polis_http_requests_total", route="api", cluster="app",
                  status_class="2xx") == 25
    assert sample(m, "polis_http_requests_total", route="api", cluster="app",
                  status_class="5xx") == 1
    assert sample(m, "polis_http_requests_total", route="", cluster="",
                  status_class="4xx") == 3
    assert sample(m, "polis_http_request_duration_seconds_count", route="api") == 26
    assert sample(m, "polis_http_request_bytes_total", route="api") > 26 * 30
    assert sample(m, "polis_http_response_bytes_total", route="api") > 26 * 100
    assert sample(m, "polis_upstream_connections_total", cluster="app") >= 1
    assert (sample(m, "polis_upstream_connections_total", cluster="app")
            + sample(m, "polis_upstream_connections_reused_total", cluster="app")) == 26
    assert sample(m, "polis_connections_total") >= 1
    assert sample(m, "polis_upstream_idle_connections", instance=origin.addr) >= 1
    assert sample(m, "polis_build_info", version="0.1.0") == 1
    assert sample(m, "polis_config_version") == 1


def test_known_latency_lands_in_the_right_buckets(gateways, origin):
    g = gateways.start(config=two_routes(origin.addr))
    for _ in range(3):
        r = requests.get(g.url("/slow"), headers={"X-Origin-Mode": "slow delay=0.3"}, timeout=5)
        assert r.status_code == 200
    m = parse_metrics(scrape(g))
    b = lambda le: sample(m, "polis_http_request_duration_seconds_bucket", route="slow", le=le)
    assert b("0.25") == 0 and b("0.5") == 3 and b("+Inf") == 3
    total = sample(m, "polis_http_request_duration_seconds_sum", route="slow")
    assert 0.9 <= total < 1.5
    u = lambda le: sample(m, "polis_upstream_response_duration_seconds_bucket", cluster="app",
                          le=le)
    assert u("0.25") == 0 and u("0.5") == 3


def test_upstream_errors_by_kind(gateways, make_origin):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    def cfg(port, admin_port):
        c = base_config(port, admin_port, workers=1)
        c["clusters"] = [{"name": "gone", "instances": [dead], "connect_timeout": "1s"}]
        c["routes"] = [{"match": {"prefix": "/"}, "cluster": "gone"}]
        return c

    g = gateways.start(config=cfg)
    for _ in range(2):
        assert requests.get(g.url("/"), timeout=5).status_code == 502
    m = parse_metrics(scrape(g))
    assert sample(m, "polis_upstream_errors_total", cluster="gone", kind="connect") == 2
    assert sample(m, "polis_upstream_errors_total", cluster="gone", kind="timeout") == 0
    assert sample(m, "polis_http_requests_total", route="route-0", cluster="gone",
                  status_class="5xx") == 2


def test_active_connections_and_status(gateways, origin):
    g = gateways.start(config=two_routes(origin.addr))
    sessions = [requests.Session() for _ in range(3)]
    try:
        for s in sessions:
            assert s.get(g.url("/api/keep"), timeout=5).status_code == 200
        m = parse_metrics(scrape(g))
        assert sample(m, "polis_connections_active") >= 3
        st = requests.get(f"http://127.0.0.1:{g.admin_port}/status", timeout=5).json()
        assert st["version"] == "0.1.0" and st["workers"] == 2 and st["draining"] is False
        assert st["config"]["version"] == 1 and st["config"]["source"].endswith(".yaml")
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", st["config"]["loaded_at"])
        assert st["connections"]["active"] >= 3 and st["connections"]["total"] >= 3
        assert st["clusters"] == [{"name": "app", "instances": [origin.addr]}]
        assert st["uptime_seconds"] >= 0
    finally:
        for s in sessions:
            s.close()


def promtool():
    return shutil.which("promtool")


@pytest.mark.skipif(promtool() is None, reason="promtool missing (Debian package prometheus)")
def test_promtool_accepts_gateway_and_service_metrics(gateways, origin, tmp_path):
    g = gateways.start(config=two_routes(origin.addr))
    requests.get(g.url("/api/x"), timeout=5)
    requests.get(g.url("/nowhere"), timeout=5)
    outputs = {"gateway": scrape(g)}
    hello = os.path.join(BUILD, "polis-example-hello")
    port = free_port()
    svc = subprocess.Popen([hello, "--listen", f"127.0.0.1:{port}", "--name", "m"],
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        requests.get(f"http://127.0.0.1:{port}/missing", timeout=2)
        outputs["service"] = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    finally:
        svc.send_signal(signal.SIGTERM)
        assert svc.wait(timeout=10) == 0
    m = parse_metrics(outputs["service"])
    assert sample(m, "polis_server_requests_total", status_class="2xx") == 1
    assert sample(m, "polis_server_requests_total", status_class="4xx") == 1
    for name, text in outputs.items():
        r = subprocess.run([promtool(), "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", \
            f"promtool on the {name}'s metrics:\n{r.stdout}{r.stderr}"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing")
def test_real_prometheus_scrapes_gateway_and_service(gateways, origin, tmp_path):
    g = gateways.start(config=two_routes(origin.addr))
    hello = os.path.join(BUILD, "polis-example-hello")
    svc_port, prom_port = free_port(), free_port()
    procs = [subprocess.Popen([hello, "--listen", f"127.0.0.1:{svc_port}", "--name", "p"],
                              stderr=subprocess.DEVNULL)]
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: gateway
    static_configs: [{{targets: ["127.0.0.1:{g.admin_port}"]}}]
  - job_name: service
    static_configs: [{{targets: ["127.0.0.1:{svc_port}"]}}]
""")
    procs.append(subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        with requests.Session() as s:
            for i in range(5):
                s.get(g.url(f"/api/p{i}"), timeout=5)
                try:
                    s.get(f"http://127.0.0.1:{svc_port}/", timeout=2)
                except requests.ConnectionError:
                    time.sleep(0.2)

        def query(q):
            url = (f"http://127.0.0.1:{prom_port}/api/v1/query?query="
                   + urllib.parse.quote(q))
            return requests.get(url, timeout=2).json()["data"]["result"]

        deadline = time.monotonic() + 30
        gw = svc = []
        while time.monotonic() < deadline:
            try:
                gw = query('polis_http_requests_total{job="gateway",route="api",status_class="2xx"}')
                svc = query('polis_server_requests_total{job="service",status_class="2xx"}')
            except (requests.ConnectionError, ValueError, KeyError):
                pass
            if gw and svc:
                break
            time.sleep(0.5)
        assert gw, "Prometheus has no gateway series"
        assert svc, "Prometheus has no service series"
        assert float(gw[0]["value"][1]) == 5
        assert float(svc[0]["value"][1]) >= 1
        up = query("up")
        assert {r["metric"]["job"]: r["value"][1] for r in up} == {"gateway": "1", "service": "1"}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
