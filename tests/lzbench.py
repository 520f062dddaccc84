"""The VM test bench: guests of our kernel on one Ethernet segment.

A bench owns a network namespace with a bridge (the test segment) and one tap device
per guest. Guests run under virtme-ng with TCG (KVM hangs on these machines), share the
host's root filesystem read-only, and take commands through a shared directory (see
guest-agent.sh), so the control path never crosses the network under test. The host
side of the namespace is the client network: clients run there with the host's own
TCP stack.

Everything fails loudly: a guest that does not boot, a command that times out, a
kernel warning, oops or lockdep report in any guest's log.
"""
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.77.0"
HOST_ADDR = f"{SUBNET}.1"

# Kernel log lines that mean a test must fail, wherever they appear.
KERNEL_TROUBLE = (
    "BUG:", "WARNING:", "Oops", "kernel BUG", "general protection fault",
    "Kernel panic", "possible recursive locking", "possible circular locking",
    "inconsistent lock state", "suspicious RCU usage", "INFO: task",
    "sleeping function called from invalid context", "UBSAN", "unreferenced object",
    "Call Trace", "rust_panic", "panicked at",
)


class BenchError(AssertionError):
    pass


def sh(cmd, check=True, timeout=120, **kw):
    """Run a host command; raise with its output when it fails."""
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"command failed ({p.returncode}): {cmd}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_for(what, pred, timeout=10.0, step=0.05):
    """Poll `pred` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise BenchError(f"timed out waiting for {what}")


def guest_addr(i):
    return f"{SUBNET}.{11 + i}"


class Guest:
    def __init__(self, bench, index):
        self.bench = bench
        self.index = index
        self.addr = guest_addr(index)
        self.tap = f"lzt{index}"
        self.share = os.path.join(bench.workdir, f"guest{index}")
        os.makedirs(self.share)
        self.proc = None
        self.n = 0
        self.boots = 0
        self.fenced = False
        self.log = open(os.path.join(self.share, "vng.log"), "w")

    def start(self, memory="768M", append=(), nic_opts=""):
        mac = f"52:54:00:77:00:{11 + self.index:02x}"
        qemu = (f"-netdev tap,id=lznet,ifname={self.tap},script=no,downscript=no "
                f"-device virtio-net-pci,netdev=lznet,mac={mac}{',' + nic_opts if nic_opts else ''}")
        cmd = ["ip", "netns", "exec", self.bench.ns, "vng", "--run", self.bench.kdir, "--disable-kvm",
               "--cpus", "1", "--memory", memory, "--rwdir", self.share, f"--qemu-opts={qemu}"]
        for a in append:
            cmd += [f"--append={a}"]
        cmd += ["--exec", f"{ROOT}/tests/guest-agent.sh {self.share} {self.addr}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd="/")

    def wait_ready(self, timeout=180):
        ready = os.path.join(self.share, "ready")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(ready):
                return
            if self.proc.poll() is not None:
                raise BenchError(f"guest {self.index} exited during boot (rc {self.proc.returncode}); "
                                 f"log: {self.read('vng.log')[-3000:]} agent: {self.read('agent.err')}")
            time.sleep(0.2)
        raise BenchError(f"guest {self.index} did not boot within {timeout}s; log: {self.read('vng.log')[-3000:]}")

    def read(self, name):
        try:
            with open(os.path.join(self.share, name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def run(self, script, timeout=120, check=True):
        """Run a bash script in the guest; returns (rc, stdout, stderr)."""
        if self.fenced:
            raise BenchError(f"guest {self.index} is fenced")
        n = self.n
        self.n += 1
        tmp = os.path.join(self.share, f".cmd.{n}")
        with open(tmp, "w") as f:
            f.write("set -o pipefail\n" + script + "\n")
        os.rename(tmp, os.path.join(self.share, f"cmd.{n}"))
        rc_path = os.path.join(self.share, f"rc.{n}")
        deadline = time.time() + timeout
        while not os.path.exists(rc_path):
            if self.proc.poll() is not None:
                raise BenchError(f"guest {self.index} died while running: {script}\n"
                                 f"kernel log tail: {self.read('dmesg.log')[-4000:]}")
            if time.time() > deadline:
                raise BenchError(f"guest {self.index}: timed out after {timeout}s: {script}")
            time.sleep(0.05)
        rc = int(self.read(f"rc.{n}").strip() or "255")
        out, err = self.read(f"out.{n}"), self.read(f"err.{n}")
        if check and rc != 0:
            raise BenchError(f"guest {self.index}: exit {rc}: {script}\nstdout: {out}\nstderr: {err}")
        return rc, out, err

    def out(self, script, timeout=120):
        return self.run(script, timeout=timeout)[1]

    def fence(self):
        """Kill the guest abruptly, like pulling its power: nothing more leaves it."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.fenced = True

    def restart(self, timeout=180):
        """Boot a fenced guest again, like a failed node coming back: a fresh kernel
        with nothing loaded and an empty command queue. The kernel log of the earlier
        boot is kept (dmesg.bootN.log) and still checked for trouble."""
        if self.proc and self.proc.poll() is None:
            raise BenchError(f"guest {self.index} is still running")
        self.boots += 1
        log = os.path.join(self.share, "dmesg.log")
        if os.path.exists(log):
            os.rename(log, os.path.join(self.share, f"dmesg.boot{self.boots}.log"))
        for name in os.listdir(self.share):
            if name == "ready" or re.fullmatch(r"\.?(cmd|out|err|rc)\.\d+(\.tmp)?", name):
                os.remove(os.path.join(self.share, name))
        self.n = 0
        self.fenced = False
        self.start(append=self.bench.append, nic_opts=self.bench.nic_opts)
        self.wait_ready(timeout)

    def kernel_trouble(self):
        logs = sorted(n for n in os.listdir(self.share) if n.startswith("dmesg.")) if os.path.isdir(self.share) else []
        text = "\n".join(self.read(n) for n in logs)
        return [l for l in text.splitlines() if any(t in l for t in KERNEL_TROUBLE)]

    def insmod(self, module="lazarus_core"):
        self.run(f"insmod {self.bench.modules}/{module}/{module}.ko")

    def start_nginx(self, mb, port=80):
        """Debian's nginx, unmodified, serving /tmp/www/blob (`mb` MiB) and its sha256
        in /tmp/www/blob.sha. The bytes are generated from a fixed key and given a fixed
        mtime, so every guest serves the same stream, headers included (ST-TCP needs the
        two programs to produce the same bytes; Date can differ by a second but has a
        fixed length)."""
        self.run(f"""
mkdir -p /tmp/www /tmp/ng
head -c {mb << 20} /dev/zero | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 0 -nosalt > /tmp/www/blob
(cd /tmp/www && sha256sum blob > blob.sha)
touch -d @1700000000 /tmp/www/blob /tmp/www/blob.sha
cat > /tmp/ng/nginx.conf <<'CFG'
worker_processes 1;
error_log /tmp/ng/error.log;
pid /tmp/ng/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  keepalive_requests 10000;
  keepalive_timeout 300s;
  server {{ listen {port}; root /tmp/www; }}
}}
CFG
nginx -c /tmp/ng/nginx.conf -p /tmp/ng
for i in $(seq 100); do ss -lnt | grep -q ':{port} ' && exit 0; sleep 0.1; done; cat /tmp/ng/error.log; exit 1""",
                 timeout=300)

    def start_lzproxy(self, config, listen, path="/tmp/lzproxy.toml", log="/tmp/lzproxy.log"):
        """Start lzproxy on this guest with the TOML text `config` (see lzproxy_toml),
        after checking it, and wait until it listens on `listen` ("addr:port")."""
        lzproxy = os.path.join(ROOT, "target", "release", "lzproxy")
        self.run(f"""cat > {path} <<'CFG'
{config}
CFG
{lzproxy} --config {path} --check
ulimit -n 8192
setsid {lzproxy} --config {path} </dev/null >{log} 2>&1 &
for i in $(seq 100); do ss -lnt | grep -q {shlex.quote(listen + " ")} && exit 0; sleep 0.1; done; cat {log}; exit 1""")

    def start_lazarusd(self, config, ready="failover driver watching", load_core=True):
        """Start lazarusd on this guest with the TOML text `config`, after checking it,
        and wait until its log matches the grep pattern `ready`. lazarusd drives every
        module, so lazarus_core is loaded first unless the caller has loaded it."""
        if load_core:
            self.insmod("lazarus_core")
        lazarusd = os.path.join(ROOT, "target", "release", "lazarusd")
        self.run(f"""cat > /tmp/lz.toml <<'CFG'
{config}
CFG
{lazarusd} --config /tmp/lz.toml --check
setsid {lazarusd} --config /tmp/lz.toml </dev/null >/tmp/lzd.log 2>&1 &
for i in $(seq 100); do grep -q {shlex.quote(ready)} /tmp/lzd.log && exit 0; sleep 0.1; done
cat /tmp/lzd.log; exit 1""")


