#!/usr/bin/env python3
"""Benchmarks (make bench). Results go to bench/results/*.json; docs/benchmarks.md
shows them with their setup.

core: TCP throughput from the host's stack to iperf3 in one guest, for
  - baseline: no Lazarus module loaded,
  - counting: lazarus_core loaded and counting the iperf3 port,
  - redirect: the client connects to port 5301, which lazarus_core redirects to a
    second iperf3 server on 5202 (headers rewritten in both directions),
measured alternately in the same run (rounds of each), reported as ratios of the
medians against the baseline.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lzbench import Bench  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))


def iperf(b, g, port):
    r = b.host(f"iperf3 -c {g.addr} -p {port} -t {SECONDS} -J", timeout=SECONDS + 60)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6


def main():
    with Bench(1, name="lzbench") as b:
        g = b.guests[0]
        # A redirect target serves only redirected clients (replies from it are
        # always mapped back), so the redirect gets its own server on 5202.
        g.run("setsid iperf3 -s -p 5201 </dev/null >/dev/null 2>&1 &\n"
              "setsid iperf3 -s -p 5202 </dev/null >/dev/null 2>&1 &\n"
              "for p in 5201 5202; do for i in $(seq 50); do ss -lnt | grep -q \":$p \" && break; sleep 0.1; done; done")
        ko = f"{b.modules}/lazarus_core/lazarus_core.ko"
        runs = {"baseline": [], "counting": [], "redirect": []}
        for _ in range(ROUNDS):
            runs["baseline"].append(iperf(b, g, 5201))
            g.run(f"insmod {ko} && sysctl -qw net.lazarus.core.ports=5201 net.lazarus.core.redirect=5301:5202")
            runs["counting"].append(iperf(b, g, 5201))
            runs["redirect"].append(iperf(b, g, 5301))
            g.run("rmmod lazarus_core")
        cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
    base = statistics.median(runs["baseline"])
    result = {
        "benchmark": "core",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": {
            "host": f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs)",
            "guest": "1 vCPU, 768 MiB, QEMU TCG, virtio-net on a tap in a bridge",
            "client": f"iperf3 on the host stack, {SECONDS} s per run, {ROUNDS} rounds, alternating",
            "kernel": "6.12.117 with PROVE_LOCKING and DEBUG_ATOMIC_SLEEP",
        },
        "mbit_per_s": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        "median_mbit_per_s": {k: round(statistics.median(vs), 1) for k, vs in runs.items()},
        "ratio_to_baseline": {k: round(statistics.median(vs) / base, 3) for k, vs in runs.items()},
    }
    out = os.path.join(ROOT, "bench", "results", "core.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
