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
import hashlib
import os
import random
import socket
import socketserver
import struct
import sys


def stream(seed, n, chunk=65536):
    """Deterministic bytes: the same for a seed on every machine and Python."""
    r = random.Random(seed)
    while n > 0:
        k = min(chunk, n)
        yield r.randbytes(k)
        n -= k


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(256).split()
        if not line:
            return
        cmd, args = line[0], line[1:]
        if cmd == b"ECHO":
            # Through rfile, not the socket: the request line's readline may have
            # buffered the first client bytes already (when they arrive together).
            while True:
                b = self.rfile.read1(65536)
                if not b:
                    return
                self.request.sendall(b)
        elif cmd == b"CHAT":
            h = hashlib.sha256()
            for l in self.rfile:
                h.update(l)
                self.wfile.write(h.hexdigest().encode() + b"\n")
                self.wfile.flush()
        elif cmd == b"GET" and len(args) == 2:
            for b in stream(int(args[1]), int(args[0])):
                self.wfile.write(b)
        elif cmd == b"PUT" and len(args) == 1:
            n, h = int(args[0]), hashlib.sha256()
            while n > 0:
                b = self.rfile.read1(min(n, 65536))
                if not b:
                    return
                h.update(b)
                n -= len(b)
            self.wfile.write(h.hexdigest().encode() + b"\n")
        elif cmd == b"BYE":
            self.wfile.write(b"bye\n")
            if os.path.exists("/tmp/lzserver-linger"):
                while self.rfile.read1(65536):
                    pass
        elif cmd == b"ABORT":
            self.wfile.write(b"abort\n")
            self.wfile.flush()
            if os.path.exists("/tmp/lzserver-linger"):
                while self.rfile.read1(65536):
                    pass
            else:
                # Closing with a zero linger time resets the connection. Closed here,
                # files first (they hold the descriptor open), so that socketserver's
                # own shutdown afterwards cannot send a FIN before the reset.
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.wfile.close()
                self.request.close()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
