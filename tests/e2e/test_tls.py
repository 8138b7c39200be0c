"""test_tls.py: TLS end to end with the certificates of tests/data/tls: termination with SNI and
resumption, mTLS with the verified subject passed to services, TLS to upstream services with
verification, and certificates reloaded on SIGHUP without dropping connections."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO, base_config, free_port  # noqa: E402

TLS = os.path.join(REPO, "tests", "data", "tls")


def f(name):
    return os.path.join(TLS, name)


def client_ctx(cert=None):
    ctx = ssl.create_default_context(cafile=f("ca.pem"))
    if cert:
        ctx.load_cert_chain(f(cert + ".pem"), f(cert + ".key"))
    return ctx


def https_get(port, host, path="/", cert=None, headers=""):
    """One HTTPS GET over a raw TLS socket; returns (status, body text, peer cert subject)."""
    ctx = client_ctx(cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
                      .encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            peer = dict(x[0] for x in s.getpeercert()["subject"])
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("latin-1"), peer.get("commonName")


def tls_config(origin_addr, client_auth="off", upstream_tls=None, certs=None):
    def make(port, admin_port):
        cfg = base_config(port, admin_port)
        cfg["tls"] = {"certificates": certs or [
            {"cert": f("server-a.pem"), "key": f("server-a.key")},
            {"cert": f("server-b.pem"), "key": f("server-b.key")}],
            "client_auth": client_auth}
        if client_auth != "off":
            cfg["tls"]["client_ca"] = f("ca.pem")
        c = {"name": "app", "instances": [origin_addr]}
        if upstream_tls:
            c["tls"] = upstream_tls
        cfg["clusters"] = [c]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    return make


def test_termination_sni_and_forwarded_proto(gateways, origin):
    g = gateways.start(config=tls_config(origin.addr))
    status, body, cn = https_get(g.port, "a.test")
    assert status == 200 and cn == "a.test"
    assert origin.snapshot()[-1].header("x-forwarded-proto") == "https"
    status, _, cn = https_get(g.port, "b.test")
    assert status == 200 and cn == "b.test"
    # Plain HTTP to the TLS port does not get through.
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{g.port}/", timeout=3)
    # requests (urllib3) over TLS with keep-alive: many requests on one connection.
    s = requests.Session()
    for _ in range(20):
        r = s.get(f"https://localhost:{g.port}/k", verify=f("ca.pem"), timeout=5)
        assert r.status_code == 200


def test_session_resumption(gateways, origin):
    g = gateways.start(config=tls_config(origin.addr))
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # resumption visible on the first exchange
    sess = None
    reused = []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test", session=sess) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                reused.append(s.session_reused)
                sess = s.session
    assert reused == [False, True]


def test_mtls_required_and_subject_forwarded(gateways, origin):
    g = gateways.start(config=tls_config(origin.addr, client_auth="required"))
    status, _, _ = https_get(g.port, "a.test", cert="client",
                             headers="X-Client-Subject: CN=forged\r\n")
    assert status == 200
    got = origin.snapshot()[-1].header_all("x-client-subject")
    assert len(got) == 1 and "CN=client.test" in got[0], got
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        https_get(g.port, "a.test")  # no certificate
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        https_get(g.port, "a.test", cert="other-client")  # signed by another CA


class TLSOrigin:
    """An HTTPS origin (Python's ssl) that answers 200 with the client certificate's CN."""

    def __init__(self, cert, require_client=False):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(f(cert + ".pem"), f(cert + ".key"))
        if require_client:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(f("ca.pem"))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw):
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                s.settimeout(5)
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = s.recv(65536)
                        if not d:
                            return
                        buf += d
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    cert = s.getpeercert()
                    cn = dict(x[0] for x in cert["subject"]).get("commonName") if cert else "-"
                    body = f"tls-origin {cn}".encode()
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))
        except (OSError, ssl.SSLError):
            return

    def close(self):
        self.stop = True
        self.sock.close()


def test_tls_to_upstream_with_verification_and_client_cert(gateways):
    up = TLSOrigin("server-a", require_client=True)
    try:
        def plain(port, admin_port):
            cfg = base_config(port, admin_port)
            cfg["clusters"] = [{"name": "app", "instances": [up.addr], "tls": {
                "ca": f("ca.pem"), "server_name": "a.test",
                "cert": f("client.pem"), "key": f("client.key")}}]
            cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
            return cfg

        g = gateways.start(config=plain)
        s = requests.Session()
        for _ in range(5):
            r = s.get(g.url("/u"), timeout=5)
            assert r.status_code == 200 and r.text == "tls-origin client.test"

        def wrong_name(port, admin_port):
            cfg = plain(port, admin_port)
            cfg["clusters"][0]["tls"]["server_name"] = "b.test"
            return cfg

        g2 = gateways.start(config=wrong_name)
        assert requests.get(g2.url("/u"), timeout=5).status_code == 502
    finally:
        up.close()


def test_certificates_reloaded_on_sighup_without_dropping(gateways, origin, tmp_path):
    cert, key = tmp_path / "cur.pem", tmp_path / "cur.key"
    cert.write_bytes(open(f("server-a.pem"), "rb").read())
    key.write_bytes(open(f("server-a.key"), "rb").read())
    g = gateways.start(config=tls_config(origin.addr, certs=[{"cert": str(cert),
                                                              "key": str(key)}]))
    ctx = client_ctx()
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    held = ctx.wrap_socket(raw, server_hostname="a.test")
    held.sendall(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert held.recv(65536).startswith(b"HTTP/1.1 200")
    cert.write_bytes(open(f("server-b.pem"), "rb").read())
    key.write_bytes(open(f("server-b.key"), "rb").read())
    g.signal(signal.SIGHUP)
    time.sleep(0.5)
    _, _, cn = https_get(g.port, "b.test")
    assert cn == "b.test"  # new connections: the new certificate
    held.sendall(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert held.recv(65536).startswith(b"HTTP/1.1 200")  # the old connection lives on
    held.close()
