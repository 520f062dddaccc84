"""Minimal pcap reader for the tests: Ethernet frames, IPv4/TCP and ARP headers."""
import struct


def frames(path):
    """Yield every captured Ethernet frame (bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise ValueError(f"{path}: bad pcap magic {magic.hex()}")
    linktype = struct.unpack(end + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(end + "IIII", data[off:off + 16])
        yield data[off + 16:off + 16 + incl]
        off += 16 + incl


def ip_str(b):
    return ".".join(map(str, b))


def sources(path):
    """Yield ("ip", src address) for IPv4 frames and ("arp", sender address) for ARP."""
    for frame in frames(path):
        if frame[12:14] == b"\x08\x00" and len(frame) >= 34:
            yield "ip", ip_str(frame[26:30])
        elif frame[12:14] == b"\x08\x06" and len(frame) >= 42:
            yield "arp", ip_str(frame[28:32])


def tcp_segments(path):
    """Yield (src, dst, sport, dport, payload_len, flags) for each TCP/IPv4 frame."""
    for frame in frames(path):
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0f) * 4
        if ip[9] != 6 or len(ip) < ihl + 20:
            continue
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        doff = (tcp[12] >> 4) * 4
        sport, dport = struct.unpack(">HH", tcp[:4])
        yield (ip_str(ip[12:16]), ip_str(ip[16:20]), sport, dport,
               total - ihl - doff, tcp[13])


def port_totals(path, addr, ports):
    """Per-port {packets_in, bytes_in, packets_out, bytes_out} as seen by `addr`."""
    out = {p: {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0} for p in ports}
    for src, dst, sport, dport, plen, _ in tcp_segments(path):
        if dst == addr and dport in out:
            out[dport]["packets_in"] += 1
            out[dport]["bytes_in"] += plen
        elif src == addr and sport in out:
            out[sport]["packets_out"] += 1
            out[sport]["bytes_out"] += plen
    return out


def udp_payloads(path, dport):
    """Yield (src, dst, payload) for each UDP/IPv4 frame to `dport`."""
    for f in frames(path):
        if len(f) < 14 + 20 + 8 or f[12:14] != b"\x08\x00" or f[23] != 17:
            continue
        ihl = (f[14] & 0x0F) * 4
        udp = f[14 + ihl:]
        if len(udp) >= 8 and struct.unpack(">H", udp[2:4])[0] == dport:
            length = struct.unpack(">H", udp[4:6])[0]
            yield ip_str(f[26:30]), ip_str(f[30:34]), udp[8:length]
