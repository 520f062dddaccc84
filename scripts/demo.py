#!/usr/bin/env python3
"""The Lazarus demo (make demo).

Boots two guests of our kernel on a test segment: `server` (10.77.0.11) runs nginx
with lazarus_core counting port 80, and `peer` (10.77.0.12) is watched by the server's
lazarusd over the kernel channel. A client on the host downloads a file with curl while
the counters are shown live; then the peer is fenced (its VM killed) and the daemon
reports it. The failover mechanisms (FT-TCP, ST-TCP, splice, salvage) will take over
here as they land; until then this is the platform's smoke scenario.
"""
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lzbench import Bench, lzctl_path  # noqa: E402

LZCTL = lzctl_path()
LAZARUSD = LZCTL.replace("lzctl", "lazarusd")
FILE_MB = 32


def say(msg):
    print(f"\033[1m==>\033[0m {msg}", flush=True)


def main():
    if "--mechanism" in sys.argv and sys.argv[sys.argv.index("--mechanism") + 1] != "none":
        sys.exit("demo: failover mechanisms are not available yet; run `make demo` without --mechanism")
    say("booting two guests (TCG, about 20 s)")
    t0 = time.time()
    with Bench(2, name="lzdemo") as b:
        server, peer = b.guests
        say(f"guests up in {time.time() - t0:.0f} s: server {server.addr}, peer {peer.addr}")
        for g in (server, peer):
            g.insmod()
        server.run(f"""
mkdir -p /tmp/www /tmp/ng
head -c {FILE_MB << 20} /dev/urandom > /tmp/www/blob
sha256sum /tmp/www/blob | cut -d' ' -f1 > /tmp/www/blob.sha
cat > /tmp/ng/nginx.conf <<'CFG'
worker_processes 1;
error_log /tmp/ng/error.log;
pid /tmp/ng/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  server {{ listen 80; root /tmp/www; }}
}}
CFG
nginx -c /tmp/ng/nginx.conf -p /tmp/ng
cat > /tmp/lz.toml <<'CFG'
[core]
ports = "80"
[[peer]]
name = "peer"
addr = "{peer.addr}"
probe_interval_ms = 100
CFG
setsid {LAZARUSD} --config /tmp/lz.toml </dev/null >/tmp/lzd.log 2>&1 &
for i in $(seq 100); do grep -q 'is reachable' /tmp/lzd.log && break; sleep 0.1; done
""", timeout=300)
        want = server.out("cat /tmp/www/blob.sha").strip()
        say("nginx serving a %d MiB file on port 80, lazarus_core counting it, lazarusd watching the peer" % FILE_MB)
        print(server.out(f"{LZCTL} status"))
        rtt = json.loads(server.out(f"{LZCTL} -j probe {peer.addr} --tcp"))["rtt_us"]
        say(f"kernel-to-kernel channel round trip server -> peer over TCP: {rtt / 1000:.2f} ms")

        say("client (host TCP stack) downloads the file with curl")
        out = os.path.join(b.workdir, "blob")
        curl = b.host_popen(f"curl -s -o {out} -w '%{{http_code}} %{{size_download}} %{{time_total}}' http://{server.addr}/blob",
                            stdout=subprocess.PIPE, text=True)
        done = threading.Event()

        def show():
            while not done.is_set():
                st = json.loads(server.out(f"{LZCTL} -j port show 80"))[0]
                got = os.path.getsize(out) if os.path.exists(out) else 0
                print(f"\r    client has {got / (1 << 20):6.1f} MiB | port 80 counters: in {st['packets_in']} segs, "
                      f"out {st['packets_out']} segs {st['bytes_out'] / (1 << 20):6.1f} MiB   ", end="", flush=True)
                time.sleep(0.5)

        t = threading.Thread(target=show)
        t.start()
        code, size, secs = curl.communicate(timeout=600)[0].split()
        done.set()
        t.join()
        print()
        import hashlib
        with open(out, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        ok = code == "200" and got == want
        say(f"download: HTTP {code}, {int(size)} bytes in {float(secs):.1f} s, sha256 {'matches' if ok else 'DIFFERS'}")

        say("interactive session: 5 requests on one keep-alive connection")
        urls = " ".join(f"-o /dev/null http://{server.addr}/blob.sha" for _ in range(5))
        r = b.host(f"curl -s -w 'HTTP %{{http_code}}, new connections %{{num_connects}}\\n' {urls}")
        print("    " + "\n    ".join(r.stdout.strip().splitlines()))

        say("fencing the peer (its VM is killed, like a power cut)")
        t_fence = time.time()
        peer.fence()
        server.run("for i in $(seq 200); do grep -q 'is unreachable' /tmp/lzd.log && exit 0; sleep 0.05; done; exit 1")
        detect = time.time() - t_fence
        print("    " + "\n    ".join(server.out("cat /tmp/lzd.log").strip().splitlines()))
        st = json.loads(server.out(f"{LZCTL} -j port show 80"))[0]
        say("report")
        print(f"    bytes delivered to the client: {int(size)} (sha256 {'ok' if ok else 'MISMATCH'})")
        print(f"    port 80 counters: {st['bytes_out']} bytes out in {st['packets_out']} segments")
        print(f"    peer failure detected by lazarusd after {detect:.2f} s (probe interval 100 ms)")
        print("    failover of the connection itself: FT-TCP/ST-TCP/splice/salvage are not implemented yet")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
