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
import shlex
import time

from lzbench import Bench, lzctl_path, lzproxy_toml, sha256_file, wait_for
from lzserver import stream

LZCTL = lzctl_path()
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
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


def backend_list(backends):
    return [(f"b{i}", f"{g.addr}:{BACKEND_PORT}") for i, g in enumerate(backends, start=1)]


def start_proxy(proxy, backends, splice=True):
    if splice:
        proxy.insmod("lazarus_splice")
    names = [f"b{i}" for i in range(1, len(backends) + 1)]
    routes = [("/one/", ["b1"]), ("/two/", ["b2"]), ("/", names, True)]
    listen = f"{proxy.addr}:80"
    proxy.start_lzproxy(lzproxy_toml(listen, backend_list(backends), routes, splice, header_timeout_ms=3000), listen)


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


def upload_file(work, name, seed, n):
    """A file of `n` bytes of the seeded stream, to upload."""
    src = os.path.join(work, name)
    with open(src, "wb") as f:
        for chunk in stream(seed, n):
            f.write(chunk)
    return src


def check_jobs(jobs, diagnose=lambda: ""):
    """Wait for every curl job; each download must be the seeded stream (from the
    named backend, when one is given) and each upload's reply its SHA-256. Returns the
    bytes moved."""
    total = 0
    for kind, out, info, p in jobs:
        assert p.wait(timeout=180) == 0, f"curl failed: {open(out + '.meta').read()}\n{diagnose()}"
        if kind == "get":
            n, seed, backend = info
            assert os.path.getsize(out) == n, f"{out}: {os.path.getsize(out)} bytes, expected {n}"
            assert sha256_file(out) == stream_sha(seed, n), f"{out}: wrong bytes"
            if backend:
                assert header(out + ".hdr", "X-Backend") == backend, f"{out} was routed to the wrong backend"
            total += n
        else:
            (src,) = info
            with open(out) as f:
                assert f.read().strip() == sha256_file(src), f"{out}: the backend received other bytes"
            total += os.path.getsize(src)
    return total


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
            src = upload_file(work, f"up{i}.bin", 500 + i, 700_000 + 253_000 * i)
            out = os.path.join(work, f"put{i}")
            jobs.append(("put", out, (src,), curl(b, f"-T {src} http://{proxy.addr}/upload/{i}", out)))
        total = check_jobs(jobs)
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


VIP = "10.77.0.100"
KEY = "lazarus test cluster key 0001"


def start_cluster_proxy(g, name, peers, backends):
    g.insmod("lazarus_splice")
    g.run(f"umask 077; printf %s '{KEY}' > /tmp/lz.key")
    # Four TCG guests on two host CPUs stall now and then for a few hundred
    # milliseconds: five missed 100 ms beats make a takeover, not one stall.
    cluster = {"name": name, "vip": VIP, "heartbeat_ms": 100, "missed_beats": 5, "key_file": "/tmp/lz.key",
               "peers": [(pname, p.addr) for pname, p in peers]}
    routes = [("/one/", ["b1"]), ("/", ["b2"])]
    g.start_lzproxy(lzproxy_toml(f"{VIP}:80", backend_list(backends), routes, header_timeout_ms=3000, cluster=cluster), f"{VIP}:80")


def holds_vip(g):
    return f" {VIP}/32 " in g.out("ip -4 addr show dev lz0")


