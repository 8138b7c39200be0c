"""conftest.py: fixtures of the end-to-end suite: scripted origins and polis gateways that are
always stopped (and checked for sanitizer reports and a clean exit) when a test ends."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Gateway, Origin, base_config, free_port, quick_args, to_yaml  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "operations: slow stress and operations tests")
    config.addinivalue_line("markers", "needs_polis: needs the polis binary")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if os.path.basename(str(item.fspath)) == "test_operations.py":
            item.add_marker(pytest.mark.operations)


@pytest.fixture(scope="session")
def polis_bin():
    b = harness.default_binary()
    if not os.access(b, os.X_OK):
        pytest.skip(f"polis binary not built: {b} (run `make build asan` first)")
    return b


@pytest.fixture(scope="session")
def release_bin():
    b = os.environ.get("POLIS_RELEASE_BIN") or harness.release_binary()
    if not os.access(b, os.X_OK):
        pytest.skip(f"release polis binary not built: {b}")
    return b


class OriginFactory:
    def __init__(self):
        self.origins = []

    def __call__(self, name=None, port=None):
        o = Origin(name or f"origin{len(self.origins) + 1}", port=port)
        self.origins.append(o)
        return o

    def close(self):
        for o in self.origins:
            o.close()


@pytest.fixture
def make_origin():
    f = OriginFactory()
    yield f
    f.close()


@pytest.fixture
def origin(make_origin):
    return make_origin("origin1")


class GatewayFactory:
    """start(...) runs a gateway in quick mode (upstreams=[...]) or with a YAML configuration
    (config=dict or str, written to the test's tmp_path). Every gateway is stopped at the end
    of the test; a sanitizer report or a bad exit fails the test."""

    def __init__(self, tmp_path, binary):
        self.tmp_path = tmp_path
        self.binary = binary
        self.gateways = []
        self.count = 0

    def config_path(self, config, name=None):
        self.count += 1
        path = self.tmp_path / (name or f"polis-{self.count}.yaml")
        path.write_text(config if isinstance(config, str) else to_yaml(config) + "\n")
        return path

    def start(self, upstreams=None, config=None, workers=2, extra=(), binary=None,
              port=None, admin_port=None, ready_timeout=15.0, env=None, admin_token=None):
        port = port or free_port()
        admin_port = admin_port or free_port()
        if config is not None:
            if callable(config):
                config = config(port, admin_port)
            path = self.config_path(config)
            args = ["gateway", "-c", str(path)] + list(extra)
        else:
            args = quick_args(port, admin_port, upstreams or [], workers, extra)
        g = Gateway(args, self.tmp_path, binary=binary or self.binary, listen_port=port,
                    admin_port=admin_port, env=env, admin_token=admin_token)
        self.gateways.append(g)
        g.start(ready_timeout)
        return g

    def stop_all(self):
        errors = []
        for g in self.gateways:
            try:
                g.stop(timeout=15.0)
            except AssertionError as e:
                errors.append(str(e))
        return errors


@pytest.fixture
def gateways(tmp_path, polis_bin):
    f = GatewayFactory(tmp_path, polis_bin)
    yield f
    errors = f.stop_all()
    if errors:
        pytest.fail("gateway problem at teardown:\n" + "\n\n".join(errors), pytrace=False)


@pytest.fixture
def quick(gateways, origin):
    """A quick-mode gateway in front of one echo origin: (gateway, origin)."""
    g = gateways.start(upstreams=[origin.addr], extra=["--upstream-timeout", "2s"])
    return g, origin


def simple_config(origin_addrs, **over):
    """A config factory (port, admin_port) -> dict with one cluster 'app' and a catch-all
    route, for gateways.start(config=...)."""

    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["clusters"] = [{"name": "app", "instances": list(origin_addrs), "timeout": "2s",
                            "connect_timeout": "1s"}]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        cfg.update(over)
        return cfg

    return make
