"""The splice benchmark (BENCH=splice): an L7 proxy in front of one backend.

Two guests: the proxy and the backend (Debian's nginx, unmodified, serving a file).
From the host's stack, curl fetches the file and small objects:
  - direct: from the backend itself (no proxy);
  - relay: through lzproxy relaying in userspace (splice = false);
  - splice: through lzproxy with lazarus_splice;
  - haproxy: through Debian's HAProxy in HTTP mode with splice(2) (option
    splice-auto), the well-known userspace proxy.
All four run in the same rounds, alternating. Throughput is the download rate of the
file; latency the time of a small request on a fresh connection; proxy CPU is the
proxy guest's busy time per gigabyte moved.

Then the proxy failover: two proxies share the service address (heartbeat 200 ms), a
paced download runs through the active one, whose VM is killed; the stall is the
longest gap the client saw between two reads.

And the backend failover: one proxy, two backends on an idempotent route, probes every
200 ms (3 misses mark a backend down); a paced download from the first backend, whose
VM is killed; the proxy replays the request on the other backend, re-reads and checks
what the client has (at the server's pace), and splices again. The stall is again the
client's longest gap between two reads.
"""
import datetime
import json
import os
import platform
import shlex
import statistics
import time

from lzbench import Bench, lzproxy_toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
LZCTL = os.path.join(ROOT, "target", "release", "lzctl")
BLOB_MB = 64
SMALL = "small"  # a 1 KiB file next to the blob
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LATENCY_REQUESTS = 40
VIP = "10.77.0.100"


def busy_jiffies(g):
    f = [int(x) for x in g.out("head -1 /proc/stat").split()[1:]]
    return sum(f) - f[3] - f[4]


def start_proxies(proxy, backend):
    """lzproxy relaying on :81, splicing on :82, HAProxy on :83, all to the backend."""
    proxy.run(f"insmod {proxy.bench.modules}/lazarus_splice/lazarus_splice.ko")
    for port, splice in ((81, False), (82, True)):
        listen = f"{proxy.addr}:{port}"
        cfg = lzproxy_toml(listen, [("b", f"{backend.addr}:80")], [("/", ["b"])], splice)
        proxy.start_lzproxy(cfg, listen, path=f"/tmp/lzp{port}.toml", log=f"/tmp/lzp{port}.log")
    proxy.run(f"""cat > /tmp/haproxy.cfg <<'CFG'
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option splice-auto
frontend f
  bind {proxy.addr}:83
  default_backend b
backend b
  server s {backend.addr}:80
CFG
haproxy -f /tmp/haproxy.cfg -D -p /tmp/haproxy.pid
for p in 81 82 83; do for i in $(seq 100); do ss -lnt | grep -q ":$p " && break; sleep 0.1; done; ss -lnt | grep -q ":$p " || exit 1; done""")


def fetch(b, url):
    """(bytes/s, seconds) of one download by curl on the client side."""
    r = b.host(f"curl -sS -o /dev/null -w '%{{speed_download}} %{{time_total}} %{{size_download}}' {shlex.quote(url)}", timeout=300)
    speed, total, size = r.stdout.split()
    if int(float(size)) <= 0:
        raise AssertionError(f"{url}: nothing downloaded")
    return float(speed), float(total)


def latency(b, url):
    """Median seconds of LATENCY_REQUESTS small requests, each on a new connection."""
    r = b.host(f"for i in $(seq {LATENCY_REQUESTS}); do curl -sS -o /dev/null -w '%{{time_total}}\\n' {shlex.quote(url)}; done", timeout=300)
    return statistics.median(float(x) for x in r.stdout.split())