def test_a_proxy_killed_mid_transfer_loses_no_spliced_connection():
    with Bench(4, name="lzspf") as b:
        p1, p2, b1, b2 = b.guests
        start_backend(b1, "b1")
        start_backend(b2, "b2")
        start_cluster_proxy(p1, "p1", [("p2", p2)], [b1, b2])
        wait_for("p1 to hold the service address", lambda: holds_vip(p1), timeout=20, step=0.1)
        start_cluster_proxy(p2, "p2", [("p1", p1)], [b1, b2])
        time.sleep(1.0)
        assert not holds_vip(p2), "the standby took the address while the active proxy was alive"

        work = b.workdir
        jobs = []
        # Transfers paced to last about 30 s, so that the failure lands in their
        # middle even when the busy guests answer the test's commands slowly.
        for i in range(6):
            n = 3_000_000 + 100_000 * i
            route = "one" if i % 2 == 0 else "two"
            out = os.path.join(work, f"get{i}")
            url = f"http://{VIP}/{route}/bytes/{n}?seed={300 + i}&rate=100000"
            jobs.append(("get", out, (n, 300 + i, None), curl(b, shlex.quote(url), out)))
        for i in range(3):
            src = upload_file(work, f"up{i}.bin", 700 + i, 3_000_000 + 77_000 * i)
            out = os.path.join(work, f"put{i}")
            jobs.append(("put", out, (src,), curl(b, f"--limit-rate 100K -T {src} http://{VIP}/upload/{i}", out)))

        # Every connection is spliced on p1 and copied to p2 before p1 dies.
        started = time.monotonic()
        wait_for("every connection to be spliced on p1", lambda: splice_status(p1)["stats"]["splices"] >= len(jobs), timeout=20, step=0.1)
        print(f"spliced after {time.monotonic() - started:.2f} s")
        wait_for("p2 to hold a copy of each splice", lambda: len(splice_list(p2)) >= len(jobs), timeout=20, step=0.1)
        print(f"copied after {time.monotonic() - started:.2f} s")
        print("p1 splices:", splice_status(p1)["stats"], "p2:", splice_status(p2)["stats"])
        progress = splice_status(p1)["stats"]["forwarded_bytes"]
        p1.fence()
        killed = time.monotonic()
        wait_for("p2 to take the service address over", lambda: holds_vip(p2), timeout=10)
        print(f"p2 holds {VIP} {time.monotonic() - killed:.2f} s after p1 died")

        total = check_jobs(jobs, lambda: "p2 log:\n" + p2.out("cat /tmp/lzproxy.log"))
        print("p2 log:\n" + p2.out("cat /tmp/lzproxy.log"))
        st2 = splice_status(p2)
        s = st2["stats"]
        print("p2 after:", s, f"last send errno {st2['last_send_errno']}; p1 had forwarded {progress} bytes")
        assert s["installed"] >= len(jobs)
        assert s["forwarded_bytes"] >= 0.2 * total, f"p2 forwarded {s['forwarded_bytes']} of {total} bytes: the failure did not land mid-transfer"
        assert s["send_errors"] == 0 and s["rewrite_errors"] == 0
        # A new connection goes to the new active proxy.
        out = os.path.join(work, "after")
        assert curl(b, f"http://{VIP}/one/bytes/100000?seed=9", out).wait(timeout=60) == 0
        assert sha256_file(out) == stream_sha(9, 100_000)


