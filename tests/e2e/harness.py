"""harness.py: the pieces of the end-to-end suite: run the real polis binary, scripted origins
(upstream servers that can misbehave precisely), a raw HTTP client and the .case file loader."""

import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SANITIZER_PATTERNS = [
    re.compile(rb"ERROR: \w*Sanitizer"),
    re.compile(rb"runtime error:"),
    re.compile(rb"WARNING: \w*Sanitizer"),
]


# ---- binaries ------------------------------------------------------------------------------


def build_dir():
    d = os.environ.get("POLIS_BUILD", "build")
    return d if os.path.isabs(d) else os.path.join(REPO, d)


def release_binary():
    return os.path.join(build_dir(), "polis")


def asan_binary():
    return os.path.join(build_dir(), "asan", "polis")


def default_binary():
    """POLIS_BIN, else the ASan build when it exists, else the release build."""
    env = os.environ.get("POLIS_BIN")
    if env:
        return os.path.abspath(env)
    if os.access(asan_binary(), os.X_OK):
        return asan_binary()
    return release_binary()


# ---- ports ---------------------------------------------------------------------------------


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_accepts(port, timeout=0.2):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


# ---- YAML (a tiny block-style writer: enough for the gateway configuration) ------------------


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))  # a double-quoted YAML scalar


