"""test_cases.py: the data-driven adversarial HTTP tests: one generic test run over every
tests/e2e/cases/*.case file (adding a regression case is adding a file). See cases/README."""

import os

import pytest

from harness import (Closed, Gateway, GatewayError, Origin, RawClient, Timeout, base_config,
                     case_files, free_port, load_case, simple_get, to_yaml, unescape)

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = case_files(os.path.join(HERE, "cases"))

# Statuses the gateway generates itself, with a JSON error body.
GATEWAY_ERRORS = {400, 404, 413, 414, 431, 501, 502, 503, 504, 505}
ERROR_CODES = {400: "bad_request", 404: "no_route", 413: "payload_too_large",
               414: "uri_too_long", 431: "headers_too_large", 502: "bad_gateway",
               504: "gateway_timeout"}


@pytest.fixture(scope="module")
def case_env(tmp_path_factory, polis_bin):
    """One gateway with small limits in front of one origin, shared by all cases."""
    tmp = tmp_path_factory.mktemp("cases")
    origin = Origin("case-origin")
    port, admin = free_port(), free_port()
    cfg = base_config(port, admin, workers=2)
    cfg["limits"] = {"max_request_line": 1024, "max_header_bytes": 4096, "max_headers": 20,
                     "max_body": 65536}
    cfg["clusters"] = [{"name": "app", "instances": [origin.addr], "timeout": "2s",
                        "connect_timeout": "1s"}]
    cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
    path = tmp / "cases.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    g = Gateway(["gateway", "-c", str(path)], tmp, binary=polis_bin, listen_port=port,
                admin_port=admin)
    try:
        g.start()
    except GatewayError:
        origin.close()
        g.stop(check=False)
        raise
    yield g, origin
    origin.close()
    g.stop(timeout=15)


def _alts(spec):
    return [a.strip() for a in spec.split("|")]


def check_error_body(r):
    assert (r.header("Content-Type") or "").startswith("application/json"), r
    j = r.json()
    assert j.get("status") == r.status, j
    assert isinstance(j.get("error"), str) and j["error"], j
    if r.status in ERROR_CODES:
        assert j["error"] == ERROR_CODES[r.status], j
    assert "request_id" in j and "message" in j, j


def _upstream_header(rec, spec):
    name, _, value = spec.partition(":")
    want = unescape(value.strip()).decode("latin-1")
    got = rec.header_all(name.strip())
    assert got == [want], f"upstream header {name.strip()}: got {got!r}, want [{want!r}]"


def _response_header(r, spec):
    name, _, value = spec.partition(":")
    want = unescape(value.strip()).decode("latin-1")
    assert r.header_all(name.strip()) == [want], (
        f"response header {name.strip()}: got {r.header_all(name.strip())!r}, want {want!r}")


@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p)[:-5] for p in CASES])
def test_case(case_env, path):
    g, origin = case_env
    case = load_case(path)
    origin.reset()
    if case.get("origin"):
        params = {}
        if case.get("origin_data") is not None:
            params["data"] = unescape(case.get("origin_data"))
        if case.get("origin_keep"):
            params["keep"] = case.get("origin_keep")
        origin.set(case.get("origin"), **params)
    expected = [_alts(e) for e in case.get("expect").split(",")]
    if not g.alive():
        pytest.fail("the gateway is not running (it died in an earlier case)")

    c = RawClient(g.port, timeout=5)
    try:
        try:
            c.send(case.raw)
        except OSError:
            pass  # the gateway may refuse and close before reading everything
        responses = []
        closed = False
        for i, alts in enumerate(expected):
            head_req = str(i + 1) in (case.get("head_at") or "").split(",")
            try:
                r = c.read_response(timeout=5, head_request=head_req)
            except Closed as e:
                assert "close" in alts, (
                    f"response {i + 1}: connection closed (reset={e.reset}, partial "
                    f"{e.partial[:200]!r}), expected {alts}")
                assert not e.partial, f"closed after a partial response {e.partial[:200]!r}"
                closed = True
                break
            except Timeout:
                pytest.fail(f"response {i + 1}: no response within 5 s (expected {alts}): "
                            "the gateway hangs")
            assert str(r.status) in alts, f"response {i + 1}: got {r.status}, expected {alts}: {r}"
            if r.status in GATEWAY_ERRORS:
                check_error_body(r)
            responses.append(r)

        last = responses[-1] if responses else None
        if last is not None and last.status == 400:
            assert c.wait_closed(3), "the connection stayed open after a 400 response"
            closed = True

        # what the upstream received
        recs = origin.snapshot()
        up = case.get("upstream")
        if up is not None:
            want = {"none": 0, "one": 1}.get(up)
            want = int(up) if want is None else want
            assert len(recs) == want, (f"upstream received {len(recs)} requests, expected "
                                       f"{want}: {recs} partial={origin.partial}")
        ok = [r for r in responses if 200 <= r.status < 300]
        if ok and recs:
            rec = recs[0]
            if case.get("upstream_body_len") is not None:
                assert rec.body_len == int(case.get("upstream_body_len")), rec
            if case.get("upstream_method") is not None:
                assert rec.method == case.get("upstream_method"), rec
            if case.get("upstream_path") is not None:
                assert rec.target == case.get("upstream_path"), rec
            for spec in case.all("upstream_header"):
                _upstream_header(rec, spec)
            for n in case.all("upstream_has"):
                assert rec.header(n) is not None, f"upstream did not receive {n}: {rec.headers}"
            for n in case.all("upstream_lacks"):
                assert rec.header(n) is None, f"upstream received {n}: {rec.headers}"
        for r in ok:
            for spec in case.all("response_header"):
                _response_header(r, spec)
            for n in case.all("response_has"):
                assert r.has(n), f"response lacks {n}: {r}"
            for n in case.all("response_lacks"):
                assert not r.has(n), f"response has {n}: {r}"
            if case.get("response_body") is not None:
                assert r.body == unescape(case.get("response_body")), r
        if case.get("echo_paths"):
            want = case.get("echo_paths").split(",")
            for r, p in zip(responses, want):
                if p:
                    assert r.json()["path"] == p, f"responses out of order: {responses}"
        assert not origin.errors, f"the upstream saw malformed input: {origin.errors}"

        # no desync on the same connection
        origin.set("echo")
        said_close = last is not None and (
            "close" in (last.header("Connection") or "").lower()
            or (last.header("Content-Length") is None and last.header("Transfer-Encoding") is None
                and last.status not in (204, 304)))
        if not closed and not said_close and case.get("followup") != "new":
            gone = c.wait_closed(0.3)
            if c.buf:
                pytest.fail(f"unexpected extra bytes after the expected responses: {c.buf[:300]!r}")
            if not gone:
                try:
                    c.send(b"GET /__followup HTTP/1.1\r\nHost: h\r\n\r\n")
                    r = c.read_response(timeout=5)
                    assert r.status == 200 and r.json()["path"] == "/__followup", (
                        f"the follow-up on the same connection got {r}")
                except (Closed, OSError):
                    assert last is None or last.status >= 400, (
                        "the gateway closed a keep-alive connection after a "
                        f"{last.status} without Connection: close")
            else:
                assert last is None or last.status >= 400, (
                    f"the gateway closed the connection after {last.status} without "
                    "Connection: close")
    finally:
        c.close()

    # the gateway still serves a normal request on a new connection
    origin.set("echo")
    r = simple_get(g.port, "/__followup")
    assert r.status == 200 and r.json()["path"] == "/__followup", r
    rep = g.sanitizer_report()
    assert rep is None, rep
    assert g.alive(), "the gateway died"
