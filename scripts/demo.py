#!/usr/bin/env python3
"""The Lazarus demo (make demo): a failover the client does not notice.

Boots two guests of our kernel on one Ethernet segment (a hub): `primary` (10.77.0.11)
and `backup` (10.77.0.12). Both run Debian's nginx, unmodified, serving the same file
on the service address 10.77.0.100:80, with lazarus_shadow (ST-TCP) loaded: the backup
receives every client frame, runs every connection in its own TCP and nginx, and stays
silent. lazarusd on the backup watches the primary's heartbeats.

A client on the host's own TCP stack downloads the file with curl while a second
connection fetches a small object over HTTP keep-alive several times a second. Part way
through, the primary's VM is killed (no FIN, no RST reaches anyone). lazarusd on the
backup declares it failed, fences it and takes over; both connections go on. A live line
shows the client's progress; the report at the end gives the stall each connection
saw, the bytes and their hash, and the takeover as lazarusd logged it.

    make demo                        # ST-TCP (the default)
    make demo DEMO_ARGS="--mb 128 --rate 8"
    make demo DEMO_ARGS="--mechanism splice"   # CRAFT: a splicing proxy dies instead
    make demo DEMO_ARGS="--mechanism ft-tcp"   # refused: not built yet

Exit status 0 only if the client got every byte right and no connection was reset.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lzbench import Bench, lzctl_path, lzproxy_toml, sha256_file, shadow_backup_toml  # noqa: E402

LZCTL = lzctl_path()
VIP = "10.77.0.100"
PORT = 80
HEARTBEAT_MS = 50
KEY_FILE = "/tmp/lz.key"
MECHANISMS = {
    "st-tcp": None,
    "ft-tcp": "FT-TCP (lazarus_wrap and lazarus_logger) is not built yet",
    "splice": None,
    "salvage": "Backdoors session salvage (lazarus_backdoor) is not built yet",
}


def say(msg):
    print(f"\n\033[1m==>\033[0m {msg}", flush=True)


class Watch:
    """Samples the client's progress: the download file's size and the keep-alive
    session's replies. Records the longest time each went without progress."""

    def __init__(self, path, session, status=None, victim="PRIMARY"):
        self.path = path
        self.session = session
        self.status_of = status or shadow_line
        self.victim = victim
        self.replies = []            # (arrival time, line)
        self.dl_gap = 0.0
        self.ka_gap = 0.0
        self.done = threading.Event()
        self.killed_at = None
        self.status = ""
        self.reader = threading.Thread(target=self._read_session, daemon=True)
        self.reader.start()

    def _read_session(self):
        for line in self.session.stdout:
            self.replies.append((time.monotonic(), line.strip()))

    def size(self):
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def _poll_status(self, backup):
        # Apart from the sampling loop: a command in a busy guest can take a second,
        # which must not count as a stall.
        while not self.done.is_set():
            try:
                self.status = self.status_of(backup)
            except Exception as e:  # the live line must not stop the demo
                self.status = f"backup: ({e.__class__.__name__})"
            time.sleep(0.5)

    def run(self, total, backup):
        poller = threading.Thread(target=self._poll_status, args=(backup,), daemon=True)
        poller.start()
        last_size, last_growth, last_print = 0, time.monotonic(), 0.0
        while not self.done.is_set():
            now = time.monotonic()
            size = self.size()
            if size != last_size:
                if last_size:
                    self.dl_gap = max(self.dl_gap, now - last_growth)
                last_size, last_growth = size, now
            if now - last_print >= 0.1:
                last_print = now
                bar = int(30 * size / total)
                dead = f"  {self.victim} KILLED" if self.killed_at else ""
                print(f"\r    download [{'#' * bar}{'.' * (30 - bar)}] {size / (1 << 20):6.1f}/{total >> 20} MiB"
                      f" | keep-alive replies {len(self.replies):4d} | {self.status}{dead}   ", end="", flush=True)
            time.sleep(0.02)
        times = [t for t, _ in self.replies]
        self.ka_gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
        poller.join(timeout=15)
        print()