def failure_free():
    with Bench(2, name="lzbsp") as b:
        proxy, backend = b.guests
        backend.start_nginx(BLOB_MB)
        backend.run("head -c 1024 /dev/zero > /tmp/www/small")
        start_proxies(proxy, backend)
        urls = {
            "direct": f"http://{backend.addr}",
            "relay": f"http://{proxy.addr}:81",
            "splice": f"http://{proxy.addr}:82",
            "haproxy": f"http://{proxy.addr}:83",
        }
        rate = {k: [] for k in urls}
        lat = {k: [] for k in urls}
        cpu = {k: [] for k in urls}
        for _ in range(ROUNDS):
            for k, u in urls.items():
                before = busy_jiffies(proxy)
                speed, _ = fetch(b, f"{u}/blob")
                used = busy_jiffies(proxy) - before
                rate[k].append(speed * 8 / 1e6)
                # Jiffies are 10 ms (USER_HZ 100): CPU seconds per GB moved.
                cpu[k].append(used / 100 / (BLOB_MB * 1.048576 / 1000))
                lat[k].append(latency(b, f"{u}/{SMALL}") * 1000)
        status = json.loads(proxy.out(f"{LZCTL} -j splice status"))
    med = {k: statistics.median(v) for k, v in rate.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    per_cpu = {k: med[k] / max(cpu_med[k], 1e-9) for k in ("relay", "splice", "haproxy")}
    return {
        "mbit_per_s": {k: [round(x, 1) for x in v] for k, v in rate.items()},
        "median_mbit_per_s": {k: round(v, 1) for k, v in med.items()},
        "throughput_ratio_to_direct": {k: round(v / med["direct"], 3) for k, v in med.items()},
        "splice_throughput_ratio_to_haproxy": round(med["splice"] / med["haproxy"], 3),
        "median_request_ms": {k: round(statistics.median(v), 2) for k, v in lat.items()},
        "request_latency_ratio_to_direct": {k: round(statistics.median(v) / statistics.median(lat["direct"]), 3) for k, v in lat.items()},
        "proxy_cpu_s_per_gb": {k: round(v, 2) for k, v in cpu_med.items() if k != "direct"},
        "throughput_per_proxy_cpu_ratio_splice_to_haproxy": round(per_cpu["splice"] / per_cpu["haproxy"], 2),
        "splice_stats": status["stats"],
    }


READER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80)); s.sendall(sys.argv[2].encode())
n, gap, last, start = 0, 0.0, time.monotonic(), time.monotonic()
want = int(sys.argv[3])
head = b""
while True:
    d = s.recv(65536)
    now = time.monotonic()
    if not d:
        break
    gap = max(gap, now - last); last = now
    n += len(d)
print(n, round(gap, 3), round(time.monotonic() - start, 2))
"""


def failover():
    """Stall of a paced download when the active proxy's VM dies (heartbeat 200 ms)."""
    with Bench(3, name="lzbspf") as b:
        p1, p2, backend = b.guests
        backend.run(f"cd {TESTS} && setsid python3 httpd.py 8080 b1 </dev/null >/tmp/httpd.log 2>&1 &\n"
                    "for i in $(seq 100); do ss -lnt | grep -q ':8080 ' && exit 0; sleep 0.1; done; exit 1")
        for g, name, peer, other in ((p1, "p1", "p2", p2), (p2, "p2", "p1", p1)):
            g.run(f"insmod {b.modules}/lazarus_splice/lazarus_splice.ko; umask 077; printf %s 'lazarus bench cluster key 01' > /tmp/lz.key")
            cluster = {"name": name, "vip": VIP, "heartbeat_ms": 200, "key_file": "/tmp/lz.key", "peers": [(peer, other.addr)]}
            g.start_lzproxy(lzproxy_toml(f"{VIP}:80", [("b1", f"{backend.addr}:8080")], [("/", ["b1"])], cluster=cluster), f"{VIP}:80")
            if g is p1:
                for _ in range(100):
                    if f" {VIP}/32 " in p1.out("ip -4 addr show dev lz0"):
                        break
                    time.sleep(0.1)
                else:
                    raise AssertionError("p1 never took the service address")
        time.sleep(1.5)
        n = 6_000_000
        req = f"GET /bytes/{n}?seed=1&rate=1000000 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
        reader = b.host_popen(f"python3 -c {shlex.quote(READER)} {VIP} $'{req}' {n}", stdout=__import__("subprocess").PIPE, text=True)
        for _ in range(100):
            if len(json.loads(p2.out(f"{LZCTL} -j splice list"))) >= 1:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        p1.fence()
        out, _ = reader.communicate(timeout=120)
        got, gap, took = out.split()
    if int(got) < n:
        raise AssertionError(f"the download got {got} of {n} bytes")
    return {"heartbeat_ms": 200, "bytes": int(got), "stall_s": float(gap), "transfer_s": float(took)}


