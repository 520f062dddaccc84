#!/usr/bin/env python3
"""The deterministic test server: every byte it sends depends only on what the
client sent, so a primary and a backup that receive the same bytes answer alike.

One request line per connection picks the mode:

    ECHO\\n              echo every byte back until the client closes
    CHAT\\n              per line received, reply with the running SHA-256 (hex) of
                        everything received so far, then a newline
    GET <n> <seed>\\n    send n bytes of a seeded pseudo-random stream, then close
    PUT <n>\\n           read n bytes, reply with their SHA-256 (hex) and a newline
    BYE\\n               reply "bye" and close; a server on a machine where the file
                        /tmp/lzserver-linger exists replies but keeps the connection
                        open until the client closes (a twin that deliberately
                        disagrees, for one-sided FIN tests)
    ABORT\\n             reply "abort" and reset the connection (SO_LINGER 0); with
                        /tmp/lzserver-linger, reply and keep it open as for BYE

    lzserver.py PORT
"""
import asyncio
import hashlib
import os
import random
import socket
import struct
import sys

# One thread and an event loop rather than a thread per connection: with a thousand
# connections, a thread each spends the emulated CPU contending for Python's global
# lock (futex wake-ups), and echoes then take minutes.
CHUNK = 65536


def stream(seed, n, chunk=CHUNK):
    """Deterministic bytes: the same for a seed on every machine and Python."""
    r = random.Random(seed)
    while n > 0:
        k = min(chunk, n)
        yield r.randbytes(k)
        n -= k


def lingering():
    return os.path.exists("/tmp/lzserver-linger")


async def drain_until_eof(reader):
    while await reader.read(CHUNK):
        pass


async def serve(reader, writer, line):
    cmd, args = line[0], line[1:]
    if cmd == b"ECHO":
        while b := await reader.read(CHUNK):
            writer.write(b)
            await writer.drain()
    elif cmd == b"CHAT":
        h = hashlib.sha256()
        while l := await reader.readline():
            h.update(l)
            writer.write(h.hexdigest().encode() + b"\n")
            await writer.drain()
    elif cmd == b"GET" and len(args) == 2:
        for b in stream(int(args[1]), int(args[0])):
            writer.write(b)
            await writer.drain()
    elif cmd == b"PUT" and len(args) == 1:
        n, h = int(args[0]), hashlib.sha256()
        while n > 0:
            b = await reader.read(min(n, CHUNK))
            if not b:
                return
            h.update(b)
            n -= len(b)
        writer.write(h.hexdigest().encode() + b"\n")
    elif cmd == b"BYE":
        writer.write(b"bye\n")
        if lingering():
            await drain_until_eof(reader)
    elif cmd == b"ABORT":
        writer.write(b"abort\n")
        await writer.drain()
        if lingering():
            await drain_until_eof(reader)
        else:
            # Closing with a zero linger time resets the connection; the reply is
            # already in the kernel's send queue.
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


async def handle(reader, writer):
    try:
        try:
            line = (await reader.readuntil(b"\n"))[:256].split()
        except asyncio.IncompleteReadError:
            return
        if line:
            await serve(reader, writer, line)
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
