#!/usr/bin/env python3
"""Paced clients for failover tests, on the host's own TCP stack. Each prints one
JSON line: what was sent and received (with SHA-256), and the longest gap between
two pieces of progress (the stall a failover caused).

    stclient.py get HOST PORT NBYTES SEED [--rate BYTES_PER_S]
    stclient.py chat HOST PORT LINES [--interval S]
    stclient.py put HOST PORT NBYTES SEED [--rate BYTES_PER_S]
    stclient.py bye HOST PORT 0
    stclient.py abort HOST PORT 0
"""
import argparse
import hashlib
import json
import random
import socket
import time

import lzserver


class Gaps:
    def __init__(self):
        self.last = time.monotonic()
        self.worst = 0.0

    def tick(self):
        now = time.monotonic()
        self.worst = max(self.worst, now - self.last)
        self.last = now


def pace(start, done, rate):
    if rate:
        ahead = done / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def get(a):
    s = socket.create_connection((a.host, a.port), timeout=60)
    s.sendall(b"GET %d %d\n" % (a.nbytes, a.seed))
    want = hashlib.sha256()
    for b in lzserver.stream(a.seed, a.nbytes):
        want.update(b)
    h, n, gaps, start = hashlib.sha256(), 0, Gaps(), time.monotonic()
    while True:
        b = s.recv(min(65536, max(1024, a.rate // 20)) if a.rate else 65536)
        if not b:
            break
        gaps.tick()
        h.update(b)
        n += len(b)
        pace(start, n, a.rate)
    return {"received": n, "received_sha": h.hexdigest(), "expected_sha": want.hexdigest(),
            "max_gap_s": round(gaps.worst, 3), "seconds": round(time.monotonic() - start, 3)}


def chat(a):
    s = socket.create_connection((a.host, a.port), timeout=60)
    f = s.makefile("rwb")
    f.write(b"CHAT\n")
    h, gaps, bad, start = hashlib.sha256(), Gaps(), 0, time.monotonic()
    r = random.Random(a.lines)
    for i in range(a.lines):
        line = b"%d %s\n" % (i, r.randbytes(r.randrange(1, 200)).hex().encode())
        h.update(line)
        f.write(line)
        f.flush()
        reply = f.readline()
        gaps.tick()
        if reply != h.hexdigest().encode() + b"\n":
            bad += 1
        time.sleep(a.interval)
    return {"lines": a.lines, "bad_replies": bad, "max_gap_s": round(gaps.worst, 3),
            "seconds": round(time.monotonic() - start, 3)}


def put(a):
    s = socket.create_connection((a.host, a.port), timeout=60)
    s.sendall(b"PUT %d\n" % a.nbytes)
    h, sent, gaps, start = hashlib.sha256(), 0, Gaps(), time.monotonic()
    for b in lzserver.stream(a.seed, a.nbytes, chunk=16384):
        s.sendall(b)
        gaps.tick()
        h.update(b)
        sent += len(b)
        pace(start, sent, a.rate)
    reply = s.makefile("rb").readline().strip().decode()
    return {"sent": sent, "sent_sha": h.hexdigest(), "server_sha": reply,
            "max_gap_s": round(gaps.worst, 3), "seconds": round(time.monotonic() - start, 3)}


def ask_to_close(a, request):
    """Send `request` (BYE or ABORT), then time its reply line and the end of the
    connection: "eof" for a FIN, "reset" for an RST."""
    s = socket.create_connection((a.host, a.port), timeout=60)
    start = time.monotonic()
    s.sendall(request)
    f = s.makefile("rb")
    reply = f.readline()
    replied = time.monotonic()
    try:
        rest, how = f.read(), "eof"
    except ConnectionResetError:
        rest, how = b"", "reset"
    return {"reply": reply.decode(errors="replace"), "rest": len(rest), "end": how,
            "reply_after_s": round(replied - start, 3), "end_after_s": round(time.monotonic() - start, 3)}


def bye(a):
    """How long after asking the server to close its reply and its FIN arrive."""
    r = ask_to_close(a, b"BYE\n")
    r["eof_after_s"] = r["end_after_s"]
    return r


def abort(a):
    """How long after asking the server to reset the connection its reply and the
    reset arrive."""
    return ask_to_close(a, b"ABORT\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["get", "chat", "put", "bye", "abort"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("seed", type=int, nargs="?", default=1)
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.02)
    a = p.parse_args()
    a.nbytes = a.lines = a.n
    print(json.dumps({"get": get, "chat": chat, "put": put, "bye": bye, "abort": abort}[a.mode](a)))