class Bench:
    """N guests on one segment. Use as a context manager."""

    # virtio-net device options that make the host deliver fully checksummed,
    # unsegmented frames, so the guest verifies every incoming TCP checksum.
    NIC_NO_RX_OFFLOAD = "guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"

    def __init__(self, n, name="lzb", hub=False, append=(), nic_opts=""):
        self.kdir = os.environ.get("LAZARUS_KDIR") or ""
        self.modules = os.environ.get("LAZARUS_MODULES") or os.path.join(ROOT, "modules")
        if not self.kdir or not os.path.exists(os.path.join(self.kdir, "arch/x86/boot/bzImage")):
            raise BenchError("LAZARUS_KDIR does not point at a built kernel (run the tests through `make test`)")
        if os.geteuid() != 0:
            raise BenchError("the VM bench needs root (network namespaces and tap devices)")
        for tool in ("vng", "qemu-system-x86_64", "ip"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found (run scripts/setup.sh)")
        self.n = n
        self.hub = hub
        self.append = append
        self.nic_opts = nic_opts
        self.ns = f"{name}{os.getpid()}"
        self.workdir = tempfile.mkdtemp(prefix=f"lazarus-{self.ns}-", dir=os.environ.get("LAZARUS_BENCH_DIR"))
        self.guests = []

    def __enter__(self):
        try:
            self._net_up()
            self.guests = [Guest(self, i) for i in range(self.n)]
            for g in self.guests:
                g.start(append=self.append, nic_opts=self.nic_opts)
            for g in self.guests:
                g.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        trouble = self.close()
        if trouble and exc[0] is None:
            raise BenchError("kernel trouble in guests:\n" + "\n".join(trouble))

    def _net_up(self):
        sh(["ip", "netns", "add", self.ns])
        ns = ["ip", "netns", "exec", self.ns]
        sh(ns + ["ip", "link", "set", "lo", "up"])
        sh(ns + ["ip", "link", "add", "br0", "type", "bridge"] + (["ageing_time", "0"] if self.hub else []))
        sh(ns + ["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "br0"])
        sh(ns + ["ip", "link", "set", "br0", "up"])
        for i in range(self.n):
            tap = f"lzt{i}"
            sh(ns + ["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            sh(ns + ["ip", "link", "set", tap, "master", "br0", "up"])

    def close(self):
        """Stop every guest, collect their kernel logs' trouble lines, remove the network."""
        trouble = []
        for g in self.guests:
            if g.proc and g.proc.poll() is None:
                os.killpg(g.proc.pid, signal.SIGKILL)
                g.proc.wait(timeout=30)
            trouble += [f"guest {g.index}: {l}" for l in g.kernel_trouble()]
            g.log.close()
        sh(["ip", "netns", "del", self.ns], check=False)
        if os.environ.get("LAZARUS_KEEP_BENCH") is None and not trouble:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return trouble

    def host(self, cmd, check=True, timeout=120, **kw):
        """Run a command on the client side of the test network."""
        argv = ["ip", "netns", "exec", self.ns] + (["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd))
        return sh(argv, check=check, timeout=timeout, **kw)

    def host_popen(self, cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns, "bash", "-c", cmd], **kw)

    def netem(self, guest, spec):
        """Impair frames leaving `guest` with netem (e.g. "delay 50ms loss 1%").

        Applied inside the guest, on its NIC: the host kernels these tests run on may
        lack netem, while our test kernel has it built in."""
        guest.run(f"tc qdisc replace dev lz0 root netem {spec}")

    def netem_clear(self, guest):
        guest.run("tc qdisc del dev lz0 root", check=False)

    def drop_ingress(self, guest, percent, data_to_port=None):
        """Lose about `percent` % of the frames arriving at `guest` only, as if its own
        NIC or switch port lost them: a tc ingress filter drops them at random before
        the stack, or any netfilter hook, sees them.

        With `data_to_port`, only TCP frames to that port of 256 bytes or more are
        lost (data segments: never a SYN, a bare ACK or a short line), so that what
        is lost is exactly what a test means to lose."""
        one_in = max(1, round(100 / percent))
        if data_to_port is None:
            guest.run("tc qdisc replace dev lz0 ingress && "
                      f"tc filter replace dev lz0 parent ffff: matchall action gact pass random netrand drop {one_in}")
            return
        # First match wins: short frames (IP total length below 256) pass, then a
        # random drop of the rest to the port.
        guest.run("tc qdisc replace dev lz0 ingress && "
                  "tc filter add dev lz0 parent ffff: protocol ip prio 1 u32 match u16 0 0xff00 at 2 action gact pass && "
                  "tc filter add dev lz0 parent ffff: protocol ip prio 2 u32 match ip protocol 6 0xff "
                  f"match ip dport {data_to_port} 0xffff action gact pass random netrand drop {one_in}")

    def drop_ingress_clear(self, guest):
        guest.run("tc qdisc del dev lz0 ingress", check=False)

    def ingress_drops(self, guest):
        """Frames the ingress filter of `guest` dropped so far."""
        out = guest.out("tc -s filter show dev lz0 ingress")
        counts = re.findall(r"dropped (\d+)", out)
        if not counts:
            raise BenchError(f"no drop statistics on lz0's ingress filter in guest {guest.index}: {out!r}")
        return sum(int(c) for c in counts)

    def assert_no_kernel_trouble(self):
        trouble = [f"guest {g.index}: {l}" for g in self.guests for l in g.kernel_trouble()]
        if trouble:
            raise BenchError("kernel trouble in guests:\n" + "\n".join(trouble))


def shadow_backup_toml(vip, port, peer, heartbeat_ms, key_file=None):
    """lazarusd's configuration for an ST-TCP backup that takes over by itself when
    its primary fails. Tests kill the primary's VM themselves, so the fence command
    has nothing left to do (`true`); in a deployment it powers the primary off."""
    key = f'\nkey_file = "{key_file}"' if key_file else ""
    return f"""[shadow]
role = "backup"
service = "{vip}:{port}"
peer = "{peer}"
dev = "lz0"
heartbeat_ms = {heartbeat_ms}
auto_takeover = true
fence = ["true"]{key}"""


def lzproxy_toml(listen, backends, routes, splice=True, header_timeout_ms=None, cluster=None, proxy_extra=()):
    """An lzproxy configuration. `backends`: (name, "addr:port") pairs; `routes`:
    (path_prefix, [backend names]) or (path_prefix, [names], idempotent); `cluster`:
    None, or a dict with name, vip, heartbeat_ms, key_file and peers ((name, addr)
    pairs); `proxy_extra`: more `key = value` lines for [proxy]."""
    q = lambda v: f'"{v}"'  # noqa: E731
    lines = ["[proxy]", f"listen = {q(listen)}", f"splice = {'true' if splice else 'false'}"]
    if header_timeout_ms is not None:
        lines.append(f"header_timeout_ms = {header_timeout_ms}")
    lines += list(proxy_extra)
    if cluster:
        lines += ["", "[cluster]", f"name = {q(cluster['name'])}", f"vip = {q(cluster['vip'])}", 'dev = "lz0"',
                  f"heartbeat_ms = {cluster['heartbeat_ms']}", f"key_file = {q(cluster['key_file'])}"]
        if "missed_beats" in cluster:
            lines.append(f"missed_beats = {cluster['missed_beats']}")
        for name, addr in cluster["peers"]:
            lines += ["", "[[peer]]", f"name = {q(name)}", f"addr = {q(addr)}"]
    for name, addr in backends:
        lines += ["", "[[backend]]", f"name = {q(name)}", f"addr = {q(addr)}"]
    for prefix, names, *idempotent in routes:
        lines += ["", "[[route]]", f"path_prefix = {q(prefix)}", f"backends = [{', '.join(q(n) for n in names)}]"]
        if idempotent and idempotent[0]:
            lines.append("idempotent = true")
    return "\n".join(lines) + "\n"


def sha256_file(path):
    """SHA-256 (hex) of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def lzctl_path():
    return os.path.join(ROOT, "target", "release", "lzctl")


def quote(s):
    return shlex.quote(s)
