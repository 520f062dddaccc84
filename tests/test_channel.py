"""Node-to-node channel between two guests, and the bench's failure tools.

Probes cross the test segment from one guest's kernel to the other's, over UDP and
TCP. netem delay on one guest's link must show in the measured round trip, and a
fenced (killed) guest must stop answering, which lazarusd reports.
"""
import json
import time

from lzbench import Bench, HOST_ADDR, lzctl_path

LZCTL = lzctl_path()


def probe(g, addr, *args):
    rc, out, err = g.run(f"{LZCTL} -j probe {addr} {' '.join(args)}", check=False)
    return rc, (json.loads(out) if rc == 0 else None), err


def test_probe_netem_fence_and_daemon():
    with Bench(2) as b:
        g0, g1 = b.guests
        g0.insmod()
        g1.insmod()

        rc, r, err = probe(g0, g1.addr)
        assert rc == 0, err
        assert r["transport"] == "udp" and 0 < r["rtt_us"] < 1_000_000
        rc, r, err = probe(g0, g1.addr, "--tcp")
        assert rc == 0, err
        assert 0 < r["rtt_us"] < 1_000_000
        assert json.loads(g1.out(f"{LZCTL} -j status"))["probes_answered"] == 2

        # Nothing listens on the host: it refuses both (ICMP port unreachable, RST).
        for extra in ([], ["--tcp"]):
            rc, _, err = probe(g0, HOST_ADDR, "--timeout-ms", "300", *extra)
            assert rc == 1 and "refused" in err.lower(), err
        # Nobody at all at .99: both time out.
        for extra in ([], ["--tcp"]):
            rc, _, err = probe(g0, "10.77.0.99", "--timeout-ms", "300", *extra)
            assert rc == 1 and "no answer" in err and "timed out" in err.lower(), err

        # 150 ms of delay on frames leaving g1 shows in every round trip.
        b.netem(g1, "delay 150ms")
        for extra in ([], ["--tcp"]):
            rc, r, err = probe(g0, g1.addr, "--timeout-ms", "3000", *extra)
            assert rc == 0, err
            assert r["rtt_us"] >= 150_000, r
        b.netem_clear(g1)
        rc, r, err = probe(g0, g1.addr)
        assert rc == 0 and r["rtt_us"] < 150_000, (r, err)

        # lazarusd watches g1, then g1 is fenced.
        g0.start_lazarusd(f"""[core]
ports = "8080"

[[peer]]
name = "backup"
addr = "{g1.addr}"
probe_interval_ms = 100""", ready="backup .* is reachable", load_core=False)
        assert [s["port"] for s in json.loads(g0.out(f"{LZCTL} -j port show"))] == [8080]
        fenced_at = time.time()
        g1.fence()
        g0.run("for i in $(seq 200); do grep -q 'backup .* is unreachable' /tmp/lzd.log && exit 0; sleep 0.1; done; "
               "cat /tmp/lzd.log; exit 1")
        detect = time.time() - fenced_at
        rc, _, err = probe(g0, g1.addr, "--timeout-ms", "300")
        assert rc == 1, "a fenced guest answered"
        # The daemon re-applies its file on SIGHUP, and keeps the running
        # configuration when the new file is invalid.
        g0.run("sed -i 's/ports = \"8080\"/ports = \"8080 9090\"/' /tmp/lz.toml; pkill -HUP -x lazarusd; "
               "for i in $(seq 50); do grep -q 're-applied' /tmp/lzd.log && exit 0; sleep 0.1; done; cat /tmp/lzd.log; exit 1")
        assert [s["port"] for s in json.loads(g0.out(f"{LZCTL} -j port show"))] == [8080, 9090]
        g0.run("sed -i 's/ports = .*/ports = \"http\"/' /tmp/lz.toml; pkill -HUP -x lazarusd; "
               "for i in $(seq 50); do grep -q 'keeping the running configuration' /tmp/lzd.log && exit 0; sleep 0.1; done; "
               "cat /tmp/lzd.log; exit 1")
        assert [s["port"] for s in json.loads(g0.out(f"{LZCTL} -j port show"))] == [8080, 9090]
        g0.run("pkill -TERM -x lazarusd")
        print(f"fenced peer reported unreachable after {detect:.2f} s")
