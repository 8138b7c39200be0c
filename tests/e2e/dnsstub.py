#!/usr/bin/python3
"""dnsstub.py: a stub DNS server for end-to-end tests of the DNS discovery source.

    /usr/bin/python3 tests/e2e/dnsstub.py --port P --zone FILE [--address 127.0.0.1] [--log FILE]

Answers UDP and TCP queries on --address:--port (--port 0: an ephemeral port, printed as
"port N" before "ready") from FILE, a JSON object re-read on every query, so a test changes the
answers by rewriting it (write a temporary file and rename it over FILE):

    {
      "web.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"], "ttl": 1},
      "_http._tcp.api.test.": {"SRV": [[10, 5, 9001, "a.node.test."]], "ttl": 1},
      "a.node.test.": {"A": ["127.0.0.1"]},
      "down.test.": {"rcode": "SERVFAIL"},
      "slow.test.": {"drop": true}
    }

- Names are case-insensitive; the trailing dot is optional. A name not in the file: NXDOMAIN.
  A name in it without records of the type asked: NOERROR with no answer (NODATA).
- "ttl": the TTL of the name's records, in seconds (default 60).
- "SRV": [priority, weight, port, target] records. The A and AAAA records of targets that are in
  the file go in the additional section (as Consul sends them) unless the SRV name has
  "additional": false, which makes the client resolve the targets itself.
- "rcode": "SERVFAIL", "REFUSED", "NXDOMAIN", ... answers every query for the name with it;
  "drop": true answers nothing (the client times out).
- A file that cannot be read or parsed: SERVFAIL.
- UDP answers larger than 512 bytes (or the client's EDNS size) are sent truncated, so the client
  asks again over TCP.

Prints "ready" on stdout once listening. --log FILE appends one line per query: "NAME TYPE RCODE"
(RCODE "DROP" for a dropped query). Stops on SIGTERM or SIGINT.
"""

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord


def norm(name):
    """A name as a lower-case absolute name: "Web.Test" -> "web.test."."""
    name = str(name).lower()
    return name if name.endswith(".") else name + "."


class Stub:
    def __init__(self, zone_path, log_path):
        self.zone_path = zone_path
        self.log_path = log_path
        self.log_lock = threading.Lock()

    def load(self):
        with open(self.zone_path, encoding="utf-8") as f:
            zone = json.load(f)
        if not isinstance(zone, dict):
            raise ValueError("the zone must be a JSON object")
        return {norm(k): v for k, v in zone.items()}

    def log(self, name, qtype, rcode):
        if self.log_path is None:
            return
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{name} {qtype} {rcode}\n")

    @staticmethod
    def add_addrs(add, qname, entry, qtype):
        ttl = int(entry.get("ttl", 60))
        if qtype in ("A", "ANY"):
            for ip in entry.get("A", []):
                add(RR(qname, QTYPE.A, ttl=ttl, rdata=A(ip)))
        if qtype in ("AAAA", "ANY"):
            for ip in entry.get("AAAA", []):
                add(RR(qname, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)))

    def answer(self, data, udp):
        """The reply to one query as bytes, or None to send nothing."""
        try:
            req = DNSRecord.parse(data)
        except Exception:  # not a DNS message: ignore it
            return None
        reply = req.reply()
        if not req.questions:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        q = req.q
        name = norm(q.qname)
        qtype = QTYPE.get(q.qtype, str(q.qtype))
        try:
            zone = self.load()
            entry = zone.get(name)
            if entry is None:
                reply.header.rcode = RCODE.NXDOMAIN
            elif entry.get("drop"):
                self.log(name, qtype, "DROP")
                return None
            elif entry.get("rcode"):
                reply.header.rcode = getattr(RCODE, str(entry["rcode"]).upper())
            elif qtype in ("A", "AAAA"):
                self.add_addrs(reply.add_answer, q.qname, entry, qtype)
            elif qtype == "SRV":
                ttl = int(entry.get("ttl", 60))
                targets = []
                for prio, weight, port, target in entry.get("SRV", []):
                    reply.add_answer(
                        RR(
                            q.qname,
                            QTYPE.SRV,
                            ttl=ttl,
                            rdata=SRV(priority=prio, weight=weight, port=port, target=target),
                        )
                    )
                    if norm(target) not in targets:
                        targets.append(norm(target))
                if entry.get("additional", True):
                    for t in targets:
                        if t in zone and not zone[t].get("rcode") and not zone[t].get("drop"):
                            self.add_addrs(reply.add_ar, t, zone[t], "ANY")
        except (OSError, ValueError, TypeError, AttributeError) as e:
            print(f"dnsstub: {self.zone_path}: {e}", file=sys.stderr, flush=True)
            reply = req.reply()
            reply.header.rcode = RCODE.SERVFAIL
        self.log(name, qtype, RCODE.get(reply.header.rcode, str(reply.header.rcode)))
        out = reply.pack()
        if udp:
            limit = 512
            for rr in req.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, rr.rclass)
            if len(out) > limit:  # the question, no records, TC set (dnslib's truncate() drops
                short = req.reply()  # the question, and resolvers then ignore the answer)
                short.header.tc = 1
                short.header.rcode = reply.header.rcode
                out = short.pack()
        return out


class UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        out = self.server.stub.answer(data, udp=True)
        if out is not None:
            sock.sendto(out, self.client_address)


class TCPHandler(socketserver.BaseRequestHandler):
    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def handle(self):
        self.request.settimeout(10)
        try:
            while True:  # several queries may share a connection
                head = self.recv_exact(2)
                if head is None:
                    return
                data = self.recv_exact(int.from_bytes(head, "big"))
                if data is None:
                    return
                out = self.server.stub.answer(data, udp=False)
                if out is not None:
                    self.request.sendall(len(out).to_bytes(2, "big") + out)
        except OSError:
            return


class UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True


class TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description="stub DNS server for end-to-end tests")
    ap.add_argument("--port", type=int, required=True, help="port (0: an ephemeral one)")
    ap.add_argument("--zone", required=True, help="JSON zone file, re-read on every query")
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--log", default=None, help="append one line per query to this file")
    args = ap.parse_args()

    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    UDPServer.address_family = family
    TCPServer.address_family = family
    stub = Stub(args.zone, args.log)
    udp = UDPServer((args.address, args.port), UDPHandler)
    port = udp.server_address[1]
    tcp = TCPServer((args.address, port), TCPHandler)
    servers = [udp, tcp]
    for s in servers:
        s.stub = stub
        threading.Thread(target=s.serve_forever, args=(0.1,), daemon=True).start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.port == 0:
        print(f"port {port}")
    print("ready", flush=True)
    while not done.wait(0.2):
        pass
    for s in servers:
        s.shutdown()
        s.server_close()


if __name__ == "__main__":
    main()
