#!/usr/bin/env python3
"""Benchmarks (make bench). Results go to bench/results/*.json; docs/benchmarks.md
shows them with their setup. BENCH=core,shadow,splice (the default) picks which run;
BENCH=soak runs the 30-minute soak (bench/soak.py), which is not in the default;
BENCH=splice the splicing proxy's (bench/splice.py).

core: TCP throughput from the host's stack to iperf3 in one guest, for
  - baseline: no Lazarus module loaded,
  - counting: lazarus_core loaded and counting the iperf3 port,
  - redirect: the client connects to port 5301, which lazarus_core redirects to a
    second iperf3 server on 5202 (headers rewritten in both directions),
measured alternately in the same run (rounds of each), reported as ratios of the
medians against the baseline.

shadow (ST-TCP): two guests on a hub, both running the deterministic test server.
  - failure-free: download and upload throughput and request latency from the host,
    with the service on one guest alone (baseline: no module, the other guest idle)
    and shadowed (primary + backup configured), alternately in the same run; the
    backup's CPU use while it shadows the download;
  - failover: for heartbeat intervals of 50, 100 and 200 ms, a paced download and an
    interactive session run while the primary's VM is killed; lazarusd on the backup
    fences (nothing to do: the VM is gone) and takes over. The stall is the longest
    gap either client saw.
"""
import base64
import datetime
import time
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lzbench import Bench, shadow_backup_toml  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))


def iperf(b, g, port):
    r = b.host(f"iperf3 -c {g.addr} -p {port} -t {SECONDS} -J", timeout=SECONDS + 60)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6


def core():
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
        cpu = host_cpu()
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
    save("core", result)


