"""origin_proc.py: a harness Origin in a process of its own, so that tests can kill it with
SIGKILL like a crashed service. Prints "ready <port>" when listening. SIGUSR1 switches it to
"never" (accepts and never answers: a hung service); SIGUSR2 back to echo.

  /usr/bin/python3 origin_proc.py --name v1 [--port P] [--mode fixed --status 503]
"""

import argparse
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Origin  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="origin")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="echo")
    ap.add_argument("--status", type=int, default=200)
    a = ap.parse_args()
    o = Origin(a.name, port=a.port or None)
    if a.mode == "fixed":
        o.set("fixed", status=a.status, body="fixed")
    elif a.mode != "echo":
        o.set(a.mode)
    signal.signal(signal.SIGUSR1, lambda *_: o.set("never"))
    signal.signal(signal.SIGUSR2, lambda *_: o.set("echo"))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"ready {o.port}", flush=True)
    done.wait()
    o.close()


if __name__ == "__main__":
    main()