def test_a_backend_killed_mid_response_on_an_idempotent_route_is_replayed_elsewhere():
    """The backend dies (its VM killed) in the middle of spliced responses. On the
    idempotent route the proxy replays each request to the other backend, checks the
    new response against what the client has, and splices again: the client gets
    every byte exactly once. On a route that may not be replayed the client's
    connection is reset, and what it got before is still the right prefix."""
    with Bench(3, name="lzspr") as b:
        proxy, b1, b2 = b.guests
        start_backend(b1, "b1")
        start_backend(b2, "b2")
        proxy.insmod("lazarus_splice")
        routes = [("/idem/", ["b1", "b2"], True), ("/plain/", ["b1"])]
        listen = f"{proxy.addr}:80"
        extra = ["health_interval_ms = 200", "health_misses = 3"]
        proxy.start_lzproxy(lzproxy_toml(listen, backend_list([b1, b2]), routes, header_timeout_ms=3000, proxy_extra=extra), listen)
        work = b.workdir
        jobs, plain = [], []
        # Paced to last about 10 s, so that the failure lands in their middle. The
        # route takes b1 and b2 in turn: half of these lose their backend.
        for i in range(6):
            n = 2_000_000 + 50_000 * i
            out = os.path.join(work, f"idem{i}")
            url = f"http://{proxy.addr}/idem/bytes/{n}?seed={400 + i}&rate=200000"
            jobs.append(("get", out, (n, 400 + i, None), curl(b, shlex.quote(url), out)))
        for i in range(2):
            n = 2_000_000
            out = os.path.join(work, f"plain{i}")
            url = f"http://{proxy.addr}/plain/bytes/{n}?seed={500 + i}&rate=200000"
            plain.append((out, n, 500 + i, curl(b, shlex.quote(url), out)))
        wait_for("every connection to be spliced", lambda: splice_status(proxy)["stats"]["splices"] >= 8, timeout=30, step=0.2)
        # Every response is under way once spliced (the proxy splices a resumable
        # one after its head). The replay re-reads what the client has, at the
        # server's pace, and must be done within 8 s: fail them early.
        time.sleep(0.3)
        before = splice_status(proxy)["stats"]["forwarded_bytes"]
        b1.fence()
        killed = time.monotonic()
        log = lambda: ("proxy log:\n" + proxy.out("cat /tmp/lzproxy.log") + "\nsplices:\n"  # noqa: E731
                       + proxy.out(f"{LZCTL} -j splice list; {LZCTL} -j splice status; ss -tnie; nstat -az | grep -v ' 0 '"))
        total = check_jobs(jobs, log)
        print(f"the replayed downloads finished {time.monotonic() - killed:.1f} s after b1 died")
        text = proxy.out("cat /tmp/lzproxy.log")
        print(text)
        st = splice_status(proxy)["stats"]
        print("splice status:", st, "forwarded before the failure:", before)
        # Three downloads were on b1, and b1 had sent part of each.
        assert text.count("replayed on") == 3, text
        assert st["unspliced"] >= 5, st
        assert before < total, "the failure did not land mid-transfer"
        assert st["send_errors"] == 0 and st["rewrite_errors"] == 0, st
        # The route that may not be replayed: reset, and a right prefix before it.
        for out, n, seed, p in plain:
            assert p.wait(timeout=120) != 0, f"{out}: a download from the dead backend completed"
            got = open(out, "rb").read() if os.path.exists(out) else b""
            want = b"".join(stream(seed, n))[: len(got)]
            assert 0 < len(got) < n and got == want, f"{out}: {len(got)} bytes, not a prefix of the stream"
        assert text.count("the client connection is reset") == 2, text


def spec_numbers():
    import yaml
    with open(os.path.join(ROOT, "rust/proto/specs/lazarus_splice.yaml")) as f:
        spec = yaml.safe_load(f)
    return {
        "cmd": {op["name"]: i for i, op in enumerate(spec["operations"]["list"], start=1)},
        "attr": {a["name"]: i for i, a in enumerate(spec["attribute-sets"][0]["attributes"], start=1)},
    }


def raw_http(b, addr, data, timeout=10):
    """Send `data` on a fresh connection from the client side and return what comes
    back before the proxy closes (or the timeout)."""
    script = (f"import socket,sys; s=socket.create_connection(('{addr}',80)); s.settimeout({timeout}); "
              f"s.sendall(bytes.fromhex('{data.hex()}')); out=b''\n"
              "try:\n    while (d := s.recv(65536)): out += d\nexcept OSError: pass\n"
              "sys.stdout.write(out.decode('latin-1'))")
    return b.host(["python3", "-c", script], timeout=timeout + 30).stdout


