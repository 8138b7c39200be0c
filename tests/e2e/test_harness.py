"""test_harness.py: checks of the suite's own pieces (origins, raw client, case loader) that run
without the polis binary, so a harness bug is never mistaken for a gateway bug."""

import hashlib
import os
import socket
import time

import pytest

from harness import (Closed, RawClient, Timeout, case_files, load_case, pattern_sha256,
                     request_bytes, to_yaml, unescape)

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")


def test_unescape():
    assert unescape(r"a\r\n\t\0\x7f\\\s") == b"a\r\n\t\0\x7f\\ "
    assert unescape("{{3*ab}}c") == b"abababc"
    assert unescape(r"{{2*\r\n}}") == b"\r\n\r\n"


def test_all_case_files_load():
    files = case_files(CASES)
    assert len(files) >= 60
    names = set()
    for f in files:
        c = load_case(f)
        assert c.name not in names, f"duplicate case name {c.name}"
        names.add(c.name)
        for st in c.get("expect").split(","):
            for alt in st.split("|"):
                assert alt == "close" or alt.isdigit(), f"{f}: bad expect {st!r}"


def test_case_loader_ignores_real_newlines(tmp_path):
    p = tmp_path / "x.case"
    p.write_text("name: x\nexpect: 400\nupstream: none\n\nGET / HTTP/1.1\\r\\n\nHost: a\\n\n\\r\\n\n")
    c = load_case(str(p))
    assert c.raw == b"GET / HTTP/1.1\r\nHost: a\n\r\n"
    assert c.get("upstream") == "none"


def test_to_yaml_shape():
    y = to_yaml({"a": 1, "b": [{"x": "1", "y": [1, 2]}, "s"], "c": {"d": True}})
    assert y == 'a: 1\nb:\n  - x: "1"\n    y:\n      - 1\n      - 2\n  - "s"\nc:\n  d: true'


def test_origin_echo_keepalive_and_pipelining(origin):
    with RawClient(origin.port) as c:
        c.send(request_bytes("POST", "/a", body=b"hello") + request_bytes("GET", "/b"))
        r1 = c.read_response(timeout=2)
        r2 = c.read_response(timeout=2)
    assert r1.status == 200 and r2.status == 200
    j1, j2 = r1.json(), r2.json()
    assert j1["path"] == "/a" and j1["body_len"] == 5
    assert j1["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert j2["path"] == "/b" and j1["conn"] == j2["conn"]
    assert len(origin.snapshot()) == 2 and origin.connections == 1


def test_origin_chunked_request_and_response(origin):
    origin.set("chunked", size=3)
    with RawClient(origin.port) as c:
        c.send(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
        r = c.read_response(timeout=2)
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.json()["body_len"] == 5
    rec = origin.snapshot()[0]
    assert rec.body == b"abcde" and rec.chunked


def test_origin_large_and_head(origin):
    origin.set("large", n=300000, chunked=1)
    with RawClient(origin.port) as c:
        c.send(request_bytes("GET", "/big") + request_bytes("HEAD", "/big"))
        h = hashlib.sha256()
        r = c.read_response(timeout=5, sink=h.update)
        assert r.status == 200 and h.hexdigest() == pattern_sha256(300000)
        r2 = c.read_response(timeout=2, head_request=True)
        assert r2.status == 200 and r2.body == b""


def test_origin_misbehaving_modes(origin):
    origin.set("close_mid_body", n=1000)
    with RawClient(origin.port) as c:
        c.send(request_bytes())
        with pytest.raises(Closed):
            c.read_response(timeout=2)
    origin.set("rst")
    with RawClient(origin.port) as c:
        c.send(request_bytes())
        with pytest.raises(Closed) as ei:
            c.read_response(timeout=2)
        assert ei.value.reset
    origin.set("never", hold=5)
    with RawClient(origin.port) as c:
        c.send(request_bytes())
        t = time.monotonic()
        with pytest.raises(Timeout):
            c.read_response(timeout=0.3)
        assert time.monotonic() - t < 1
    origin.set("info", code=103, count=2)
    with RawClient(origin.port) as c:
        c.send(request_bytes())
        r = c.read_response(timeout=2)
        assert r.status == 200 and [i.status for i in r.interim] == [103, 103]
    origin.set("nobody", status=304)
    with RawClient(origin.port) as c:
        c.send(request_bytes() + request_bytes())
        assert c.read_response(timeout=2).status == 304
        assert c.read_response(timeout=2).status == 304


def test_origin_header_override_and_slow(origin):
    with RawClient(origin.port) as c:
        t = time.monotonic()
        c.send(request_bytes(headers=[("X-Origin-Mode", "slow delay=0.3")]))
        assert c.read_response(timeout=2).status == 200
        assert time.monotonic() - t >= 0.3


def test_origin_records_partial(origin):
    s = socket.create_connection(("127.0.0.1", origin.port))
    s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    s.close()
    time.sleep(0.2)
    assert origin.snapshot() == [] and len(origin.partial) == 1
