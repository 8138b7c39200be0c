"""test_promtool.py: the metrics renderer's output (every kind of family, escaped label values)
passes Prometheus's own parser and linter, `promtool check metrics`, without a single remark."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("POLIS_BUILD", "build"))
UNIT = os.path.join(BUILD, "unit_observe_metrics")


@pytest.fixture(scope="module")
def promtool():
    p = shutil.which("promtool")
    if p is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/install-deps)")
    return p


def check(promtool, text):
    """promtool's exit code and everything it printed, for an exposition given on stdin."""
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace").strip()


def test_promtool_lints(promtool):
    # The checker is live: it flags a counter without _total and rejects a broken escape.
    rc, out = check(promtool, "# HELP x_seconds h\n# TYPE x_seconds counter\nx_seconds 1\n")
    assert rc != 0 and "_total" in out
    rc, out = check(promtool, '# HELP y h\n# TYPE y gauge\ny{a="\\q"} 1\n')
    assert rc != 0


def test_rendered_registry_passes_promtool(promtool, tmp_path):
    if not os.access(UNIT, os.X_OK):
        pytest.skip(f"unit test binary not built: {UNIT}")
    dump = tmp_path / "metrics.txt"
    env = dict(os.environ, POLIS_METRICS_DUMP=str(dump))
    r = subprocess.run([UNIT], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    text = dump.read_text()
    # The sample holds every kind: counters with and without labels, negative gauges, a family
    # with no series, histograms, gauge functions (one NaN) and escaped label values.
    for needle in ("# TYPE polis_up_total counter\npolis_up_total 7\n",
                   'polis_requests_total{route="new\\nline",code="200"} 30\n',
                   'route="quote\\"q"', 'route="back\\\\slash"',
                   'polis_connections{pool="main"} -3\n',
                   "# TYPE polis_empty gauge\n# HELP",
                   'polis_request_duration_seconds_bucket{method="GET",le="0.005"} 2\n',
                   'polis_request_duration_seconds_bucket{method="GET",le="+Inf"} 100\n',
                   "polis_load_ratio 0.5\n", "polis_unknown_ratio NaN\n"):
        assert needle in text, needle
    rc, out = check(promtool, text)
    assert rc == 0 and out == "", out
