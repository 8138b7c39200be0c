"""collector.py: a small OTLP/HTTP JSON trace collector for tests (Python standard library only).

It listens on 127.0.0.1 (port 0: the kernel picks one), accepts `POST /v1/traces` with
`Content-Type: application/json` (OTLP 1.x JSON encoding), stores every span flattened, and
answers `200 {}` over HTTP/1.1 keep-alive connections. A switch makes it answer 503 or stall
(accept the request and never answer until switched back or closed).

Usage:

    from collector import Collector

    with Collector() as c:
        env["OTLP_ENDPOINT"] = c.endpoint          # "http://127.0.0.1:<port>/v1/traces"
        ... run the program under test ...
        spans = c.wait_for_spans(1000, timeout=10)  # raises TimeoutError when fewer arrive
        root = [s for s in spans if s["parent_span_id"] is None][0]
        assert root["attributes"]["http.response.status_code"] == 200

    c.set_mode("503")    # answer 503 Service Unavailable (spans are not stored)
    c.set_mode("stall")  # read the request head, then never answer (until "ok" or close())
    c.set_mode("ok")     # back to normal

Each stored span is a dict:
    trace_id, span_id           lowercase hex as received
    parent_span_id              hex, or None when absent or empty (a root)
    name, kind                  kind as the integer received (1 internal, 2 server, 3 client)
    start_time_unix_nano, end_time_unix_nano   the raw JSON values (strings in OTLP JSON)
    start_ns, end_ns            the same as ints
    attributes                  {key: value}: stringValue -> str, intValue -> int,
                                boolValue -> bool, doubleValue -> float
    raw_attributes              the attribute list exactly as received
    status                      the status code (int, 0 when absent); status_message
    service_name                the resource attribute service.name (None when absent)
    scope                       the instrumentation scope name

Also: `requests` (one dict per POST: path, content_type, spans, answered), `errors` (bodies that
were not OTLP JSON, with the reason), `connections` (TCP connections accepted), `clear()`.

Run as a program (`python3 collector.py [port]`) it prints each span as a JSON line.
"""

import http.server
import json
import sys
import threading
import time


def _attr_value(v):
    if not isinstance(v, dict):
        return v
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_attr_value(x) for x in v["arrayValue"].get("values", [])]
    return v


def _attrs(lst):
    return {a["key"]: _attr_value(a.get("value")) for a in lst or []}


def flatten(body):
    """The spans of one OTLP JSON request body as flat dicts (raises on a malformed body)."""
    out = []
    for rs in body["resourceSpans"]:
        res_attrs = _attrs(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans", []):
            scope = ss.get("scope", {}).get("name")
            for s in ss.get("spans", []):
                parent = s.get("parentSpanId") or None
                status = s.get("status") or {}
                out.append(
                    {
                        "trace_id": s["traceId"],
                        "span_id": s["spanId"],
                        "parent_span_id": parent,
                        "name": s["name"],
                        "kind": s.get("kind", 0),
                        "start_time_unix_nano": s.get("startTimeUnixNano"),
                        "end_time_unix_nano": s.get("endTimeUnixNano"),
                        "start_ns": int(s.get("startTimeUnixNano", 0)),
                        "end_ns": int(s.get("endTimeUnixNano", 0)),
                        "attributes": _attrs(s.get("attributes")),
                        "raw_attributes": s.get("attributes", []),
                        "status": status.get("code", 0),
                        "status_message": status.get("message"),
                        "service_name": res_attrs.get("service.name"),
                        "scope": scope,
                    }
                )
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        with self.server.collector._cond:
            self.server.collector.connections += 1

    def log_message(self, fmt, *args):  # quiet
        pass

    def _answer(self, code, body=b"{}"):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        c = self.server.collector
        mode = c.mode
        if mode == "stall":
            # Hold the request unanswered (body unread) until switched back or closed.
            while c.mode == "stall" and not c._closing.is_set():
                c._mode_changed.wait(0.05)
            if c._closing.is_set():
                self.close_connection = True
                return
            mode = c.mode
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        req = {"path": self.path, "content_type": ctype, "spans": 0, "answered": None}
        if self.path != "/v1/traces":
            req["answered"] = 404
        elif ctype.split(";")[0].strip().lower() != "application/json":
            req["answered"] = 415
        elif mode == "503":
            req["answered"] = 503
        else:
            try:
                spans = flatten(json.loads(data))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                with c._cond:
                    c.errors.append({"reason": repr(e), "body": data[:2000]})
                req["answered"] = 400
            else:
                req["spans"] = len(spans)
                req["answered"] = 200
                with c._cond:
                    c.spans.extend(spans)
                    c._cond.notify_all()
        with c._cond:
            c.requests.append(req)
        self._answer(req["answered"])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() must not wait for kept-alive client connections


class Collector:
    """A threaded OTLP/HTTP JSON collector on 127.0.0.1; see the module docstring."""

    def __init__(self, port=0):
        self.spans = []
        self.requests = []
        self.errors = []
        self.connections = 0
        self.mode = "ok"
        self._cond = threading.Condition()
        self._mode_changed = threading.Event()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.collector = self
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set_mode(self, mode):
        """"ok", "503" or "stall"."""
        assert mode in ("ok", "503", "stall"), mode
        self.mode = mode
        self._mode_changed.set()
        self._mode_changed.clear()

    def wait_for_spans(self, n, timeout=10.0):
        """Wait until at least n spans were stored; returns a copy of all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.spans) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.spans)} spans of {n} within {timeout}s")
                self._cond.wait(left)
            return list(self.spans)

    def clear(self):
        with self._cond:
            self.spans.clear()
            self.requests.clear()
            self.errors.clear()

    def close(self):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    c = Collector(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"listening on {c.endpoint}", file=sys.stderr, flush=True)
    seen = 0
    try:
        while True:
            spans = c.wait_for_spans(seen + 1, timeout=3600)
            for s in spans[seen:]:
                print(json.dumps(s, default=str), flush=True)
            seen = len(spans)
    except KeyboardInterrupt:
        c.close()
