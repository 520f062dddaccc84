#!/usr/bin/env python3
"""Soak (make bench BENCH=soak): an ST-TCP pair under mixed traffic for
SOAK_MINUTES (default 30), the primary killed every SOAK_INTERVAL seconds (default
60), so that the roles alternate:

  1. the current primary's VM is killed (no FIN, no RST);
  2. lazarusd on the backup fences (nothing to do: the VM is gone) and takes over;
  3. the killed VM boots again and joins as the survivor's backup (lazarusd, role
     backup), configured before it gets the service address;
  4. the survivor's file is changed to role primary with the new backup as peer and
     its lazarusd reloaded (SIGHUP): it re-arms once the connections it took over
     have ended, and the pair is fault-tolerant again before the next kill.

Meanwhile host-side clients (tests/stclient.py on the host stack) run short GETs,
PUTs and request/reply sessions back to back, each checked byte for byte (SHA-256).
The result (bench/results/soak.json) counts verified connections and bytes,
corrupted ones (must be 0) and failed ones (reset or cut short), and records per
cycle the takeover and re-arm times and the survivor's memory. A kernel warning in
any guest, in any boot, fails the run.
"""
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lzbench import Bench, shadow_backup_toml  # noqa: E402

VIP, PORT = "10.77.0.100", 8080
HEARTBEAT_MS = 100
KEY_FILE = "/tmp/lz.key"
LZCTL = os.path.join(ROOT, "target", "release", "lzctl")
CLIENT = os.path.join(ROOT, "tests", "stclient.py")
SERVER_DIR = os.path.join(ROOT, "tests")


def primary_toml(peer):
    return (f'[shadow]\nrole = "primary"\nservice = "{VIP}:{PORT}"\npeer = "{peer}"\ndev = "lz0"\n'
            f'heartbeat_ms = {HEARTBEAT_MS}\nkey_file = "{KEY_FILE}"')


def status(g):
    return json.loads(g.out(f"{LZCTL} -j shadow status"))


def wait_for(what, pred, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(step)
    raise AssertionError(f"soak: timed out waiting for {what}")


def node_up(g, b, key, role, peer):
    """A freshly booted guest: module, server, key, lazarusd in `role`."""
    g.run(f"insmod {b.modules}/lazarus_shadow/lazarus_shadow.ko\n"
          f"umask 077; echo {key} > {KEY_FILE}\n"
          f"cd {SERVER_DIR} && setsid python3 lzserver.py {PORT} </dev/null >/tmp/lzserver.log 2>&1 &\n"
          f"for i in $(seq 100); do ss -lnt | grep -q ':{PORT} ' && break; sleep 0.1; done; ss -lnt | grep -q ':{PORT} '")
    if role == "backup":
        g.start_lazarusd(shadow_backup_toml(VIP, PORT, peer.addr, HEARTBEAT_MS, key_file=KEY_FILE))
    else:
        g.start_lazarusd(primary_toml(peer.addr), ready="configuration applied")
    # Only once configured: a backup must never answer for the address.
    g.run(f"ip addr add {VIP}/32 dev lz0")


class Traffic:
    """Client workers on the host, each running one kind of short connection back to
    back until stopped."""

    def __init__(self, b, workers=("get", "get", "put", "chat")):
        self.b = b
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "corrupted": 0, "failed": 0, "bytes_verified": 0}
        self.failures = []
        self.threads = [threading.Thread(target=self.run, args=(kind, i), daemon=True) for i, kind in enumerate(workers)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)

    def one(self, kind, rng):
        if kind == "get":
            n = rng.randrange(200_000, 3_000_000)
            args = f"get {VIP} {PORT} {n} {rng.randrange(1 << 30)} --rate 1500000"
        elif kind == "put":
            n = rng.randrange(100_000, 2_000_000)
            args = f"put {VIP} {PORT} {n} {rng.randrange(1 << 30)} --rate 1000000"
        else:
            n = rng.randrange(20, 200)
            args = f"chat {VIP} {PORT} {n} --interval 0.02"
        p = self.b.host(f"python3 {CLIENT} {args}", check=False, timeout=300)
        if p.returncode != 0:
            return "failed", 0, f"{args}: rc {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"
        r = json.loads(p.stdout)
        if kind == "get":
            good = r["received"] == n and r["received_sha"] == r["expected_sha"]
            short = r["received"] < n and r["received_sha"] != r["expected_sha"]
        elif kind == "put":
            good = r["sent"] == n and r["server_sha"] == r["sent_sha"]
            short = False
        else:
            good = r["lines"] == n and r["bad_replies"] == 0
            short = r["lines"] < n and r["bad_replies"] == 0
        if good:
            return "ok", n if kind != "chat" else 0, None
        # A stream cut short is a failed connection; wrong bytes are corruption.
        return ("failed" if short else "corrupted"), 0, f"{args}: {r}"

    def run(self, kind, i):
        rng = random.Random(i * 7919 + int(time.time()))
        while not self.stop.is_set():
            verdict, nbytes, why = self.one(kind, rng)
            with self.lock:
                self.counts[verdict] += 1
                self.counts["bytes_verified"] += nbytes
                if why:
                    self.failures.append({"at": round(time.time(), 1), "kind": verdict, "what": why[:400]})