def backend_failover():
    """Stall of a paced download when its backend's VM dies (probes every 200 ms)."""
    with Bench(3, name="lzbsbf") as b:
        proxy, b1, b2 = b.guests
        for g, name in ((b1, "b1"), (b2, "b2")):
            g.run(f"cd {TESTS} && setsid python3 httpd.py 8080 {name} </dev/null >/tmp/httpd.log 2>&1 &\n"
                  "for i in $(seq 100); do ss -lnt | grep -q ':8080 ' && exit 0; sleep 0.1; done; exit 1")
        proxy.run(f"insmod {b.modules}/lazarus_splice/lazarus_splice.ko")
        listen = f"{proxy.addr}:80"
        backends = [("b1", f"{b1.addr}:8080"), ("b2", f"{b2.addr}:8080")]
        extra = ["health_interval_ms = 200", "health_misses = 3"]
        # The route's first request goes to b1.
        proxy.start_lzproxy(lzproxy_toml(listen, backends, [("/", ["b1", "b2"], True)], proxy_extra=extra), listen)
        n = 6_000_000
        req = f"GET /bytes/{n}?seed=1&rate=1000000 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
        reader = b.host_popen(f"python3 -c {shlex.quote(READER)} {proxy.addr} $'{req}' {n}", stdout=__import__("subprocess").PIPE, text=True)
        for _ in range(100):
            if json.loads(proxy.out(f"{LZCTL} -j splice status"))["stats"]["splices"] >= 1:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        b1.fence()
        out, _ = reader.communicate(timeout=120)
        log = proxy.out("cat /tmp/lzproxy.log")
        if len(out.split()) != 3:
            raise AssertionError(f"the download failed; proxy log:\n{log}")
        got, gap, took = out.split()
    if int(got) < n or "replayed on" not in log:
        raise AssertionError(f"the download got {got} of {n} bytes; proxy log:\n{log}")
    checked = int(log.split("replayed on", 1)[1].split("(", 1)[1].split()[0])
    return {"health_interval_ms": 200, "health_misses": 3, "bytes": int(got), "replayed_bytes_checked": checked,
            "stall_s": float(gap), "transfer_s": float(took)}


def splice(host_cpu):
    """The results, for bench/run.py to save."""
    ff = failure_free()
    fo = failover()
    bfo = backend_failover()
    return {
        "benchmark": "splice",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": {
            "host": f"{platform.node()} ({host_cpu}, {os.cpu_count()} CPUs)",
            "guests": "1 vCPU, 768 MiB each, QEMU TCG, virtio-net on taps in a bridge",
            "client": f"curl on the host stack: a {BLOB_MB} MiB file, and {LATENCY_REQUESTS} requests of 1 KiB "
                      f"each on a new connection; {ROUNDS} rounds, the four paths alternating",
            "backend": "Debian's nginx (nginx-light), unmodified",
            "haproxy": "Debian's HAProxy 2.6, mode http, option splice-auto",
            "kernel": "6.12.117 with PROVE_LOCKING and DEBUG_ATOMIC_SLEEP",
        },
        "failure_free": ff,
        "proxy_failover": fo,
        "backend_failover": bfo,
    }
