"""Loading and unloading under traffic: 100 cycles, no oops, no leak, no leftovers."""
import json
import os
import time

from lzbench import Bench, lzctl_path

LZCTL = lzctl_path()
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpclient.py")
CYCLES = 100


def test_load_unload_under_traffic():
    # kmemleak is built in but off by default; this test turns it on.
    with Bench(1, append=("kmemleak=on",)) as b:
        g = b.guests[0]
        ko = f"{b.modules}/lazarus_core/lazarus_core.ko"
        g.run("setsid socat -t 30 TCP-LISTEN:8080,reuseaddr,fork EXEC:cat </dev/null >/dev/null 2>&1 &\n"
              "for i in $(seq 50); do ss -lnt | grep -q ':8080 ' && break; sleep 0.1; done")
        # Baseline: whatever the boot itself left is marked as seen.
        g.run("echo scan > /sys/kernel/debug/kmemleak; echo clear > /sys/kernel/debug/kmemleak", timeout=300)
        stop = os.path.join(g.share, "stop-traffic")
        results = os.path.join(g.share, "traffic.jsonl")
        traffic = b.host_popen(
            f"while [ ! -e {stop} ]; do python3 {CLIENT} echo {g.addr} 8080 20000 --seed $RANDOM >> {results} || echo FAIL >> {results}; done")
        try:
            start = time.time()
            g.run(f"""
for i in $(seq {CYCLES}); do
  insmod {ko} || {{ echo "insmod failed at $i"; exit 1; }}
  sysctl -qw net.lazarus.core.ports=8080 || exit 2
  {LZCTL} status >/dev/null || exit 3
  rmmod lazarus_core || {{ echo "rmmod failed at $i"; exit 4; }}
done""", timeout=900)
            cycle_time = (time.time() - start) / CYCLES
        finally:
            open(stop, "w").close()
            traffic.wait(timeout=120)
        lines = open(results).read().splitlines()
        assert lines, "no traffic ran during the cycles"
        assert "FAIL" not in lines, "a transfer failed while the module was cycled"
        for l in lines:
            r = json.loads(l)
            assert r["received_sha"] == r["sent_sha"], r
        # Nothing left behind.
        assert "lazarus_core" not in g.out("lsmod")
        assert ":7400" not in g.out("ss -lntu")
        assert "lz_chan" not in g.out("ps -e -o comm")
        assert "lazarus" not in g.out("ls /proc/sys/net")
        t = time.time()
        leaks = g.out("echo scan > /sys/kernel/debug/kmemleak; sleep 6; echo scan > /sys/kernel/debug/kmemleak; "
                      "cat /sys/kernel/debug/kmemleak", timeout=600)
        assert leaks.strip() == "", f"kmemleak reports:\n{leaks[:4000]}"
        print(f"{CYCLES} cycles, {cycle_time * 1000:.0f} ms per load/unload, {len(lines)} transfers, "
              f"leak scan {time.time() - t:.0f} s")