def save(name, result):
    out = os.path.join(ROOT, "bench", "results", f"{name}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


VIP, PORT = "10.77.0.100", 8080
CLIENT = os.path.join(ROOT, "tests", "stclient.py")
SERVER_DIR = os.path.join(ROOT, "tests")


def host_cpu():
    return subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()


def st_client(b, *args, timeout=300):
    r = b.host(f"python3 {CLIENT} " + " ".join(map(str, args)), timeout=timeout)
    return json.loads(r.stdout)


def busy_jiffies(g):
    """Non-idle CPU time of a guest so far, and the total (from /proc/stat)."""
    f = [int(x) for x in g.out("head -1 /proc/stat").split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def start_servers(b):
    for g in b.guests:
        g.run(f"cd {SERVER_DIR} && setsid python3 lzserver.py {PORT} </dev/null >/tmp/lzserver.log 2>&1 &\n"
              f"for i in $(seq 100); do ss -lnt | grep -q ':{PORT} ' && break; sleep 0.1; done; ss -lnt | grep -q ':{PORT} '")
        g.run(f"insmod {b.modules}/lazarus_shadow/lazarus_shadow.ko")


LZCTL = os.path.join(ROOT, "target", "release", "lzctl")


KEY_FILE = "/tmp/lz.key"


def shadow_on(b, hb):
    """The pair as deployed: with a cluster key, so the cost of authenticating the
    peer link is in every figure."""
    primary, backup = b.guests
    key = base64.b64encode(os.urandom(32)).decode()
    for g in b.guests:
        g.run(f"umask 077; echo {key} > {KEY_FILE}")
    opts = f"--dev lz0 --heartbeat-ms {hb} --key-file {KEY_FILE}"
    backup.run(f"{LZCTL} shadow configure --role backup --service {VIP}:{PORT} --peer {primary.addr} {opts}")
    primary.run(f"{LZCTL} shadow configure --role primary --service {VIP}:{PORT} --peer {backup.addr} {opts}")
    backup.run(f"ip addr add {VIP}/32 dev lz0")
    for g in b.guests:
        g.run(f"for i in $(seq 100); do {LZCTL} -j shadow status | grep -q '\"peer_state\": *\"alive\"' && exit 0; sleep 0.1; done; exit 1")


def shadow_off(b):
    primary, backup = b.guests
    backup.run(f"ip addr del {VIP}/32 dev lz0; {LZCTL} shadow configure --role none", check=False)
    primary.run(f"{LZCTL} shadow configure --role none", check=False)


def failure_free(n_bytes, lines):
    with Bench(2, name="lzbst", hub=True) as b:
        primary, backup = b.guests
        start_servers(b)
        primary.run(f"ip addr add {VIP}/32 dev lz0")
        keys = ("get_mbit_per_s", "put_mbit_per_s", "request_ms")
        runs = {"baseline": {k: [] for k in keys}, "shadow": {k: [] for k in keys}}
        backup_cpu = []
        for _ in range(ROUNDS):
            for mode in ("baseline", "shadow"):
                if mode == "shadow":
                    shadow_on(b, 100)
                before = busy_jiffies(backup)
                g = st_client(b, "get", VIP, PORT, n_bytes, 7)
                after = busy_jiffies(backup)
                p = st_client(b, "put", VIP, PORT, n_bytes, 8)
                c = st_client(b, "chat", VIP, PORT, lines, "--interval", 0)
                assert g["received_sha"] == g["expected_sha"] and p["server_sha"] == p["sent_sha"] and c["bad_replies"] == 0
                r = runs[mode]
                r["get_mbit_per_s"].append(n_bytes * 8 / g["seconds"] / 1e6)
                r["put_mbit_per_s"].append(n_bytes * 8 / p["seconds"] / 1e6)
                r["request_ms"].append(c["seconds"] / lines * 1000)
                if mode == "shadow":
                    backup_cpu.append((after[0] - before[0]) / max(1, after[1] - before[1]))
                    shadow_off(b)
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in runs.items()}
    return {
        "runs": {m: {k: [round(x, 2) for x in v] for k, v in r.items()} for m, r in runs.items()},
        "median": {m: {k: round(v, 2) for k, v in r.items()} for m, r in med.items()},
        "ratio_to_baseline": {k: round(med["shadow"][k] / med["baseline"][k], 3) for k in keys},
        "backup_cpu_busy_during_get": [round(x, 3) for x in backup_cpu],
    }


def failover(hb):
    with Bench(2, name="lzbsf", hub=True) as b:
        primary, backup = b.guests
        start_servers(b)
        primary.run(f"ip addr add {VIP}/32 dev lz0")
        shadow_on(b, hb)
        backup.start_lazarusd(shadow_backup_toml(VIP, PORT, primary.addr, hb, key_file=KEY_FILE))
        get = b.host_popen(f"python3 {CLIENT} get {VIP} {PORT} 8000000 3 --rate 2000000", stdout=-1, text=True)
        chat = b.host_popen(f"python3 {CLIENT} chat {VIP} {PORT} 250 --interval 0.02", stdout=-1, text=True)
        time.sleep(2.0)
        primary.fence()
        g = json.loads(get.communicate(timeout=120)[0])
        c = json.loads(chat.communicate(timeout=120)[0])
        assert g["received_sha"] == g["expected_sha"] and c["bad_replies"] == 0, (g, c)
        log = backup.out("cat /tmp/lzd.log")
        took = [l for l in log.splitlines() if "takeover:" in l]
        return {"stall_s": max(g["max_gap_s"], c["max_gap_s"]), "get_max_gap_s": g["max_gap_s"],
                "chat_max_gap_s": c["max_gap_s"], "lazarusd": took[-1] if took else log[-300:]}


def shadow():
    n_bytes, lines = 8_000_000, 200
    ff = failure_free(n_bytes, lines)
    fo = {f"{hb}ms": failover(hb) for hb in (50, 100, 200)}
    save("shadow", {
        "benchmark": "shadow",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": {
            "host": f"{platform.node()} ({host_cpu()}, {os.cpu_count()} CPUs)",
            "guests": "2 × 1 vCPU, 768 MiB, QEMU TCG, virtio-net on taps in a bridge with ageing 0 (a hub)",
            "client": f"tests/stclient.py on the host stack: GET and PUT of {n_bytes} bytes, {lines} "
                      f"request/reply lines back to back; {ROUNDS} rounds, alternating baseline and shadowed",
            "server": "tests/lzserver.py on both guests",
            "kernel": "6.12.117 with PROVE_LOCKING and DEBUG_ATOMIC_SLEEP",
        },
        "failure_free": ff,
        "failover": fo,
    })


def main():
    which = os.environ.get("BENCH", "core,shadow,splice").split(",")
    if "core" in which:
        core()
    if "shadow" in which:
        shadow()
    if "splice" in which:
        import splice
        save("splice", splice.splice(host_cpu()))
    if "soak" in which:
        import soak
        soak.soak()


if __name__ == "__main__":
    main()
