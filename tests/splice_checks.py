#!/usr/bin/env python3
"""Run in a proxy VM with lazarus_splice loaded: send the module requests that no
well-behaved proxy sends, and report what it answered, as JSON on stdout.

    splice_checks.py '<json: {"cmd": {...}, "attr": {...}}>'

It makes two loopback connections of its own (each a pair of local sockets), so that
the requests name real connections of this host, and checks afterwards that both
still carry bytes.
"""
import json
import socket
import sys

import nlraw

spec = json.loads(sys.argv[1])
CMD, A = spec["cmd"], spec["attr"]


def pair():
    """A loopback connection: (listening side's accepted socket, connecting socket)."""
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(1)
    c = socket.create_connection(l.getsockname())
    s, _ = l.accept()
    l.close()
    return s, c


def tuple_attrs(prefix, local, remote):
    return [
        nlraw.addr(A[f"{prefix}-local-addr"], local[0]),
        nlraw.u16(A[f"{prefix}-local-port"], local[1]),
        nlraw.addr(A[f"{prefix}-remote-addr"], remote[0]),
        nlraw.u16(A[f"{prefix}-remote-port"], remote[1]),
    ]


def side_attrs(prefix, snd, rcv, wscale=7):
    return [
        nlraw.u32(A[f"{prefix}-snd-nxt"], snd),
        nlraw.u32(A[f"{prefix}-rcv-nxt"], rcv),
        nlraw.u8(A[f"{prefix}-peer-wscale"], wscale),
        nlraw.u8(A[f"{prefix}-own-wscale"], 7),
    ]


g = nlraw.Genl("lazarus_splice")
out = {}
# The "client" connection is the accepted side of one pair, the "backend" connection
# the connecting side of another, as in a proxy.
cs, cc = pair()
bs, bc = pair()
client = tuple_attrs("client", cs.getsockname(), cs.getpeername())
backend = tuple_attrs("backend", bc.getsockname(), bc.getpeername())

# Connections this host does not have.
ghost = tuple_attrs("client", ("127.0.0.1", 1), ("127.0.0.1", 2))
out["pre_splice_unknown"] = g.request(CMD["pre-splice"], *ghost, *backend)[:2]
# Missing attributes.
out["pre_splice_missing"] = g.request(CMD["pre-splice"], *client)[:2]
# The same connection twice.
same = tuple_attrs("backend", cs.getsockname(), cs.getpeername())
out["pre_splice_same"] = g.request(CMD["pre-splice"], *client, *same)[:2]

err, msg, reply = g.request(CMD["pre-splice"], *client, *backend)
out["pre_splice"] = [err, msg]
sid = int.from_bytes(reply.get(A["id"], b"\0\0\0\0")[:4], "little")
# Freezing it again is refused.
out["pre_splice_again"] = g.request(CMD["pre-splice"], *client, *backend)[:2]
# Wrong sequence numbers are refused: they are checked against the sockets.
out["splice_forged_numbers"] = g.request(CMD["splice"], nlraw.u32(A["id"], sid), *client, *backend,
                                         *side_attrs("client", 1, 2), *side_attrs("backend", 3, 4))[:2]
# A window scale above 14 is refused by the policy.
out["splice_bad_wscale"] = g.request(CMD["splice"], nlraw.u32(A["id"], sid), *client, *backend,
                                     *side_attrs("client", 1, 2, wscale=15), *side_attrs("backend", 3, 4))[:2]
# An id that names nothing.
out["abort_unknown"] = g.request(CMD["abort"], nlraw.u32(A["id"], sid ^ 0x10000))[:2]
# Taking apart a pair that is frozen, not spliced; or nothing at all.
out["unsplice_frozen"] = g.request(CMD["unsplice"], nlraw.u32(A["id"], sid))[:2]
out["unsplice_unknown"] = g.request(CMD["unsplice"], nlraw.u32(A["id"], sid ^ 0x10000))[:2]
out["unsplice_missing"] = g.request(CMD["unsplice"])[:2]
# A new backend for an id that unsplice did not leave waiting.
out["pre_splice_into_frozen"] = g.request(CMD["pre-splice"], nlraw.u32(A["id"], sid), *client, *backend)[:2]
# A bad linger time.
out["configure_bad"] = g.request(CMD["configure"], nlraw.u32(A["linger-ms"], 5))[:2]
# Undo the freeze; both connections must still carry bytes both ways.
out["abort"] = g.request(CMD["abort"], nlraw.u32(A["id"], sid))[:2]
ok = True
for a, b in ((cs, cc), (bs, bc)):
    a.sendall(b"ping")
    ok &= b.recv(4) == b"ping"
    b.sendall(b"pong")
    ok &= a.recv(4) == b"pong"
out["connections_intact"] = ok
print(json.dumps(out))
