"""lazarus_core counts exactly the TCP traffic of configured ports.

A real client on the host (its own TCP stack) exchanges data with real servers
(socat) in a guest running our kernel and module. The received bytes are checked by
hash. The counters count what crosses the wire, retransmissions included (the TCG guest
is slow enough that the host does retransmit), so they are checked exactly against two
independent counts of the same traffic: a packet capture in the guest, and the guest
kernel's own TCP MIB (/proc/net/snmp).
"""
import json
import os

import pcap
from lzbench import Bench, lzctl_path

LZCTL = lzctl_path()
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpclient.py")
ECHO_BYTES = 300_000
BLOB_BYTES = 1 << 20


def tcp_mib(g):
    rows = [l.split() for l in g.out("cat /proc/net/snmp").splitlines() if l.startswith("Tcp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def port_stats(g):
    return {s["port"]: s for s in json.loads(g.out(f"{LZCTL} -j port show"))}


def start_servers(g):
    g.run("head -c %d /dev/urandom > /tmp/blob && sha256sum /tmp/blob | cut -d' ' -f1 > /tmp/blob.sha" % BLOB_BYTES)
    g.run("setsid socat -t 30 TCP-LISTEN:8080,reuseaddr,fork EXEC:cat </dev/null >/dev/null 2>&1 &\n"
          "setsid socat -t 30 -U TCP-LISTEN:8081,reuseaddr,fork OPEN:/tmp/blob </dev/null >/dev/null 2>&1 &\n"
          "setsid socat -t 30 TCP-LISTEN:8082,reuseaddr,fork EXEC:cat </dev/null >/dev/null 2>&1 &\n"
          "for p in 8080 8081 8082; do for i in $(seq 50); do ss -lnt | grep -q \":$p \" && break; sleep 0.1; done; done")
    return g.out("cat /tmp/blob.sha").strip()


def exchange(b, g, blob_sha):
    r = json.loads(b.host(f"python3 {CLIENT} echo {g.addr} 8080 {ECHO_BYTES} --seed 7").stdout)
    assert r["received"] == ECHO_BYTES and r["received_sha"] == r["sent_sha"], r
    r = json.loads(b.host(f"python3 {CLIENT} get {g.addr} 8081").stdout)
    assert r["received"] == BLOB_BYTES and r["received_sha"] == blob_sha, r


def capture_start(g):
    g.run("setsid tcpdump -i lz0 -n -s 160 -B 16384 -w /tmp/cap.pcap "
          "'tcp and (port 8080 or port 8081)' </dev/null >/dev/null 2>/tmp/tcpdump.err &\n"
          "for i in $(seq 100); do grep -q listening /tmp/tcpdump.err && break; sleep 0.1; done")


def capture_stop(g):
    """Stop the capture; returns its per-port totals. Fails if it lost packets."""
    g.run("pkill -INT -x tcpdump; for i in $(seq 100); do pgrep -x tcpdump >/dev/null || break; sleep 0.1; done")
    err = g.out("cat /tmp/tcpdump.err")
    assert "0 packets dropped by kernel" in err, f"capture lost packets, cannot compare: {err}"
    g.run(f"cp /tmp/cap.pcap {g.share}/cap.pcap")
    return pcap.port_totals(f"{g.share}/cap.pcap", g.addr, (8080, 8081))


def measured_exchange(b, g, blob_sha):
    """Exchange traffic while capturing; returns (counters, capture, MIB before, MIB after)."""
    settle(g)
    capture_start(g)
    before = tcp_mib(g)
    exchange(b, g, blob_sha)
    settle(g)
    after = tcp_mib(g)
    st = port_stats(g)
    return st, capture_stop(g), before, after


def settle(g):
    # Let FIN/ACK exchanges and TIME_WAIT ACKs finish before reading counters.
    g.run("for i in $(seq 50); do ss -tn state established '( sport = :8080 or sport = :8081 )' | grep -q . || break; sleep 0.1; done; sleep 0.5")


def test_counters_exact_without_offloads():
    with Bench(1) as b:
        g = b.guests[0]
        # One buffer per wire segment in both directions, so the MIB's per-buffer
        # InSegs and our per-segment counts must agree exactly.
        g.run("ethtool -K lz0 gro off gso off tso off rx-gro-hw off")
        feats = g.out("ethtool -k lz0")
        for f in ("generic-receive-offload: off", "tcp-segmentation-offload: off", "rx-gro-hw: off"):
            assert f in feats, f"offload still on: {f}\n{feats}"
        g.insmod()
        blob_sha = start_servers(g)
        g.run(f"{LZCTL} port add 8080 8081")
        st, cap, before, after = measured_exchange(b, g, blob_sha)
        assert set(st) == {8080, 8081}
        for port in (8080, 8081):
            assert {k: v for k, v in st[port].items() if k != "port"} == cap[port], (port, st, cap)
        # The payload that must at least have crossed, whatever was retransmitted.
        assert st[8080]["bytes_in"] >= ECHO_BYTES and st[8080]["bytes_out"] >= ECHO_BYTES
        assert st[8081]["bytes_in"] == 0 and st[8081]["bytes_out"] >= BLOB_BYTES
        segs_in = sum(s["packets_in"] for s in st.values())
        segs_out = sum(s["packets_out"] for s in st.values())
        assert segs_in == after["InSegs"] - before["InSegs"], (st, before, after)
        assert segs_out == (after["OutSegs"] - before["OutSegs"]) + (after["RetransSegs"] - before["RetransSegs"]), (st, before, after)

        # Traffic to a port that is not configured is not counted anywhere.
        r = json.loads(b.host(f"python3 {CLIENT} echo {g.addr} 8082 50000").stdout)
        assert r["received_sha"] == r["sent_sha"]
        assert port_stats(g) == st

        # Reset zeroes one port, then all.
        g.run(f"{LZCTL} reset 8080")
        st2 = port_stats(g)
        assert st2[8080]["bytes_in"] == 0 and st2[8081] == st[8081], (st, st2)
        g.run(f"{LZCTL} reset")
        assert all(v == 0 for s in port_stats(g).values() for k, v in s.items() if k != "port")

        # Counting off: traffic flows, counters stay.
        g.run(f"{LZCTL} disable")
        exchange(b, g, blob_sha)
        assert all(v == 0 for s in port_stats(g).values() for k, v in s.items() if k != "port")
        assert json.loads(g.out(f"{LZCTL} -j status"))["enabled"] is False


def test_counters_with_offloads_count_wire_segments():
    with Bench(1) as b:
        g = b.guests[0]
        g.insmod()
        blob_sha = start_servers(g)
        g.run(f"{LZCTL} port add 8080 8081")
        st, cap, before, after = measured_exchange(b, g, blob_sha)
        # With offloads the capture sees merged buffers, so only bytes compare 1:1.
        for port in (8080, 8081):
            for k in ("bytes_in", "bytes_out"):
                assert st[port][k] == cap[port][k], (port, k, st, cap)
        assert st[8080]["bytes_in"] >= ECHO_BYTES and st[8081]["bytes_out"] >= BLOB_BYTES
        # TCP counts TSO buffers by their segment count too.
        segs_out = sum(s["packets_out"] for s in st.values())
        assert segs_out == (after["OutSegs"] - before["OutSegs"]) + (after["RetransSegs"] - before["RetransSegs"])
        # InSegs counts buffers; merged (GRO/GSO) buffers stand for several segments.
        segs_in = sum(s["packets_in"] for s in st.values())
        assert segs_in >= after["InSegs"] - before["InSegs"]
        # At least one segment per full MSS of payload received.
        assert segs_in >= ECHO_BYTES // 1460


def test_sysctl_configuration_and_validation():
    with Bench(1) as b:
        g = b.guests[0]
        g.insmod()
        g.run("sysctl -w net.lazarus.core.ports='8080, 9000-9002'")
        assert g.out("sysctl -n net.lazarus.core.ports").strip() == "8080 9000 9001 9002"
        assert sorted(port_stats(g)) == [8080, 9000, 9001, 9002]
        for bad in ("80 http", "0", "1-65535", "9-3", "70000", "8080 " * 120):
            rc, _, err = g.run(f"sysctl -w net.lazarus.core.ports='{bad}'", check=False)
            assert rc != 0, f"accepted bad ports value {bad!r}"
            assert "Invalid argument" in err, err
        # Nothing changed.
        assert g.out("sysctl -n net.lazarus.core.ports").strip() == "8080 9000 9001 9002"
        g.run("sysctl -w net.lazarus.core.ports='9001'")
        assert sorted(port_stats(g)) == [9001]
        for bad in ("2", "-1", "x"):
            rc, _, _ = g.run(f"sysctl -w net.lazarus.core.enabled={bad}", check=False)
            assert rc != 0, f"accepted enabled={bad}"
        assert g.out("sysctl -n net.lazarus.core.enabled").strip() == "1"
        rc, _, _ = g.run("sysctl -w net.lazarus.core.stats_log_interval_ms=3600001", check=False)
        assert rc != 0
        g.run("sysctl -w net.lazarus.core.stats_log_interval_ms=100; sleep 0.5; sysctl -w net.lazarus.core.stats_log_interval_ms=0")
        assert "port 9001: in 0 segs" in g.out("dmesg")
        g.run("rmmod lazarus_core")
