#!/usr/bin/env python3
"""Many concurrent echo connections from the host's own TCP stack. Opens N
connections to lzserver's ECHO mode (about 100 a second, so neither server's listen
queue overflows), then for R rounds sends each connection a seeded chunk and reads its echo
back, comparing every byte. Prints one JSON line (with each round's duration and
wall-clock start, so that a test can tell which rounds followed an event).

    manyclient.py HOST PORT CONNS ROUNDS [--interval S] [--ready FILE]

With --ready, FILE is created once every connection is open (tests wait for it
before they kill the primary).
"""
import argparse
import json
import random
import socket
import sys
import time


def chunk(conn, rnd):
    r = random.Random(conn * 100_003 + rnd)
    return r.randbytes(r.randrange(1, 300))


def read_exactly(s, n):
    buf = b""
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            break
        buf += b
    return buf


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("conns", type=int)
    p.add_argument("rounds", type=int)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--ready")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a read may wait before its connection counts as hung")
    a = p.parse_args()
    socks = []
    for i in range(a.conns):
        s = socket.create_connection((a.host, a.port), timeout=a.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"ECHO\n")
        socks.append(s)
        # Paced so that neither server's accept queue overflows: a SYN the backup's
        # TCP drops is a connection it can never shadow.
        if i % 10 == 9:
            time.sleep(0.1)
    if a.ready:
        open(a.ready, "w").close()
    # A connection the server resets is counted and dropped from later rounds; any
    # wrong byte or a silent hang (timeout) is a failure.
    bad, slowest, echoed, reset, hung, took, began = 0, 0.0, 0, set(), {}, [], []
    for rnd in range(a.rounds):
        start = time.monotonic()
        began.append(round(time.time(), 3))
        for i, s in enumerate(socks):
            if i not in reset and i not in hung:
                try:
                    s.sendall(chunk(i, rnd))
                except ConnectionResetError:
                    reset.add(i)
        for i, s in enumerate(socks):
            if i in reset or i in hung:
                continue
            want = chunk(i, rnd)
            try:
                got = read_exactly(s, len(want))
            except ConnectionResetError:
                reset.add(i)
                continue
            except socket.timeout:
                # Recorded with its port so that the test can look the connection up
                # on the servers; the other connections go on.
                hung[i] = {"conn": i, "local_port": s.getsockname()[1], "round": rnd,
                           "at": round(time.time(), 3), "want": len(want)}
                print(json.dumps({"hung": hung[i]}), file=sys.stderr, flush=True)
                continue
            if got != want:
                bad += 1
            echoed += len(got)
        took.append(round(time.monotonic() - start, 2))
        slowest = max(slowest, took[-1])
        time.sleep(a.interval)
    for s in socks:
        s.close()
    print(json.dumps({"conns": a.conns, "rounds": a.rounds, "bad": bad, "reset": len(reset), "hung": list(hung.values()),
                      "echoed_bytes": echoed,
                      "slowest_round_s": round(slowest, 3), "round_s": took, "round_began": began}))


if __name__ == "__main__":
    main()
