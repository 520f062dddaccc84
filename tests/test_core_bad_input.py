"""Bad input gets a clean error, changes nothing and leaves no kernel warning.

Covers malformed, oversized, unknown and out-of-range netlink attributes, unknown
commands, unprivileged callers, invalid sysctl writes, and junk on the channel port.
"""
import json
import os
import socket
import struct

from lazarus_consts import CMD, ATTR
from lzbench import Bench, lzctl_path

LZCTL = lzctl_path()
NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all"


def raw(g, cmd, *attrs, dump=False):
    args = " ".join(f"--attr {a}:{p}" for a, p in attrs)
    return g.run(f"{LZCTL} raw --cmd {cmd} {args} {'--dump' if dump else ''}", check=False)


def le16(v):
    return struct.pack("<H", v).hex()


def le32(v):
    return struct.pack("<I", v).hex()


def test_netlink_and_sysctl_bad_input():
    with Bench(1) as b:
        g = b.guests[0]
        g.insmod()
        g.run(f"{LZCTL} port add 8080")
        cases = [
            ("port attribute of 1 byte", (CMD["port-add"], (ATTR["port"], "01")), "Invalid argument"),
            ("port attribute of 4000 bytes", (CMD["port-add"], (ATTR["port"], "00" * 4000)), "Invalid argument"),
            ("port 0", (CMD["port-add"], (ATTR["port"], le16(0))), "out of range"),
            ("unknown attribute", (CMD["port-add"], (ATTR["port"], le16(81)), (99, "00")), "Invalid argument"),
            ("attribute id 0", (CMD["port-add"], (0, "0000")), "Invalid argument"),
            ("enabled = 2", (CMD["set-enabled"], (ATTR["enabled"], "02")), "out of range"),
            ("timeout 0", (CMD["peer-probe"], (ATTR["peer-addr"], "0a4d0001"), (ATTR["timeout-ms"], le32(0))), "out of range"),
            ("timeout 20000", (CMD["peer-probe"], (ATTR["peer-addr"], "0a4d0001"), (ATTR["timeout-ms"], le32(20000))), "out of range"),
            ("missing port", (CMD["port-add"],), "missing attribute: port"),
            ("missing peer", (CMD["peer-probe"],), "missing attribute: peer-addr"),
            ("unknown command", (200,), "Operation not supported"),
            ("deleting an absent port", (CMD["port-del"], (ATTR["port"], le16(9999))), "port is not configured"),
            ("adding a present port", (CMD["port-add"], (ATTR["port"], le16(8080))), "port is already configured"),
        ]
        for name, (cmd, *attrs), want in cases:
            rc, out, err = raw(g, cmd, *attrs)
            assert rc == 1, f"{name}: expected a kernel refusal (exit 1), got {rc}: {out} {err}"
            assert want in err, f"{name}: expected '{want}' in: {err}"
        rc, _, err = raw(g, CMD["get-status"], dump=True)
        assert rc == 1 and "not supported" in err, err

        # A full port table is refused with a clear message.
        g.run("sysctl -w net.lazarus.core.ports='1000-1063'")
        rc, _, err = g.run(f"{LZCTL} port add 2000", check=False)
        assert rc == 1 and "port table is full" in err, err
        g.run("sysctl -w net.lazarus.core.ports=8080")

        # Unprivileged callers may read but not change anything.
        rc, out, _ = g.run(f"{NOBODY} {LZCTL} -j status", check=False)
        assert rc == 0 and json.loads(out)["port_count"] == 1
        for args in ("port add 1234", "port del 8080", "reset", "disable", "probe 10.77.0.1"):
            rc, _, err = g.run(f"{NOBODY} {LZCTL} {args}", check=False)
            assert rc == 1 and "Operation not permitted" in err, (args, rc, err)
        rc, _, err = g.run(f"{NOBODY} sysctl -w net.lazarus.core.ports=1", check=False)
        assert rc != 0 and "denied" in err, err
        rc, _, err = g.run(f"{NOBODY} sysctl -w net.lazarus.core.enabled=0", check=False)
        assert rc != 0

        # Usage errors exit 2 without reaching the kernel.
        rc, _, err = g.run(f"{LZCTL} port add http", check=False)
        assert rc == 2 and "not a port number" in err, err

        # Nothing changed.
        st = json.loads(g.out(f"{LZCTL} -j status"))
        assert st["port_count"] == 1 and st["enabled"] is True
        assert [s["port"] for s in json.loads(g.out(f"{LZCTL} -j port show"))] == [8080]


def probe_frame(kind, nonce):
    return b"LZCH" + bytes([1, kind, 0, 0]) + nonce.to_bytes(8, "big")


def test_channel_rejects_junk_and_answers_probes():
    with Bench(1) as b:
        g = b.guests[0]
        g.insmod()
        junk = [b"", b"x", b"LZCH", probe_frame(1, 5)[:15], probe_frame(1, 5) + b"!", b"XXXX" + probe_frame(1, 5)[4:],
                probe_frame(3, 5), probe_frame(2, 5), bytes(16), os.urandom(1400)]
        script = ["import socket, sys"]
        script.append("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)")
        for j in junk:
            script.append(f"s.sendto({j!r}, ('{g.addr}', 7400))")
        # TCP: junk closes the connection without an answer.
        script.append(f"t = socket.create_connection(('{g.addr}', 7400), timeout=5)")
        script.append("t.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')")
        script.append("t.settimeout(5)")
        # Closing with unread junk resets the connection; either way, no answer.
        script.append("try:\n    got = t.recv(100)\nexcept ConnectionResetError:\n    got = b''")
        script.append("assert got == b'', 'junk on the TCP channel got an answer'")
        # Then a valid probe is answered with its nonce.
        script.append("s.settimeout(5)")
        script.append(f"s.sendto({probe_frame(1, 0x1122334455667788)!r}, ('{g.addr}', 7400))")
        script.append("r, _ = s.recvfrom(100)")
        script.append(f"assert r == {probe_frame(2, 0x1122334455667788)!r}, r")
        script.append("print('ok')")
        path = os.path.join(g.share, "junk.py")
        with open(path, "w") as f:
            f.write("\n".join(script) + "\n")
        assert b.host(f"python3 {path}").stdout.strip() == "ok"
        assert json.loads(g.out(f"{LZCTL} -j status"))["probes_answered"] == 1
