#!/usr/bin/env python3
"""A deterministic HTTP/1.1 test backend (keep-alive, one event loop).

    GET  /.../bytes/<n>?seed=<s>[&rate=<r>]
                                   n bytes of the seeded stream of lzserver.stream,
                                   at about r bytes/s when given
    PUT or POST /...               reads Content-Length bytes, replies with their
                                   SHA-256 (hex) and a newline

Every response names the backend in an X-Backend header, so a client can tell where
its request went.

    httpd.py PORT NAME
"""
import asyncio
import hashlib
import re
import sys

from lzserver import CHUNK, stream

BYTES = re.compile(rb"/bytes/(\d+)(?:\?seed=(\d+)(?:&rate=(\d+))?)?$")
PACED_CHUNK = 16384


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, target.encode(), headers


def head_bytes(status, name, length, close):
    conn = "close" if close else "keep-alive"
    return (f"HTTP/1.1 {status}\r\nX-Backend: {name}\r\nContent-Length: {length}\r\n"
            f"Connection: {conn}\r\n\r\n").encode()


async def handle(reader, writer, name):
    try:
        while True:
            try:
                method, target, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ValueError):
                return
            close = headers.get("connection", "").lower() == "close"
            m = BYTES.search(target)
            if method in ("GET", "HEAD") and m:
                n, seed, rate = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
                writer.write(head_bytes("200 OK", name, n, close))
                if method == "GET":
                    loop = asyncio.get_running_loop()
                    start, sent = loop.time(), 0
                    for b in stream(seed, n, PACED_CHUNK if rate else CHUNK):
                        writer.write(b)
                        await writer.drain()
                        sent += len(b)
                        if rate:
                            # Pace the sender itself: a client that reads slowly only
                            # fills its socket buffer.
                            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
            elif method in ("PUT", "POST"):
                n, h = int(headers.get("content-length", "0")), hashlib.sha256()
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                while n > 0:
                    b = await reader.read(min(n, CHUNK))
                    if not b:
                        return
                    h.update(b)
                    n -= len(b)
                body = h.hexdigest().encode() + b"\n"
                writer.write(head_bytes("200 OK", name, len(body), close) + body)
            else:
                body = b"not found\n"
                writer.write(head_bytes("404 Not Found", name, len(body), close) + body)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port, name):
    server = await asyncio.start_server(lambda r, w: handle(r, w, name), "0.0.0.0", port, backlog=1024, limit=65536)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
