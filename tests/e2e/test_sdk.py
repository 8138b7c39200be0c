"""libpolis as a library for users: installed with its headers and polis.pc, the minimal service
of docs/sdk.md builds with pkg-config and serves, and the `make run` setup (two hello services
behind the gateway, examples/hello/polis.yaml) works as the getting-started page says."""
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from harness import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("POLIS_BUILD", "build"))


def wait_http(url, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            return requests.get(url, timeout=1)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_installed_sdk_builds_the_documented_service(tmp_path):
    if not os.path.exists(os.path.join(BUILD, "libpolis.so")):
        pytest.skip("release build missing")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", BUILD, "--prefix", str(prefix)], check=True,
                   capture_output=True)
    assert (prefix / "include/polis/http.h").exists()
    pc_dir = prefix / "lib/pkgconfig"
    assert (pc_dir / "polis.pc").exists()

    doc = open(os.path.join(ROOT, "docs/sdk.md")).read()
    code = re.search(r"```c\n(.*?)```", doc, re.S).group(1)
    port = free_port()
    code = code.replace("127.0.0.1:9001", f"127.0.0.1:{port}")
    src = tmp_path / "main.c"
    src.write_text(code)
    env = dict(os.environ, PKG_CONFIG_PATH=str(pc_dir))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "polis"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    includes = [os.path.realpath(f[2:]) for f in flags if f.startswith("-I")]
    assert os.path.realpath(prefix / "include") in includes  # relocatable polis.pc
    exe = tmp_path / "service"
    subprocess.run(["cc", "-std=c17", "-Wall", "-Wextra", "-Werror", str(src), "-o", str(exe)]
                   + flags, check=True)

    proc = subprocess.Popen([str(exe)], env=dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        r = wait_http(f"http://127.0.0.1:{port}/", proc)
        assert r.status_code == 200
        assert r.json() == {"service": "hello", "instance": "hello-1"}
        assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
    finally:
        assert stop(proc) == 0


def test_make_run_setup_serves_through_the_gateway(tmp_path):
    hello = os.path.join(BUILD, "polis-example-hello")
    polis = os.path.join(BUILD, "polis")
    if not (os.path.exists(hello) and os.path.exists(polis)):
        pytest.skip("release build missing")
    p1, p2, gw_port, admin = free_port(), free_port(), free_port(), free_port()
    cfg = open(os.path.join(ROOT, "examples/hello/polis.yaml")).read()
    for old, new in (("127.0.0.1:8080", gw_port), ("127.0.0.1:9001", p1),
                     ("127.0.0.1:9002", p2), ("127.0.0.1:9901", admin)):
        assert old in cfg
        cfg = cfg.replace(old, f"127.0.0.1:{new}")
    cfg = cfg.replace('access_log: "-"', "access_log: off")
    path = tmp_path / "polis.yaml"
    path.write_text(cfg)

    procs = [subprocess.Popen([hello, "--listen", f"127.0.0.1:{p}", "--name", f"hello-{i}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i, p in ((1, p1), (2, p2))]
    gw = subprocess.Popen([polis, "gateway", "-c", str(path)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    procs.append(gw)
    try:
        for p, proc in ((p1, procs[0]), (p2, procs[1])):
            wait_http(f"http://127.0.0.1:{p}/health", proc)
        assert wait_http(f"http://127.0.0.1:{admin}/ready", gw).status_code == 200
        base = f"http://127.0.0.1:{gw_port}"
        seen = {requests.get(base + "/", timeout=2).json()["instance"] for _ in range(4)}
        assert seen == {"hello-1", "hello-2"}  # round-robin over both
        r = requests.get(base + "/api/hello/ada", timeout=2)
        assert r.status_code == 200 and r.json()["who"] == "ada"  # prefix stripped
        assert r.headers["X-Served-By"] == "polis"
        r = requests.post(base + "/echo", data=b"some data", timeout=2)
        body = r.json()
        assert body["body_length"] == 9
        assert body["headers"]["via"] == "1.1 polis"
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert r.headers["X-Request-Id"] == body["headers"]["x-request-id"]
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes == [0, 0, 0]
