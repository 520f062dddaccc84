#!/usr/bin/env python3
"""A plain TCP client for the tests, run on the host's own stack in the bench's
network namespace. Prints one JSON line with what was sent and received.

    tcpclient.py echo HOST PORT NBYTES [--seed S]   send NBYTES, read them back
    tcpclient.py get HOST PORT                      read until the server closes
"""
import argparse
import hashlib
import json
import random
import socket
import threading


def echo(host, port, n, seed, chunk=16384):
    data = random.Random(seed).randbytes(n)
    s = socket.create_connection((host, port), timeout=60)
    got = bytearray()

    def send():
        for i in range(0, n, chunk):
            s.sendall(data[i:i + chunk])
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    t.join()
    s.close()
    return {"sent": n, "sent_sha": hashlib.sha256(data).hexdigest(),
            "received": len(got), "received_sha": hashlib.sha256(got).hexdigest()}


def get(host, port):
    s = socket.create_connection((host, port), timeout=60)
    h = hashlib.sha256()
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    s.close()
    return {"received": n, "received_sha": h.hexdigest()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "get"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("nbytes", type=int, nargs="?", default=0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    r = echo(a.host, a.port, a.nbytes, a.seed) if a.mode == "echo" else get(a.host, a.port)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
