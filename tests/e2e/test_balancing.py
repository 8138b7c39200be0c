"""Load balancing through the real gateway: weighted shares, consistent hashing on a header, a
cookie and the client address, and least-request steering away from a slow instance."""
import collections
import threading
import time

import requests

from harness import base_config


def cluster_config(origins, **cluster):
    def make(port, admin_port):
        cfg = base_config(port, admin_port, workers=1)
        c = {"name": "app", "instances": origins, "timeout": "5s"}
        c.update(cluster)
        cfg["clusters"] = [c]
        cfg["routes"] = [{"match": {"prefix": "/"}, "cluster": "app"}]
        return cfg

    return make


def served_by(g, n, path="/w", headers=None, cookies=None):
    seen = collections.Counter()
    with requests.Session() as s:
        for i in range(n):
            r = s.get(g.url(f"{path}{i}"), headers=headers, cookies=cookies, timeout=5)
            assert r.status_code == 200
            seen[r.json()["origin"]] += 1
    return seen


def test_weighted_shares_are_exact_per_cycle(gateways, make_origin):
    a, b, c = make_origin("a"), make_origin("b"), make_origin("c")
    instances = [{"address": a.addr, "weight": 5}, {"address": b.addr, "weight": 1},
                 {"address": c.addr, "weight": 1}]
    g = gateways.start(config=cluster_config(instances, balance="weighted"))
    seen = served_by(g, 70)  # ten whole cycles of 5 + 1 + 1 on one worker
    assert seen == {"a": 50, "b": 10, "c": 10}


def test_hash_on_header_is_sticky_and_spreads(gateways, make_origin):
    origins = [make_origin(n) for n in ("a", "b", "c")]
    g = gateways.start(config=cluster_config([o.addr for o in origins], balance="hash",
                                             hash_on="header:X-User"))
    owner = {}
    for user in range(60):
        got = served_by(g, 3, headers={"X-User": f"user-{user}"})
        assert len(got) == 1, got  # every request of a user lands on one instance
        owner[user] = next(iter(got))
    assert set(owner.values()) == {"a", "b", "c"}  # and users are spread over all of them


def test_hash_on_cookie(gateways, make_origin):
    origins = [make_origin(n) for n in ("a", "b")]
    g = gateways.start(config=cluster_config([o.addr for o in origins], balance="hash",
                                             hash_on="cookie:session"))
    owners = set()
    for sid in range(30):
        got = served_by(g, 3, cookies={"session": f"s{sid}", "other": "x"})
        assert len(got) == 1, got
        owners |= set(got)
    assert owners == {"a", "b"}


def test_hash_on_client_ip_is_sticky(gateways, make_origin):
    origins = [make_origin(n) for n in ("a", "b", "c")]
    g = gateways.start(config=cluster_config([o.addr for o in origins], balance="hash",
                                             hash_on="client_ip"))
    assert len(served_by(g, 12)) == 1  # one client address: one instance


def test_least_request_avoids_the_busy_instance(gateways, make_origin):
    slow, fast = make_origin("slow"), make_origin("fast")
    slow.set("slow", delay="4")  # every request to this instance takes 4 s
    g = gateways.start(config=cluster_config([slow.addr, fast.addr], balance="least_request"))
    # Long requests until one sits on the slow instance (those sent to the fast one end at once;
    # ties between two idle instances go either way).
    holds = []
    for _ in range(40):
        t = threading.Thread(target=requests.get, args=(g.url("/hold"),), kwargs={"timeout": 10})
        t.start()
        holds.append(t)
        if slow.wait_requests(1, timeout=0.2):
            break
    assert slow.snapshot(), "no long request reached the slow instance"
    # With two choices among two instances, each request goes to the one with fewer requests
    # in flight: the fast one, while the slow one holds its long requests.
    t0 = time.monotonic()
    seen = served_by(g, 20, path="/quick")
    elapsed = time.monotonic() - t0
    for t in holds:
        t.join()
    # (Were the long requests over before the short ones, ties could go either way.)
    assert elapsed < 3.5, f"short requests took {elapsed:.1f}s: the premise did not hold"
    assert seen == {"fast": 20}
