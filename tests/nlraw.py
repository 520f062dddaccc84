"""A minimal generic netlink client for tests: send one request with raw attributes
to a family and return the kernel's answer (the errno and extended-ack message, and
the attributes of the reply). For exercising the kernel's own checks with requests
no well-behaved tool would build.
"""
import os
import socket
import struct

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1


def _attrs(buf):
    out, at = {}, 0
    while at + 4 <= len(buf):
        ln, ty = struct.unpack_from("HH", buf, at)
        if ln < 4:
            break
        out[ty & 0x3FFF] = buf[at + 4:at + ln]
        at += (ln + 3) & ~3
    return out


def attr(ty, payload):
    return struct.pack("HH", 4 + len(payload), ty) + payload + b"\0" * (-len(payload) % 4)


def u8(ty, v):
    return attr(ty, struct.pack("B", v))


def u16(ty, v):
    return attr(ty, struct.pack("H", v))


def u32(ty, v):
    return attr(ty, struct.pack("I", v))


def addr(ty, dotted):
    return attr(ty, socket.inet_aton(dotted))


class Genl:
    def __init__(self, family):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.s.setsockopt(270, NETLINK_EXT_ACK, 1)  # SOL_NETLINK
        self.s.bind((0, 0))
        self.seq = 1
        err, _, reply = self._send(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, attr(CTRL_ATTR_FAMILY_NAME, family.encode() + b"\0"), 1)
        if err:
            raise OSError(err, f"family {family} not found")
        self.family = struct.unpack("H", reply[CTRL_ATTR_FAMILY_ID][:2])[0]

    def _send(self, ty, cmd, payload, version):
        self.seq += 1
        body = struct.pack("BBH", cmd, version, 0) + payload
        self.s.send(struct.pack("IHHII", 16 + len(body), ty, NLM_F_REQUEST | NLM_F_ACK, self.seq, os.getpid()) + body)
        reply = {}
        while True:
            data = self.s.recv(65536)
            at = 0
            while at + 16 <= len(data):
                ln, mty, flags, seq, _ = struct.unpack_from("IHHII", data, at)
                msg = data[at + 16:at + ln]
                at += (ln + 3) & ~3
                if mty == NLMSG_ERROR:
                    err = -struct.unpack_from("i", msg)[0]
                    # Extended-ack attributes follow the echoed request header (capped
                    # to its 16 bytes when the request was acknowledged or capped).
                    inner_len = struct.unpack_from("I", msg, 4)[0]
                    tlv = msg[4 + (16 if flags & 0x100 else inner_len):] if len(msg) > 20 else b""
                    message = _attrs(tlv).get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode(errors="replace")
                    return err, message, reply
                reply.update(_attrs(msg[4:]))

    def request(self, cmd, *attrs, version=1):
        """Send `cmd` with the given attributes; returns (errno, message, reply attrs)."""
        return self._send(self.family, cmd, b"".join(attrs), version)