def meminfo(g):
    m = {}
    for line in g.out("grep -E '^(MemAvailable|Slab|SUnreclaim):' /proc/meminfo").splitlines():
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return m


def soak():
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    interval = float(os.environ.get("SOAK_INTERVAL", "60"))
    key = os.urandom(24).hex()
    cycles = []
    with Bench(2, name="lzsoak", hub=True) as b:
        primary, backup = b.guests
        node_up(backup, b, key, "backup", primary)
        node_up(primary, b, key, "primary", backup)
        for g in b.guests:
            wait_for(f"guest {g.index} to see its peer alive", lambda g=g: status(g)["peer_state"] == "alive", 30)
        traffic = Traffic(b)
        traffic.start()
        start = time.monotonic()
        next_kill = start + interval
        try:
            while time.monotonic() + interval <= start + minutes * 60 + 1:
                time.sleep(max(0.0, next_kill - time.monotonic()))
                next_kill += interval
                cycle = {"killed": primary.index, "at_s": round(time.monotonic() - start, 1),
                         "survivor_mem_kb": meminfo(backup)}
                killed = time.monotonic()
                primary.fence()
                wait_for("the backup to take over", lambda: status(backup)["gate_open"], 30)
                cycle["serving_again_s"] = round(time.monotonic() - killed, 2)
                reloads = backup.out("grep -c 'shadow: re-armed' /tmp/lzd.log || true").strip()
                primary.restart()
                cycle["rebooted_s"] = round(time.monotonic() - killed, 1)
                node_up(primary, b, key, "backup", backup)
                backup.run(f"cat > /tmp/lz.toml <<'CFG'\n{primary_toml(primary.addr)}\nCFG\n"
                           f"kill -HUP $(pidof lazarusd)")
                cycle["reloaded_s"] = round(time.monotonic() - killed, 1)
                if os.environ.get("SOAK_DEBUG"):
                    print(backup.out(f"{LZCTL} shadow status | head -12; {LZCTL} shadow conns | head -30"), flush=True)
                wait_for("the survivor to re-arm as primary",
                         lambda: backup.out("grep -c 'shadow: re-armed' /tmp/lzd.log || true").strip() != reloads, 60)
                if os.environ.get("SOAK_DEBUG"):
                    print(backup.out("cat /tmp/lzd.log | tail -12"), flush=True)
                cycle["rearmed_s"] = round(time.monotonic() - killed, 1)
                wait_for("the pair to be fault-tolerant again",
                         lambda: status(backup)["fault_tolerant"] and status(primary)["peer_state"] == "alive", 30)
                cycle["protected_again_s"] = round(time.monotonic() - killed, 1)
                cycles.append(cycle)
                print(json.dumps(cycle), flush=True)
                primary, backup = backup, primary
        finally:
            traffic.finish()
            result = {
                "benchmark": "soak",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "setup": {
                    "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
                    "guests": "2 × 1 vCPU, 768 MiB, QEMU TCG, on a hub; lazarusd on both, cluster key, heartbeat "
                              f"{HEARTBEAT_MS} ms",
                    "traffic": "host stclient.py workers back to back: 2 × GET 0.2-3 MB at 1.5 MB/s, "
                               "PUT 0.1-2 MB at 1 MB/s, request/reply 20-200 lines at 20 ms",
                    "failures": f"the primary's VM killed every {interval:.0f} s for {minutes:g} min; it boots "
                                "again as the survivor's backup and the survivor re-arms as primary",
                },
                "cycles": cycles,
                "connections": traffic.counts,
                "failures": traffic.failures[:50],
            }
            out = os.path.join(ROOT, "bench", "results", "soak.json")
            with open(out, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            print(json.dumps({k: result[k] for k in ("connections", "failures")}, indent=2))
    # Every connection must come through: a protected one never fails, and the
    # connections are short enough that none accepted while the pair was unprotected
    # is still open at the next kill.
    if traffic.counts["corrupted"] or traffic.counts["failed"] or traffic.counts["ok"] == 0:
        raise SystemExit(f"soak: {traffic.counts}")


if __name__ == "__main__":
    soak()