class Clients:
    """The demo's clients on the host's stack: curl downloading the file, and a
    keep-alive session fetching a small object 10 times a second, both from
    http://VIP/. `run` kills `victim` part way through the download and waits for both
    to finish; the attributes then hold what they got."""

    def __init__(self, b, a, want):
        self.b, self.a, self.want = b, a, want
        self.total = a.mb << 20
        self.out = os.path.join(b.workdir, "blob")
        self.n_requests = int(self.total / (a.rate * (1 << 20)) * 10) + 20

    def run(self, victim, watched, status=None, victim_name="PRIMARY"):
        b, a = self.b, self.a
        dl = b.host_popen(f"curl -sS --limit-rate {int(a.rate * (1 << 20))} -o {self.out} "
                          f"-w '%{{http_code}} %{{size_download}} %{{time_total}}' http://{VIP}/blob",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        session = b.host_popen(f"for i in $(seq {self.n_requests}); do echo url = http://{VIP}/blob.sha; "
                               f"echo output = /dev/null; done | stdbuf -oL curl -sS -K - --rate 10/s "
                               f"-w '%{{http_code}} %{{num_connects}}\\n'", stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        watch = Watch(self.out, session, status, victim_name)
        shower = threading.Thread(target=watch.run, args=(self.total, watched), daemon=True)
        shower.start()
        while watch.size() < self.total * a.kill_at and dl.poll() is None:
            time.sleep(0.05)
        watch.killed_at = time.monotonic()
        victim.fence()
        dl_out, self.dl_err = dl.communicate(timeout=600)
        # The session's output is read line by line by the watcher, as it comes.
        session.wait(timeout=600)
        watch.reader.join(timeout=10)
        self.ka_err = session.stderr.read()
        time.sleep(0.2)
        watch.done.set()
        shower.join()
        self.code, self.size, self.secs = (dl_out.split() + ["?", "?", "?"])[:3]
        self.got = sha256_file(self.out) if os.path.exists(self.out) else ""
        replies = [l for _, l in watch.replies]
        self.ok_replies = sum(1 for l in replies if l.startswith("200 "))
        self.connects = sum(int(l.split()[1]) for l in replies if len(l.split()) == 2 and l.split()[1].isdigit())
        self.watch = watch
        self.ok = (dl.returncode == 0 and self.code == "200" and self.got == self.want and session.returncode == 0
                   and self.ok_replies == self.n_requests and self.connects == 1)

    def report(self):
        """The lines every mechanism's report shares."""
        print(f"    download:          HTTP {self.code}, {self.size} of {self.total} bytes in {self.secs} s, sha256 "
              f"{'matches the server file' if self.got == self.want else 'DIFFERS'}")
        print(f"    keep-alive:        {self.ok_replies}/{self.n_requests} replies OK over {self.connects} TCP connection(s)")
        print(f"    longest stall:     download {self.watch.dl_gap:.2f} s, keep-alive {self.watch.ka_gap:.2f} s "
              f"(normal gap 0.10 s)")

    def errors(self):
        if self.dl_err.strip() or self.ka_err.strip():
            print(f"    client errors:     {self.dl_err.strip()} {self.ka_err.strip()}")


def shadow_line(backup):
    st = json.loads(backup.out(f"{LZCTL} -j shadow status", timeout=10))
    return f"backup: {st['role']}, gate {'open' if st['gate_open'] else 'shut'}, peer {st['peer_state']}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mechanism", default="st-tcp", choices=sorted(MECHANISMS))
    p.add_argument("--mb", type=int, default=64, help="size of the downloaded file in MiB")
    p.add_argument("--rate", type=float, default=4.0, help="client's download rate limit in MiB/s")
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of the download after which the primary dies")
    a = p.parse_args()
    if MECHANISMS[a.mechanism]:
        sys.exit(f"demo: {MECHANISMS[a.mechanism]}; available: st-tcp, splice")
    if not 0.05 <= a.kill_at <= 0.9:
        sys.exit("demo: --kill-at must be between 0.05 and 0.9")
    if a.mechanism == "splice":
        return splice_demo(a)

    say("booting two guests of the Lazarus kernel on one segment (TCG, about 20 s)")
    t0 = time.time()
    with Bench(2, name="lzdemo", hub=True) as b:
        primary, backup = b.guests
        say(f"guests up in {time.time() - t0:.0f} s: primary {primary.addr}, backup {backup.addr}")
        for g in (primary, backup):
            g.insmod("lazarus_shadow")
            g.start_nginx(a.mb, PORT)
        want = primary.out("cut -d' ' -f1 /tmp/www/blob.sha").strip()
        # A fresh cluster key, the same on both nodes: the peer link is authenticated.
        key = base64.b64encode(os.urandom(32)).decode()
        for g in (primary, backup):
            g.run(f"umask 077; echo {key} > {KEY_FILE}")
        # The backup is configured before it carries the address, so it never answers.
        backup.run(f"{LZCTL} shadow configure --role backup --service {VIP}:{PORT} --peer {primary.addr} "
                   f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE}")
        primary.run(f"{LZCTL} shadow configure --role primary --service {VIP}:{PORT} --peer {backup.addr} "
                    f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE}")
        for g in (primary, backup):
            g.run(f"ip addr add {VIP}/32 dev lz0")
        backup.start_lazarusd(shadow_backup_toml(VIP, PORT, primary.addr, HEARTBEAT_MS, key_file=KEY_FILE))
        say(f"nginx on both nodes serves a {a.mb} MiB file at {VIP}:{PORT}; the backup shadows every connection "
            f"in silence; lazarusd on the backup watches {HEARTBEAT_MS} ms heartbeats")
        print("    " + "\n    ".join(backup.out(f"{LZCTL} shadow status").strip().splitlines()))

        say(f"client (the host's own TCP stack): curl downloads the file at {a.rate:g} MiB/s, and a keep-alive "
            "session fetches a small object 10 times a second")
        clients = Clients(b, a, want)
        clients.run(primary, backup)

        say("the primary was killed; lazarusd on the backup logged:")
        log = backup.out("cat /tmp/lzd.log")
        print("    " + "\n    ".join(l for l in log.strip().splitlines() if "shadow" in l or "takeover" in l
                                     or "fence" in l or "failed" in l))
        st = json.loads(backup.out(f"{LZCTL} -j shadow status"))
        ok = clients.ok and st["stats"]["conns_reset"] == 0

        say("report")
        print(f"    mechanism:         ST-TCP (lazarus_shadow), heartbeat {HEARTBEAT_MS} ms, backup now "
              f"{st['role']} with the gate {'open' if st['gate_open'] else 'shut'}")
        clients.report()
        print(f"    connections reset: {st['stats']['conns_reset']}, clients prompted at takeover: "
              f"{st['stats']['prompts']}")
        clients.errors()
        b.assert_no_kernel_trouble()
        say("the client did not notice: same connections, every byte right" if ok else "FAILED: see above")
        if not ok:
            sys.exit(1)


PROXY_HEARTBEAT_MS = 200


def splice_line(g):
    st = json.loads(g.out(f"{LZCTL} -j splice status", timeout=10))
    role = "active" if f" {VIP}/32 " in g.out("ip -4 addr show dev lz0", timeout=10) else "standby"
    return f"proxy p2: {role}, {st['splices']} splice(s), forwarded {st['stats']['forwarded_bytes'] >> 20} MiB"


def splice_demo(a):
    """CRAFT: two splicing proxies share the service address in front of nginx; the
    active one dies mid-download and the standby carries every spliced connection on."""
    say("booting three guests of the Lazarus kernel on one segment (TCG, about 30 s)")
    t0 = time.time()
    with Bench(3, name="lzdemo") as b:
        p1, p2, web = b.guests
        say(f"guests up in {time.time() - t0:.0f} s: proxies p1 {p1.addr} and p2 {p2.addr}, backend {web.addr}")
        web.start_nginx(a.mb, 8080)
        want = web.out("cut -d' ' -f1 /tmp/www/blob.sha").strip()
        key = base64.b64encode(os.urandom(32)).decode()
        for g, name, peer, other in ((p1, "p1", "p2", p2), (p2, "p2", "p1", p1)):
            g.insmod("lazarus_splice")
            g.run(f"umask 077; echo {key} > {KEY_FILE}")
            cluster = {"name": name, "vip": VIP, "heartbeat_ms": PROXY_HEARTBEAT_MS, "key_file": KEY_FILE,
                       "peers": [(peer, other.addr)]}
            g.start_lzproxy(lzproxy_toml(f"{VIP}:{PORT}", [("web", f"{web.addr}:8080")], [("/", ["web"])], cluster=cluster),
                            f"{VIP}:{PORT}")
            if g is p1:
                deadline = time.monotonic() + 20
                while f" {VIP}/32 " not in p1.out("ip -4 addr show dev lz0"):
                    if time.monotonic() > deadline:
                        sys.exit("demo: p1 never took the service address")
                    time.sleep(0.2)
        time.sleep(1.0)
        say(f"nginx serves a {a.mb} MiB file on {web.addr}:8080; lzproxy on p1 holds {VIP}:{PORT}, splices each "
            f"connection in its kernel and copies every splice to p2 ({PROXY_HEARTBEAT_MS} ms heartbeats)")

        say(f"client (the host's own TCP stack): curl downloads the file at {a.rate:g} MiB/s through the proxy, and a "
            "keep-alive session fetches a small object 10 times a second")
        clients = Clients(b, a, want)
        clients.run(p1, p2, status=splice_line, victim_name="PROXY p1")

        say("p1 was killed; lzproxy on p2 logged:")
        print("    " + "\n    ".join(p2.out("cat /tmp/lzproxy.log").strip().splitlines()))
        st = json.loads(p2.out(f"{LZCTL} -j splice status"))
        ok = clients.ok

        say("report")
        print(f"    mechanism:         CRAFT splicing (lazarus_splice + lzproxy), proxy heartbeat {PROXY_HEARTBEAT_MS} ms")
        clients.report()
        print(f"    p2 carried on:     {st['stats']['installed']} splice(s) copied from p1, "
              f"{st['stats']['forwarded_bytes'] >> 20} MiB forwarded since")
        clients.errors()
        b.assert_no_kernel_trouble()
        say("the client did not notice: same connections, every byte right" if ok else "FAILED: see above")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
