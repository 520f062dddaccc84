"""ST-TCP: a backup shadows every connection and takes over when the primary dies.

Two guests on a hub (a bridge that floods every frame): the primary and the backup,
both carrying the service address and running the same deterministic server
(lzserver.py). Clients run on the host's own TCP stack. The primary is killed
mid-transfer (its VM gets SIGKILL: no FIN, no RST reaches anyone); the backup's
heartbeats notice, the test takes over through lzctl, and every client must finish
with exactly the bytes it expected.

A capture of every frame the backup puts on the segment proves that it stayed silent
on the service address (no TCP, no ARP) until the takeover.
"""
import json
import os
import time

import pytest

import pcap
from lzbench import Bench, lzctl_path

LZCTL = lzctl_path()
LAZARUSD = LZCTL.replace("lzctl", "lazarusd")
TESTS = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(TESTS, "stclient.py")
VIP = "10.77.0.100"
PORT = 8080
HEARTBEAT_MS = 50


def backup_mac(g):
    return f"52:54:00:77:00:{11 + g.index:02x}"


def status(g):
    return json.loads(g.out(f"{LZCTL} -j shadow status"))


def wait_for(what, pred, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def setup_pair(b, primary_opts=""):
    primary, backup = b.guests
    for g in (primary, backup):
        g.insmod("lazarus_shadow")
        g.run(f"ulimit -n 8192; cd {TESTS} && setsid python3 lzserver.py {PORT} </dev/null >/tmp/lzserver.log 2>&1 &\n"
              f"for i in $(seq 100); do ss -lnt | grep -q ':{PORT} ' && break; sleep 0.1; done; ss -lnt | grep -q ':{PORT} '")
    # The backup is configured before it gets the address, so it never answers for it.
    backup.run(f"{LZCTL} shadow configure --role backup --service {VIP}:{PORT} --peer {primary.addr} "
               f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS}")
    primary.run(f"{LZCTL} shadow configure --role primary --service {VIP}:{PORT} --peer {backup.addr} "
                f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} {primary_opts}")
    for g in (primary, backup):
        g.run(f"ip addr add {VIP}/32 dev lz0")
    for g in (primary, backup):
        wait_for(f"guest {g.index} to see its peer alive", lambda g=g: status(g)["peer_state"] == "alive")
    return primary, backup


def start_lazarusd(backup, primary):
    """lazarusd on the backup, taking over by itself when the primary fails. The test
    kills the primary's VM itself, so the fence command has nothing left to do
    (`true`); in a deployment it powers the primary off. lazarusd drives both
    modules, so lazarus_core is loaded too."""
    backup.insmod("lazarus_core")
    backup.run(f"""cat > /tmp/lz.toml <<'CFG'
[shadow]
role = "backup"
service = "{VIP}:{PORT}"
peer = "{primary.addr}"
dev = "lz0"
heartbeat_ms = {HEARTBEAT_MS}
auto_takeover = true
fence = ["true"]
CFG
{LAZARUSD} --config /tmp/lz.toml --check
setsid {LAZARUSD} --config /tmp/lz.toml </dev/null >/tmp/lzd.log 2>&1 &
for i in $(seq 100); do grep -q 'failover driver watching' /tmp/lzd.log && exit 0; sleep 0.1; done
cat /tmp/lzd.log; exit 1""")


def client(b, *args):
    return b.host_popen(f"python3 {CLIENT} " + " ".join(map(str, args)), stdout=-1, stderr=-1, text=True)


def result(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"client failed ({p.returncode}): {err}"
    return json.loads(out)


def diagnose(g):
    """What a failed takeover test needs to be understood."""
    return g.out(f"{LZCTL} -j shadow status; {LZCTL} -j shadow conns; ss -tnoie; nstat -az | grep -v ' 0 '; dmesg | tail -20", timeout=30)


def check_get(r, n):
    assert r["received"] == n and r["received_sha"] == r["expected_sha"], r


def check_put(r, n):
    assert r["sent"] == n and r["server_sha"] == r["sent_sha"], r


def check_chat(r, n):
    assert r["lines"] == n and r["bad_replies"] == 0, r


def test_backup_is_silent_then_takes_over_mid_transfer():
    with Bench(2, name="lzst", hub=True) as b:
        primary, backup = setup_pair(b)

        # Phase 1, failure-free: the primary serves, the backup shadows in silence.
        cap = os.path.join(b.workdir, "backup-out.pcap")
        dump = b.host_popen(f"exec tcpdump -i lzt{backup.index} -n -U -w {cap} ether src {backup_mac(backup)}",
                            stdout=-1, stderr=-1, text=True)
        time.sleep(1.0)
        check_get(result(client(b, "get", VIP, PORT, 2_000_000, 11)), 2_000_000)
        check_chat(result(client(b, "chat", VIP, PORT, 30, "--interval", 0.01)), 30)
        check_put(result(client(b, "put", VIP, PORT, 2_000_000, 12)), 2_000_000)
        time.sleep(0.5)
        dump.terminate()
        dump.communicate(timeout=10)
        emitted = list(pcap.sources(cap))
        assert ("ip", backup.addr) in emitted, "the capture saw none of the backup's own heartbeats"
        assert [s for s in emitted if s[1] == VIP] == [], "the backup emitted frames for the service address"
        st = status(backup)
        assert st["role"] == "backup" and st["gate_open"] is False, st
        s = st["stats"]
        # Counted per buffer: with TSO and GRO one buffer carries many segments.
        assert s["swallowed"] >= 20 and s["translated_in"] >= 20, json.dumps(st)
        # "unmapped" (client segments dropped before their offsets were known) is
        # reported, not asserted: a few appear in some runs and are not explained yet.
        print("backup counters after the failure-free phase:", json.dumps(s))
        assert s["table_full"] == 0 and s["parse_errors"] == 0, json.dumps(st)
        conns = json.loads(backup.out(f"{LZCTL} -j shadow conns"))
        assert len(conns) >= 3 and all(c["mapped"] for c in conns), conns

        # The primary kept each client segment until the backup had it, and has
        # released them all.
        sp = status(primary)
        assert sp["stats"]["retained_segments"] > 0 and sp["fault_tolerant"] is True, json.dumps(sp)
        try:
            wait_for("the primary to release every kept segment", lambda: status(primary)["retained_bytes"] == 0)
        except AssertionError:
            print(diagnose(primary), diagnose(backup))
            raise

        # Phase 2: transfers paced to last several seconds; the primary dies in them
        # and lazarusd on the backup takes over by itself.
        start_lazarusd(backup, primary)
        get_n, put_n, lines = 12_000_000, 6_000_000, 150
        clients = [
            ("get", client(b, "get", VIP, PORT, get_n, 21, "--rate", 3_000_000), get_n),
            ("put", client(b, "put", VIP, PORT, put_n, 22, "--rate", 1_500_000), put_n),
            ("chat", client(b, "chat", VIP, PORT, lines, "--interval", 0.025), lines),
        ]
        time.sleep(1.5)
        killed = time.monotonic()
        primary.fence()
        wait_for("lazarusd to take over", lambda: status(backup)["gate_open"], timeout=10)
        print(f"serving again (seen by the test) {time.monotonic() - killed:.3f} s after the kill")
        log = backup.out("cat /tmp/lzd.log")
        print(log)
        assert "takeover:" in log, log
        try:
            results = {name: result(p) for name, p, _ in clients}
        except AssertionError:
            print(diagnose(backup))
            raise
        for name, _, n in clients:
            {"get": check_get, "put": check_put, "chat": check_chat}[name](results[name], n)
        print("client stalls:", {k: v["max_gap_s"] for k, v in results.items()})
        st = status(backup)
        assert st["gate_open"] is True and st["role"] == "primary", st
        assert st["stats"]["translated_out"] > 0 and st["stats"]["prompts"] >= 1, st

        # The survivor keeps serving new connections too.
        check_get(result(client(b, "get", VIP, PORT, 1_000_000, 31)), 1_000_000)


def test_backup_death_leaves_the_primary_serving_and_reported():
    with Bench(2, name="lzsb", hub=True) as b:
        primary, backup = setup_pair(b)
        n = 6_000_000
        p = client(b, "get", VIP, PORT, n, 41, "--rate", 2_000_000)
        time.sleep(1.0)
        backup.fence()
        st = wait_for("the primary to report its backup failed",
                      lambda: (s := status(primary))["peer_state"] == "failed" and s)
        check_get(result(p), n)
        assert st["role"] == "primary" and st["gate_open"] is True, st
        # Still serving, now without a backup.
        check_chat(result(client(b, "chat", VIP, PORT, 20, "--interval", 0.01)), 20)
        # Taking the service down after traffic is clean (the bench's exit check
        # fails the test on any lockdep or other kernel warning).
        primary.run(f"{LZCTL} shadow configure --role none")
        assert status(primary)["role"] == "none"


def test_missed_segments_are_resent_under_loss_on_the_backup_port():
    """Frames to the backup only are lost (3 %, dropped on its receive side): the client's
    TCP never retransmits what the primary acknowledged, so the backup must get those
    bytes from the primary's kept copies, and a later failover must find its TCP
    complete."""
    with Bench(2, name="lzsl", hub=True) as b:
        primary, backup = setup_pair(b)
        b.drop_ingress(backup, 3)
        # A long-lived interactive session spans the lossy phase and the failover.
        lines = 400
        chat = client(b, "chat", VIP, PORT, lines, "--interval", 0.02)
        put_n, get_n = 4_000_000, 2_000_000
        check_put(result(client(b, "put", VIP, PORT, put_n, 51)), put_n)
        check_get(result(client(b, "get", VIP, PORT, get_n, 52)), get_n)
        assert b.ingress_drops(backup) > 0, "nothing was dropped on the backup's port"
        sb = status(backup)["stats"]
        sp = status(primary)["stats"]
        print("backup:", json.dumps(sb), "\nprimary:", json.dumps(sp))
        assert sb["resend_requests"] > 0, "the backup never asked for a missed segment"
        assert sp["resend_requests"] > 0 and sp["resent_segments"] > 0, "the primary resent nothing"
        assert sp["retention_overflows"] == 0 and sb["progress_rejected"] == 0 and sp["progress_rejected"] == 0
        # The backup ends up with every byte: the primary releases all it kept.
        b.drop_ingress_clear(backup)
        wait_for("the backup to catch up (primary keeps nothing)",
                 lambda: status(primary)["retained_bytes"] == 0, timeout=15)
        primary.fence()
        wait_for("the backup to declare the primary failed", lambda: status(backup)["peer_state"] == "failed")
        backup.out(f"{LZCTL} -j shadow takeover")
        try:
            check_chat(result(chat), lines)
        except AssertionError:
            print(diagnose(backup))
            raise
        # What was uploaded under loss is intact on the survivor's side too.
        check_put(result(client(b, "put", VIP, PORT, 1_000_000, 53)), 1_000_000)


def test_one_sided_fin_is_held_up_to_max_delay_fin():
    with Bench(2, name="lzsf", hub=True) as b:
        max_delay = 800
        primary, backup = setup_pair(b, f"--max-delay-fin-ms {max_delay}")
        # Both programs close: the primary's FIN waits only for the backup's report,
        # never for MaxDelayFIN.
        agreed = result(client(b, "bye", VIP, PORT, 0))
        assert agreed["reply"] == "bye\n" and agreed["rest"] == 0, agreed
        assert agreed["eof_after_s"] < max_delay / 1000 * 0.9, agreed
        held_before = status(primary)["stats"]["fins_held"]
        # Only the primary's program closes: its FIN is held for MaxDelayFIN, then sent.
        backup.run("touch /tmp/lzserver-linger")
        alone = result(client(b, "bye", VIP, PORT, 0))
        assert alone["reply"] == "bye\n" and alone["rest"] == 0, alone
        assert max_delay / 1000 * 0.9 <= alone["eof_after_s"] < 5, alone
        assert alone["reply_after_s"] < max_delay / 1000 * 0.9, alone
        assert status(primary)["stats"]["fins_held"] > held_before
        print("FIN after", agreed["eof_after_s"], "s when both close,", alone["eof_after_s"], "s when only the primary does")


@pytest.mark.xfail(reason="open bug: after takeover one echo connection of a few hundred stops "
                          "answering (the client's read times out); not understood yet", strict=False)
def test_a_thousand_connections_through_one_takeover():
    with Bench(2, name="lzsm", hub=True) as b:
        primary, backup = setup_pair(b)
        n, rounds = int(os.environ.get("LZ_MANY_CONNS", "1000")), 30
        ready = os.path.join(b.workdir, "many-ready")
        many = b.host_popen(f"ulimit -n 8192; python3 {os.path.join(TESTS, 'manyclient.py')} {VIP} {PORT} {n} {rounds} "
                            f"--interval 0.2 --ready {ready}", stdout=-1, stderr=-1, text=True)
        wait_for("every connection to open", lambda: os.path.exists(ready) or many.poll() is not None, timeout=120)
        assert many.poll() is None, many.communicate()
        def mapped():
            conns = json.loads(backup.out(f"{LZCTL} -j shadow conns"))
            um = [c for c in conns if not c["mapped"]]
            print(f"backup: {len(conns)} connections, {len(conns) - len(um)} mapped; unmapped flags:",
                  sorted({c["flags"] for c in um}))
            return sum(c["mapped"] for c in conns) >= n
        try:
            wait_for(f"the backup to shadow all {n} connections", mapped, timeout=30, step=0.5)
        except AssertionError:
            print(backup.out("nstat -az | grep -E 'ListenOverflows|ListenDrops|SyncookiesSent|TCPReqQFullDrop'; ip -s link show lz0"))
            raise
        time.sleep(1.0)
        primary.fence()
        wait_for("the backup to declare the primary failed", lambda: status(backup)["peer_state"] == "failed")
        t = json.loads(backup.out(f"{LZCTL} -j shadow takeover"))
        print("takeover:", t)
        try:
            r = result(many, timeout=300)
        except AssertionError:
            print(diagnose(backup))
            raise
        st = status(backup)
        print("1000 connections:", r, "reset by the backup:", st["stats"]["conns_reset"])
        # No wrong byte, no hang. A connection whose client bytes the old primary
        # acknowledged but the backup never received (its NIC dropped them in the last
        # moments) cannot continue: it must be reset, reported, and rare.
        assert r["bad"] == 0 and r["echoed_bytes"] > 0, r
        assert r["reset"] == st["stats"]["conns_reset"], (r, st["stats"])
        assert r["reset"] <= n // 100, r
        assert t["conns"] >= n, t
        print("1000 connections:", r, "prompts:", st["stats"]["prompts"])