def test_bad_requests_and_bad_splice_requests_get_clean_errors():
    with Bench(3, name="lzspb") as b:
        proxy, b1, b2 = setup(b)
        cases = [
            ("a header line without a colon", b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", "400"),
            ("a bare LF", b"GET / HTTP/1.1\nHost: x\r\n\r\n", "400"),
            ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", "400"),
            ("two different lengths (smuggling)", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400"),
            ("an oversized head", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", "431"),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "505"),
        ]
        for what, data, status in cases:
            reply = raw_http(b, proxy.addr, data)
            assert reply.startswith(f"HTTP/1.1 {status} "), f"{what}: got {reply[:80]!r}"
        # A client that sends half a head and stalls gets 408 after the header timeout
        # (3 s here); one that vanishes costs nothing.
        reply = raw_http(b, proxy.addr, b"GET /one/bytes/10 HTTP/1.1\r\nHo", timeout=8)
        assert reply.startswith("HTTP/1.1 408 "), f"a stalled client got {reply[:80]!r}"
        b.host(["python3", "-c", f"import socket; s=socket.create_connection(('{proxy.addr}',80)); s.send(b'GET / HT'); s.close()"])
        # None of that was spliced, and the proxy still serves.
        out = os.path.join(b.workdir, "after")
        assert curl(b, f"http://{proxy.addr}/one/bytes/200000?seed=5", out).wait(timeout=60) == 0
        assert sha256_file(out) == stream_sha(5, 200_000)
        assert splice_status(proxy)["stats"]["splices"] == 1

        # The module: changes need CAP_NET_ADMIN.
        rc, _, err = proxy.run(f"setpriv --reuid=65534 --regid=65534 --clear-groups {LZCTL} splice abort 1", check=False)
        assert rc == 1 and "not permitted" in err, f"an unprivileged abort: rc {rc}, {err!r}"
        rc, _, err = proxy.run(f"setpriv --reuid=65534 --regid=65534 --clear-groups {LZCTL} splice list", check=False)
        assert rc == 0, f"listing needs no privilege: {err!r}"
        # Requests no proxy would send are refused with a reason, and change nothing.
        r = json.loads(proxy.out(f"cd {TESTS} && python3 splice_checks.py {shlex.quote(json.dumps(spec_numbers()))}"))
        print("module answers:", r)
        ENOENT, EINVAL, EEXIST = 2, 22, 17
        assert r["pre_splice_unknown"][0] == ENOENT and "no established connection" in r["pre_splice_unknown"][1]
        assert r["pre_splice_missing"][0] == EINVAL and "4-tuples" in r["pre_splice_missing"][1]
        assert r["pre_splice_same"][0] == EINVAL and "same 4-tuple" in r["pre_splice_same"][1]
        assert r["pre_splice"][0] == 0
        assert r["pre_splice_again"][0] == EEXIST
        assert r["splice_forged_numbers"][0] == EINVAL and "does not match the socket" in r["splice_forged_numbers"][1]
        assert r["splice_bad_wscale"] == [34, "integer out of range"], "the policy bounds window scales (ERANGE)"
        assert r["abort_unknown"][0] == ENOENT
        assert r["unsplice_frozen"][0] == EINVAL and "frozen, not spliced" in r["unsplice_frozen"][1], r["unsplice_frozen"]
        assert r["unsplice_unknown"][0] == ENOENT and "no splice has this id" in r["unsplice_unknown"][1]
        assert r["unsplice_missing"][0] == EINVAL and "missing attribute: id" in r["unsplice_missing"][1]
        assert r["pre_splice_into_frozen"][0] == EINVAL and "left by unsplice" in r["pre_splice_into_frozen"][1], r["pre_splice_into_frozen"]
        assert r["configure_bad"][0] == EINVAL and "linger-ms" in r["configure_bad"][1]
        assert r["abort"][0] == 0
        assert r["connections_intact"], "the connections stopped carrying bytes after the refused requests"
        s = splice_status(proxy)["stats"]
        assert s["refused"] >= 11, s


def test_keep_alive_requests_are_each_routed_and_spliced():
    with Bench(3, name="lzspk") as b:
        proxy, b1, b2 = setup(b)
        work = b.workdir
        # Several requests on one connection (curl reuses it), alternately for b1 and
        # b2: after each response the module holds the next request for the proxy,
        # which routes it and splices the connection again.
        n = 6
        urls = " ".join(f"-o {work}/ka{i} http://{proxy.addr}/{'one' if i % 2 == 0 else 'two'}/bytes/{100_000 * (i + 1)}?seed={40 + i}"
                        for i in range(n))
        fmt = "%{num_connects} %header{x-backend}\\n"
        p = b.host_popen(f"curl -sS --max-time 120 {urls} -w '{fmt}' > {work}/ka.meta 2>&1")
        assert p.wait(timeout=120) == 0, open(f"{work}/ka.meta").read()
        for i in range(n):
            assert sha256_file(f"{work}/ka{i}") == stream_sha(40 + i, 100_000 * (i + 1)), f"request {i}: wrong bytes"
        meta = [l.split() for l in open(f"{work}/ka.meta").read().splitlines() if l.strip()]
        assert len(meta) == n, meta
        assert sum(int(m[0]) for m in meta) == 1, f"curl opened {meta} connections; keep-alive did not hold"
        assert [m[1] for m in meta] == ["b1" if i % 2 == 0 else "b2" for i in range(n)], f"routed to {meta}"
        s = splice_status(proxy)["stats"]
        log = proxy.out("cat /tmp/lzproxy.log")
        assert s["splices"] == n and s["unspliced"] == n - 1, f"{s}\n{log}"
        # A request sent while the previous response is still coming waits for it
        # and is routed on its own.
        script = (f"import socket; s=socket.create_connection(('{proxy.addr}',80)); s.settimeout(30); "
                  f"s.sendall(b'GET /one/bytes/2000000?seed=7&rate=1000000 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); out=s.recv(65536)\n"
                  f"s.sendall(b'GET /two/bytes/1000?seed=8 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
                  "try:\n    while (d := s.recv(65536)): out += d\nexcept OSError: pass\n"
                  f"open('{work}/pipe.out', 'wb').write(out)")
        b.host(["python3", "-c", script], timeout=60)
        out = open(f"{work}/pipe.out", "rb").read()
        first, _, rest = out.partition(b"\r\n\r\n")
        assert b"X-Backend: b1" in first, out[:200]
        body1, second = rest[:2_000_000], rest[2_000_000:]
        assert hashlib.sha256(body1).hexdigest() == stream_sha(7, 2_000_000), "early request: first body wrong"
        head2, _, body2 = second.partition(b"\r\n\r\n")
        assert b"X-Backend: b2" in head2 and hashlib.sha256(body2).hexdigest() == stream_sha(8, 1000), second[:200]


def test_forged_replayed_and_truncated_peer_datagrams_are_refused():
    with Bench(3, name="lzspa") as b:
        p1, p2, b1 = b.guests
        start_backend(b1, "b1")
        start_cluster_proxy(p1, "p1", [("p2", p2)], [b1, b1])
        wait_for("p1 to hold the service address", lambda: holds_vip(p1), timeout=20, step=0.1)
        start_cluster_proxy(p2, "p2", [("p1", p1)], [b1, b1])
        # Capture one of p1's datagrams to p2 on the client side of the segment (the
        # bridge floods until it learns, so capture on p2's port).
        cap = os.path.join(b.workdir, "peer.pcap")
        b.host(f"timeout 10 tcpdump -i lzt{p2.index} -n -c 1 -w {cap} 'udp and src {p1.addr} and dst port 7402'", timeout=30)
        import pcap
        payloads = [d for _, _, d in pcap.udp_payloads(cap, 7402)]
        assert payloads and len(payloads[0]) > 24, "no peer datagram captured"
        payload = payloads[0]
        # Sent from p1's own address (the sender p2 expects), so that only the content
        # is wrong.
        tests = {
            "truncated": payload[:10].hex(),
            "forged": (payload[:-1] + bytes([payload[-1] ^ 1])).hex(),
            "replayed": payload.hex(),
        }
        for what, hexdata in tests.items():
            p1.run(f"python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                   f"s.sendto(bytes.fromhex('{hexdata}'), ('{p2.addr}', 7402))\"")
        time.sleep(1.0)
        log = p2.out("cat /tmp/lzproxy.log")
        for reason in ("Truncated", "Forged", "Replayed"):
            assert f"refused: {reason}" in log, f"no {reason} refusal in p2's log:\n{log}"
        # The standby still follows the active proxy, and did not take the address.
        assert not holds_vip(p2)
