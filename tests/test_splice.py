"""CRAFT splicing: an L7 proxy hands each client connection and its backend
connection to the kernel, which forwards the rest of the transfer by rewriting
segments; the proxy copies only the request head.

Three guests: the proxy (lzproxy with lazarus_splice) and two backends running the
deterministic HTTP server (httpd.py). Clients run on the host's own TCP stack (curl).
Every check compares the received bytes exactly, by SHA-256.
"""
import hashlib
import json
import os
import time

from lzbench import Bench, lzctl_path, sha256_file
from lzserver import stream

LZCTL = lzctl_path()
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
LZPROXY = os.path.join(ROOT, "target", "release", "lzproxy")
BACKEND_PORT = 8080


def stream_sha(seed, n):
    h = hashlib.sha256()
    for b in stream(seed, n):
        h.update(b)
    return h.hexdigest()


def splice_status(g):
    return json.loads(g.out(f"{LZCTL} -j splice status"))


def splice_list(g):
    return json.loads(g.out(f"{LZCTL} -j splice list"))


def start_backend(g, name):
    g.run(f"ulimit -n 8192; cd {TESTS} && setsid python3 httpd.py {BACKEND_PORT} {name} </dev/null >/tmp/httpd.log 2>&1 &\n"
          f"for i in $(seq 100); do ss -lnt | grep -q ':{BACKEND_PORT} ' && exit 0; sleep 0.1; done; cat /tmp/httpd.log; exit 1")


def proxy_config(proxy, backends, splice=True):
    lines = [
        "[proxy]",
        f'listen = "{proxy.addr}:80"',
        f"splice = {'true' if splice else 'false'}",
        "header_timeout_ms = 3000",
        "",
    ]
    for i, g in enumerate(backends, start=1):
        lines += ["[[backend]]", f'name = "b{i}"', f'addr = "{g.addr}:{BACKEND_PORT}"', ""]
    lines += ['[[route]]', 'path_prefix = "/one/"', 'backends = ["b1"]', "",
              '[[route]]', 'path_prefix = "/two/"', 'backends = ["b2"]', "",
              '[[route]]', 'path_prefix = "/"', f'backends = [{", ".join(f"{chr(34)}b{i}{chr(34)}" for i in range(1, len(backends) + 1))}]',
              "idempotent = true"]
    return "\n".join(lines)


def start_proxy(proxy, backends, splice=True):
    if splice:
        proxy.insmod("lazarus_splice")
    proxy.run(f"""cat > /tmp/lzproxy.toml <<'CFG'
{proxy_config(proxy, backends, splice)}
CFG
{LZPROXY} --config /tmp/lzproxy.toml --check
ulimit -n 8192
setsid {LZPROXY} --config /tmp/lzproxy.toml </dev/null >/tmp/lzproxy.log 2>&1 &
for i in $(seq 100); do ss -lnt | grep -q '{proxy.addr}:80 ' && exit 0; sleep 0.1; done; cat /tmp/lzproxy.log; exit 1""")


def setup(b, splice=True):
    proxy, b1, b2 = b.guests
    start_backend(b1, "b1")
    start_backend(b2, "b2")
    start_proxy(proxy, [b1, b2], splice)
    return proxy, b1, b2


def curl(b, args, out):
    """Start curl on the client side; its body goes to `out`, its write-out report
    (status code and backend header) to `out`.meta."""
    return b.host_popen(f"curl -sS --max-time 120 -o {out} -D {out}.hdr {args} > {out}.meta 2>&1")


def header(path, name):
    with open(path, errors="replace") as f:
        for line in f:
            if line.lower().startswith(name.lower() + ":"):
                return line.split(":", 1)[1].strip()
    return None


def test_concurrent_downloads_and_uploads_through_the_splice_arrive_exact():
    with Bench(3, name="lzsp") as b:
        proxy, b1, b2 = setup(b)
        proxy.run(f"{LZCTL} splice configure --linger-ms 500")
        work = b.workdir
        jobs = []
        # Downloads routed by path to each backend, and uploads to either.
        for i in range(12):
            n = 1_000_000 + 371_000 * i
            route = ("one", "b1") if i % 2 == 0 else ("two", "b2")
            out = os.path.join(work, f"get{i}")
            jobs.append(("get", out, (n, 100 + i, route[1]), curl(b, f"http://{proxy.addr}/{route[0]}/bytes/{n}?seed={100 + i}", out)))
        for i in range(6):
            n = 700_000 + 253_000 * i
            src = os.path.join(work, f"up{i}.bin")
            with open(src, "wb") as f:
                for chunk in stream(500 + i, n):
                    f.write(chunk)
            out = os.path.join(work, f"put{i}")
            jobs.append(("put", out, (src,), curl(b, f"-T {src} http://{proxy.addr}/upload/{i}", out)))
        total = 0
        for kind, out, info, p in jobs:
            assert p.wait(timeout=180) == 0, f"curl failed: {open(out + '.meta').read()}"
            if kind == "get":
                n, seed, backend = info
                assert os.path.getsize(out) == n, f"{out}: {os.path.getsize(out)} bytes, expected {n}"
                assert sha256_file(out) == stream_sha(seed, n), f"{out}: wrong bytes"
                assert header(out + ".hdr", "X-Backend") == backend, f"{out} was routed to the wrong backend"
                total += n
            else:
                (src,) = info
                with open(out) as f:
                    assert f.read().strip() == sha256_file(src), f"{out}: the backend received other bytes"
                total += os.path.getsize(src)
        st = splice_status(proxy)
        print("splice status:", st)
        s = st["stats"]
        assert s["splices"] == len(jobs), f"{s['splices']} splices for {len(jobs)} connections; proxy log:\n{proxy.out('cat /tmp/lzproxy.log')}"
        # Nearly every byte went through the kernel, not the proxy program.
        assert s["forwarded_bytes"] >= 0.9 * total, f"only {s['forwarded_bytes']} of {total} bytes were spliced"
        assert s["send_errors"] == 0 and s["rewrite_errors"] == 0
        # Every splice closes (both FINs acknowledged) and leaves the table after its linger.
        deadline = time.monotonic() + 15
        while splice_list(proxy) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = splice_list(proxy)
        assert not left, f"splices left: {left}"
        s = splice_status(proxy)["stats"]
        assert s["closed"] == len(jobs), f"closed {s['closed']}, expired {s['expired']}"