def to_yaml(obj, indent=0):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, (dict, list)):
                out.append(f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                sub = to_yaml(v, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0].lstrip()
                out.append("\n".join(sub))
            elif isinstance(v, list):
                out.append(f"{pad}- {json.dumps(v)}")
            else:
                out.append(f"{pad}- {_scalar(v)}")
    else:
        out.append(pad + _scalar(obj))
    return "\n".join(out)


# ---- the gateway process -------------------------------------------------------------------


class GatewayError(AssertionError):
    pass


class Gateway:
    """One polis gateway process. Start with start(); stop() checks the exit status and the
    sanitizer output and raises GatewayError when something is wrong."""

    def __init__(self, args, workdir, binary=None, listen_port=None, admin_port=None, env=None,
                 admin_token=None):
        self.binary = os.path.abspath(binary or default_binary())
        self.args = list(args)
        self.workdir = str(workdir)
        self.port = listen_port
        self.admin_port = admin_port
        self.admin_token = admin_token  # sent as a bearer token on admin requests
        self.proc = None
        self.stderr_path = os.path.join(self.workdir, f"polis-stderr-{id(self)}.log")
        self.stdout_path = os.path.join(self.workdir, f"polis-stdout-{id(self)}.log")
        self.env = dict(os.environ)
        self.env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if env:
            self.env.update(env)
        self.returncode = None
        self._stopped = False
        self._terminated = False

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=10.0):
        if not os.access(self.binary, os.X_OK):
            raise GatewayError(f"polis binary not found: {self.binary}")
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen([self.binary] + self.args, stdout=self._out,
                                     stderr=self._err, stdin=subprocess.DEVNULL, env=self.env,
                                     cwd=self.workdir)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayError(f"polis exited with {self.proc.returncode} while starting:\n"
                                   + self.stderr_text()[-4000:])
            ready = True
            if self.admin_port is not None:
                ready = self.admin_get("/ready")[0] == 200
            if ready and self.port is not None:
                ready = port_accepts(self.port)
            if ready:
                return
            time.sleep(0.05)
        raise GatewayError(f"polis did not become ready in {timeout}s:\n"
                           + self.stderr_text()[-4000:])

    def admin_get(self, path, timeout=1.0):
        """(status, body bytes) of a GET on the admin listener; (None, b'') when it fails."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}")
        if self.admin_token:
            req.add_header("Authorization", "Bearer " + self.admin_token)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return None, b""

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def stderr_bytes(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def stderr_text(self):
        return self.stderr_bytes().decode("utf-8", "replace")

    def log_lines(self):
        """The JSON lines of stderr (other lines are skipped)."""
        out = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def sanitizer_report(self):
        data = self.stderr_bytes()
        for p in SANITIZER_PATTERNS:
            m = p.search(data)
            if m:
                start = max(0, m.start() - 200)
                return data[start:start + 6000].decode("utf-8", "replace")
        return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._terminated = True
        self.proc.send_signal(sig)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10.0, check=True):
        """SIGTERM, wait, SIGKILL after timeout. With check, raise when the process did not exit
        by itself with status 0 or printed a sanitizer report."""
        if self.proc is None or self._stopped:
            return self.returncode
        self._stopped = True
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append(f"polis did not exit within {timeout}s of SIGTERM (killed)")
        elif check and not self._terminated:
            problems.append(f"polis had already exited (status {self.proc.returncode}) "
                            "before it was told to stop")
        self.returncode = self.proc.returncode
        self._err.close()
        self._out.close()
        if self.returncode != 0 and not problems:
            problems.append(f"polis exited with status {self.returncode} after SIGTERM")
        rep = self.sanitizer_report()
        if rep:
            problems.append("sanitizer report on stderr:\n" + rep)
        if check and problems:
            raise GatewayError("\n".join(problems) + "\n--- stderr tail ---\n"
                               + self.stderr_text()[-3000:])
        return self.returncode


def quick_args(port, admin_port, upstreams, workers=2, extra=()):
    args = ["gateway", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin_port}",
            "--workers", str(workers)]
    for u in upstreams:
        args += ["--upstream", u if isinstance(u, str) else f"127.0.0.1:{u}"]
    return args + list(extra)


def base_config(port, admin_port, workers=2, **over):
    """A YAML configuration dict with small timeouts, for tests to extend."""
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "admin": f"127.0.0.1:{admin_port}",
        "workers": workers,
        "timeouts": {"header_read": "3s", "body_read": "3s", "idle": "10s", "drain": "3s"},
        "clusters": [],
        "routes": [],
    }
    cfg.update(over)
    return cfg


# ---- a raw HTTP client ---------------------------------------------------------------------


class Closed(Exception):
    """The peer closed the connection (EOF or reset) before a complete response."""

    def __init__(self, msg, partial=b"", reset=False):
        super().__init__(msg)
        self.partial = partial
        self.reset = reset


class Timeout(Exception):
    pass


class HeaderLookup:
    """Case-insensitive lookups in self.headers, a list of (name, value) pairs."""

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]


class Response(HeaderLookup):
    def __init__(self, status, reason, version, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.raw_head = raw_head
        self.interim = []  # 1xx responses before this one


    def has(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class RawClient:
    """Sends exact bytes and reads responses (possibly several, pipelined) with deadlines."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.reset = False
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        """Read more bytes into buf; False on EOF/reset; raises Timeout past the deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout("deadline passed")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 18)
        except socket.timeout:
            raise Timeout("deadline passed") from None
        except (ConnectionResetError, BrokenPipeError):
            self.eof = True
            self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _need(self, n, deadline, what):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Closed(f"closed during {what}", self.buf, self.reset)

    def _line(self, deadline, what):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                return line
            if not self._fill(deadline):
                raise Closed(f"closed during {what}", self.buf, self.reset)

    def read_head(self, deadline):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = self.buf[:i + 4]
                self.buf = self.buf[i + 4:]
                break
            if not self._fill(deadline):
                raise Closed("closed before a complete response head", self.buf, self.reset)
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError(f"bad status line {lines[0]!r}")
        headers = []
        for ln in lines[1:]:
            k, sep, v = ln.partition(b":")
            assert sep, f"bad header line {ln!r}"
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return Response(int(m.group(2)), (m.group(3) or b"").decode("latin-1"),
                        m.group(1).decode(), headers, b"", head)

    def read_response(self, timeout=None, head_request=False, sink=None):
        """The next final response (1xx are collected in .interim). sink(bytes) receives the
        body instead of keeping it when given."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        interim = []
        while True:
            r = self.read_head(deadline)
            if 100 <= r.status < 200 and r.status != 101:
                interim.append(r)
                continue
            break
        r.interim = interim
        parts = []
        keep = sink is None
        if sink is None:
            sink = parts.append
        te = r.header("Transfer-Encoding")
        cl = r.header("Content-Length")
        if head_request or r.status in (204, 304) or 100 <= r.status < 200:
            pass
        elif te is not None:
            assert te.lower() == "chunked", f"unexpected transfer-encoding {te!r}"
            while True:
                line = self._line(deadline, "chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line(deadline, "trailer") != b"":
                        pass
                    break
                self._read_body(size, deadline, sink)
                self._need(2, deadline, "chunk CRLF")
                assert self.buf[:2] == b"\r\n", "missing CRLF after chunk"
                self.buf = self.buf[2:]
        elif cl is not None:
            self._read_body(int(cl), deadline, sink)
        else:
            while self._fill(deadline):
                pass
            sink(self.buf)
            self.buf = b""
        if keep:
            r.body = b"".join(parts)
        return r

    def _read_body(self, n, deadline, sink):
        while n > 0:
            if not self.buf and not self._fill(deadline):
                raise Closed(f"closed with {n} body bytes missing", b"", self.reset)
            take = self.buf[:n]
            self.buf = self.buf[len(take):]
            n -= len(take)
            sink(take)

    def wait_closed(self, timeout=3.0):
        """True when the peer closes (EOF or reset) within timeout with nothing more sent;
        returns the extra bytes in self.buf otherwise (False)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except Timeout:
            return False
        return self.buf == b""


def request_bytes(method="GET", path="/", host="test.local", headers=(), body=b"",
                  version="HTTP/1.1"):
    h = [f"{method} {path} {version}", f"Host: {host}"] if host is not None else [
        f"{method} {path} {version}"]
    for k, v in headers:
        h.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        h.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + body


def simple_get(port, path="/", headers=(), timeout=5.0, host="test.local"):
    with RawClient(port, timeout=timeout) as c:
        c.send(request_bytes("GET", path, host=host,
                             headers=list(headers) + [("Connection", "close")]))
        return c.read_response()


# ---- origins (scripted upstream servers) ---------------------------------------------------

PATTERN_BLOCK = hashlib.sha256(b"polis").digest() * 2048  # 64 KiB of fixed bytes


def pattern_chunks(n, block=PATTERN_BLOCK):
    """n bytes of a fixed pattern, as a generator of blocks (never all in memory)."""
    while n > 0:
        take = block if n >= len(block) else block[:n]
        n -= len(take)
        yield take


def pattern_sha256(n):
    h = hashlib.sha256()
    for b in pattern_chunks(n):
        h.update(b)
    return h.hexdigest()


class Recorded(HeaderLookup):
    def __init__(self, conn_id):
        self.conn_id = conn_id
        self.method = self.target = self.version = None
        self.headers = []
        self.head_raw = b""
        self.body = b""
        self.body_len = 0
        self.body_sha256 = None
        self.chunked = False
        self.complete = False
        self.seq = 0  # 1 for the first request on its connection, 2 for the next...
        self.early = False  # answered by mode "early": the body was not read before the answer
        self.tunnel_data = b""  # what came through after a 101 (mode "upgrade")
        self.early_buffered = 0  # mode "early": body bytes read along with the head
        self.peer_port = 0  # the gateway's port of the connection it came on


    def __repr__(self):
        return (f"<Recorded {self.method} {self.target} {self.version} conn={self.conn_id} "
                f"body={self.body_len} complete={self.complete}>")


class _BadRequest(Exception):
    """What the gateway sent is malformed (a gateway bug)."""


class _Aborted(Exception):
    """The gateway closed in the middle of a request (a legitimate abort)."""


class Origin:
    """A threaded upstream on 127.0.0.1 that records every request and answers according to its
    mode (set with set(), or per request with an "X-Origin-Mode: mode k=v ..." header).

    Modes: echo (200 + JSON of what was received), fixed (status, body, headers), chunked
    (echo body in chunks), large (n bytes, chunked=0/1), slow (delay then echo),
    close_after_head, close_mid_body, garbage, rst, never, info (code=100|103 then echo),
    nobody (status=204|304 with body-looking headers), raw (data bytes then close unless
    keep=1), early (reads the head only, answers status with Content-Length: 0 after delay,
    waits hold seconds, then skips the body as its framing says), close_reused (echo for the
    first request of a connection, close without an answer for later ones: a keep-alive timeout
    racing a reuse), upgrade (101 Switching Protocols, echoes bytes until EOF, then sends final
    and closes).
    Parameters common to echo-like modes: status, delay."""

    KEEP_BODY = 1 << 20

    def __init__(self, name="origin", port=None):
        self.name = name
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port or 0))
        self.lsock.listen(512)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.mode = "echo"
        self.params = {}
        self.requests = []  # complete requests, in arrival order
        self.partial = []  # requests whose head or body did not arrive completely
        self.connections = 0
        self.errors = []  # protocol errors seen in what the gateway sent
        self.socks = set()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    # control

    def set(self, mode, **params):
        with self.lock:
            self.mode = mode
            self.params = params

    def reset(self):
        with self.lock:
            self.requests = []
            self.partial = []
            self.connections = 0
            self.errors = []
            self.mode = "echo"
            self.params = {}

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def wait_requests(self, n, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        return self.snapshot()

    def close(self):
        self.stopping.set()
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2)

    # serving

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                cid = self.connections
                self.socks.add(s)
            threading.Thread(target=self._serve, args=(s, cid), daemon=True).start()

    def _serve(self, s, cid):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = {"buf": b"", "n": 0, "skip": 0, "early": None}
        try:
            peer_port = s.getpeername()[1]
        except OSError:
            peer_port = 0
        try:
            while not self.stopping.is_set():
                rec = Recorded(cid)
                st["n"] += 1
                rec.seq = st["n"]
                rec.peer_port = peer_port
                try:
                    if not self._read_request(s, st, rec):
                        return
                except _BadRequest as e:
                    with self.lock:
                        self.errors.append(str(e))
                        self.partial.append(rec)
                    return
                except (OSError, _Aborted):
                    with self.lock:
                        self.partial.append(rec)
                    return
                rec.complete = True
                with self.lock:
                    self.requests.append(rec)
                mode, params = self._mode_for(rec)
                if not self._respond(s, rec, mode, params, st):
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                self.socks.discard(s)
            try:
                s.close()
            except OSError:
                pass

    def _mode_for(self, rec):
        """(mode, params) for a request: its X-Origin-Mode header, else the origin's mode."""
        override = rec.header("X-Origin-Mode")
        if override:
            parts = override.split()
            return parts[0], dict(p.split("=", 1) for p in parts[1:])
        with self.lock:
            return self.mode, dict(self.params)

    def _recv(self, s, st):
        data = s.recv(1 << 18)
        if not data:
            return False
        st["buf"] += data
        return True

    def _read_request(self, s, st, rec):
        while st["skip"] != 0:  # the body of a request answered early: not a request
            if not st["buf"] and not self._recv(s, st):
                return False
            n = len(st["buf"]) if st["skip"] < 0 else min(st["skip"], len(st["buf"]))
            st["buf"] = st["buf"][n:]
            st["early"].body_len += n  # what of the body arrived, after all
            st["skip"] = st["skip"] - n if st["skip"] > 0 else -1
        while True:
            i = st["buf"].find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(st["buf"]) > 1 << 20:
                raise _BadRequest("head too big")
            if not self._recv(s, st):
                if st["buf"]:
                    rec.head_raw = st["buf"]
                    with self.lock:
                        self.partial.append(rec)
                return False
        head = st["buf"][:i + 4]
        st["buf"] = st["buf"][i + 4:]
        rec.head_raw = head
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise _BadRequest(f"bad request line {lines[0]!r}")
        rec.method, rec.target, rec.version = (p.decode("latin-1") for p in parts)
        for ln in lines[1:]:
            k, sep, v = ln.partition(b":")
            if not sep or b"\n" in ln or b"\r" in ln:
                raise _BadRequest(f"bad header line {ln!r}")
            rec.headers.append((k.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        if self._mode_for(rec)[0] == "early":
            rec.early = True
            rec.early_buffered = len(st["buf"])
            st["early"] = rec
            cl = rec.header("Content-Length") or "0"
            st["skip"] = int(cl) if cl.isdigit() and rec.header("Transfer-Encoding") is None else -1
            return True
        if (rec.header("Expect") or "").lower() == "100-continue":
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        h = hashlib.sha256()
        keep = []

        def take(data):
            h.update(data)
            rec.body_len += len(data)
            if rec.body_len <= self.KEEP_BODY:
                keep.append(data)

        te = rec.header("Transfer-Encoding")
        cls = rec.header_all("Content-Length")
        if te is not None:
            if te.lower() != "chunked" or cls:
                raise _BadRequest(f"bad framing te={te!r} cl={cls!r}")
            rec.chunked = True
            self._read_chunked(s, st, take)
        elif cls:
            if len(cls) != 1 or not cls[0].isdigit():
                raise _BadRequest(f"bad content-length {cls!r}")
            n = int(cls[0])
            while n > 0:
                if not st["buf"] and not self._recv(s, st):
                    raise _Aborted(f"body ended {n} bytes early")
                d = st["buf"][:n]
                st["buf"] = st["buf"][len(d):]
                n -= len(d)
                take(d)
        rec.body = b"".join(keep) if rec.body_len <= self.KEEP_BODY else b""
        rec.body_sha256 = h.hexdigest()
        return True

    def _line(self, s, st):
        while True:
            i = st["buf"].find(b"\r\n")
            if i >= 0:
                ln = st["buf"][:i]
                st["buf"] = st["buf"][i + 2:]
                return ln
            if not self._recv(s, st):
                raise _Aborted("closed in chunked framing")

    def _read_chunked(self, s, st, take):
        while True:
            ln = self._line(s, st)
            try:
                size = int(ln.split(b";")[0], 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size {ln!r}") from None
            if size == 0:
                while self._line(s, st) != b"":
                    pass
                return
            n = size
            while n > 0:
                if not st["buf"] and not self._recv(s, st):
                    raise _Aborted("closed in chunk data")
                d = st["buf"][:n]
                st["buf"] = st["buf"][len(d):]
                n -= len(d)
                take(d)
            if self._line(s, st) != b"":
                raise _BadRequest("no CRLF after chunk data")

    def echo_body(self, rec):
        return json.dumps({
            "origin": self.name,
            "method": rec.method,
            "path": rec.target,
            "version": rec.version,
            "headers": rec.headers,
            "body_len": rec.body_len,
            "body_sha256": rec.body_sha256,
            "conn": rec.conn_id,
        }).encode()

    def _keep_alive(self, rec):
        conn = (rec.header("Connection") or "").lower()
        if rec.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    def _respond(self, s, rec, mode, p, st=None):
        """Answer one request; returns False when the connection must end."""
        ka = self._keep_alive(rec)
        conn_hdr = b"" if ka else b"Connection: close\r\n"
        status = int(p.get("status", 200))
        head_only = rec.method == "HEAD"
        delay = float(p.get("delay", 0))
        if delay:
            if self.stopping.wait(delay):
                return False
        if mode == "close_reused":
            if rec.seq > 1:
                return False
            mode = "echo"
        if mode == "early":
            s.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n%s\r\n" % (status, conn_hdr))
            if self.stopping.wait(float(p.get("hold", 0))):  # still not reading the body
                return False
            return ka
        if mode == "upgrade":
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: upgrade\r\n\r\n")
            data, st["buf"] = st["buf"], b""
            while True:
                if data:
                    rec.tunnel_data += data
                    s.sendall(data)
                data = s.recv(1 << 16)
                if not data:
                    s.sendall(p.get("final", "bye").encode("latin-1"))
                    time.sleep(0.05)
                    return False
        if mode in ("echo", "slow", "info", "chunked"):
            if mode == "info":
                code = int(p.get("code", 103))
                extra = b"Link: </style.css>; rel=preload\r\n" if code == 103 else b""
                for _ in range(int(p.get("count", 1))):
                    s.sendall(b"HTTP/1.1 %d Info\r\n%s\r\n" % (code, extra))
            body = self.echo_body(rec)
            hdrs = b"Content-Type: application/json\r\nX-Origin: %s\r\n" % self.name.encode()
            for k, v in p.items():
                if k.startswith("h_"):
                    hdrs += f"{k[2:]}: {v}\r\n".encode()
            if mode == "chunked":
                size = int(p.get("size", 7))
                out = [b"HTTP/1.1 %d OK\r\n%sTransfer-Encoding: chunked\r\n%s\r\n"
                       % (status, hdrs, conn_hdr)]
                if not head_only:
                    for i in range(0, len(body), size):
                        c = body[i:i + size]
                        out.append(b"%x;ext=1\r\n%s\r\n" % (len(c), c))
                    out.append(b"0\r\nX-Trailer: yes\r\n\r\n")
                for o in out:
                    s.sendall(o)
            else:
                s.sendall(b"HTTP/1.1 %d OK\r\n%sContent-Length: %d\r\n%s\r\n%s"
                          % (status, hdrs, len(body), conn_hdr, b"" if head_only else body))
            return ka
        if mode == "fixed":
            body = p.get("body", "").encode("latin-1")
            hdrs = b"".join(f"{k[2:]}: {v}\r\n".encode() for k, v in p.items()
                            if k.startswith("h_"))
            s.sendall(b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n%s\r\n%s"
                      % (status, hdrs, len(body), conn_hdr, b"" if head_only else body))
            return ka
        if mode == "large":
            n = int(p.get("n", 1 << 20))
            if int(p.get("chunked", 0)):
                s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s\r\n" % conn_hdr)
                if not head_only:
                    for blk in pattern_chunks(n):
                        s.sendall(b"%x\r\n%s\r\n" % (len(blk), blk))
                    s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (n, conn_hdr))
                if not head_only:
                    for blk in pattern_chunks(n):
                        s.sendall(blk)
            return ka
        if mode == "close_after_head":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            time.sleep(0.05)
            return False
        if mode == "close_mid_body":
            n = int(p.get("n", 100000))
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            s.sendall(b"x" * (n // 2))
            time.sleep(0.05)
            return False
        if mode == "garbage":
            s.sendall(p.get("data", "SSH-2.0-OpenSSH_9.2 this is not http\r\n\r\n").encode())
            time.sleep(0.05)
            return False
        if mode == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "never":
            self.stopping.wait(float(p.get("hold", 60)))
            return False
        if mode == "nobody":
            if status == 304:
                s.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n"
                          b"Content-Length: 123\r\n%s\r\n" % conn_hdr)
            else:
                s.sendall(b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n%s\r\n"
                          % conn_hdr)
            return ka
        if mode == "raw":
            data = p["data"]
            s.sendall(data if isinstance(data, bytes) else data.encode("latin-1"))
            if int(p.get("keep", 0)):
                return ka
            time.sleep(0.05)
            return False
        raise AssertionError(f"unknown origin mode {mode!r}")


def dead_port():
    """A port with no listener (connections are refused)."""
    return free_port()


# ---- .case files ---------------------------------------------------------------------------

_ESC = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\s])")
_MACRO = re.compile(rb"\{\{(\d+)\*([^}]*)\}\}")


def unescape(data):
    """Decode \\r \\n \\t \\0 \\s (space) \\\\ \\xHH and {{N*text}} (text repeated N times)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    data = _MACRO.sub(lambda m: m.group(2) * int(m.group(1)), data)

    def rep(m):
        e = m.group(1)
        if e[:1] == b"x":
            return bytes([int(e[1:], 16)])
        return {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\",
                b"s": b" "}[e]

    return _ESC.sub(rep, data)


class Case:
    def __init__(self, path, meta, raw):
        self.path = path
        self.meta = meta  # list of (key, value), keys may repeat
        self.raw = raw

    def get(self, key, default=None):
        for k, v in self.meta:
            if k == key:
                return v
        return default

    def all(self, key):
        return [v for k, v in self.meta if k == key]

    @property
    def name(self):
        return self.get("name") or os.path.splitext(os.path.basename(self.path))[0]


KNOWN_KEYS = {"name", "expect", "upstream", "origin", "origin_data", "origin_keep", "followup",
              "upstream_body_len", "upstream_method", "upstream_path", "upstream_header",
              "upstream_has", "upstream_lacks", "response_header", "response_has",
              "response_lacks", "response_body", "echo_paths", "head_at", "why"}


def load_case(path):
    """Parse a .case file: 'key: value' lines ('#' comments), a blank line, then the request with
    escapes; real line breaks in the request part are ignored."""
    with open(path, "rb") as f:
        text = f.read()
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        raise ValueError(f"{path}: no blank line between the keys and the request")
    meta = []
    for n, line in enumerate(head.decode("utf-8").split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        k, sep, v = line.partition(":")
        k = k.strip()
        if not sep or k not in KNOWN_KEYS:
            raise ValueError(f"{path}:{n}: unknown or malformed key line {line!r}")
        meta.append((k, v.strip()))
    if not any(k == "expect" for k, _ in meta):
        raise ValueError(f"{path}: no 'expect:' key")
    raw = unescape(body.replace(b"\r", b"").replace(b"\n", b""))
    if not raw:
        raise ValueError(f"{path}: empty request")
    return Case(path, meta, raw)


def case_files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".case"))


def wait_for(pred, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def tcp_queued(port_a, port_b):
    """Bytes queued in the kernel on the loopback TCP connection between two ports: the send
    queue of one end plus the receive queue of the other (from /proc/net/tcp); None when the
    connection is not found."""
    total = None
    try:
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local = int(fields[1].split(":")[1], 16)
        remote = int(fields[2].split(":")[1], 16)
        if {local, remote} == {port_a, port_b}:
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            total = (total or 0) + tx + rx
    return total
