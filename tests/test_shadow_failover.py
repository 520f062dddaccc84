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
import hashlib
import hmac
import json
import os
import random
import shlex
import struct
import subprocess
import time

import pcap
from lzbench import Bench, BenchError, lzctl_path, sha256_file, shadow_backup_toml, wait_for

LZCTL = lzctl_path()
TESTS = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(TESTS, "stclient.py")
VIP = "10.77.0.100"
PORT = 8080
HEARTBEAT_MS = 50


def backup_mac(g):
    return f"52:54:00:77:00:{11 + g.index:02x}"


def status(g):
    return json.loads(g.out(f"{LZCTL} -j shadow status"))


def start_lzserver(g):
    g.run(f"ulimit -n 8192; cd {TESTS} && setsid python3 lzserver.py {PORT} </dev/null >/tmp/lzserver.log 2>&1 &\n"
          f"for i in $(seq 100); do ss -lnt | grep -q ':{PORT} ' && break; sleep 0.1; done; ss -lnt | grep -q ':{PORT} '")


# The cluster key every pair is configured with: the peer link is authenticated in
# every test, as in a deployment.
KEY = "lazarus test cluster key 0001"
KEY_FILE = "/tmp/lz.key"


def write_key(g, key=KEY):
    g.run(f"umask 077; printf %s '{key}' > {KEY_FILE}")


def setup_pair(b, primary_opts="", port=PORT, start_server=start_lzserver):
    primary, backup = b.guests
    for g in (primary, backup):
        g.insmod("lazarus_shadow")
        start_server(g)
        write_key(g)
    # The backup is configured before it gets the address, so it never answers for it.
    backup.run(f"{LZCTL} shadow configure --role backup --service {VIP}:{port} --peer {primary.addr} "
               f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE}")
    primary.run(f"{LZCTL} shadow configure --role primary --service {VIP}:{port} --peer {backup.addr} "
                f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE} {primary_opts}")
    for g in (primary, backup):
        g.run(f"ip addr add {VIP}/32 dev lz0")
    for g in (primary, backup):
        wait_for(f"guest {g.index} to see its peer alive", lambda g=g: status(g)["peer_state"] == "alive")
    return primary, backup


METRICS = "127.0.0.1:9477"


def start_lazarusd(backup, primary):
    """lazarusd on the backup, taking over by itself when the primary fails, with its
    Prometheus endpoint on."""
    toml = shadow_backup_toml(VIP, PORT, primary.addr, HEARTBEAT_MS, key_file=KEY_FILE)
    backup.start_lazarusd(f'{toml}\n\n[metrics]\nlisten = "{METRICS}"')


def metrics(g):
    """The samples lazarusd's /metrics serves on `g`, by series."""
    text = g.out(f"curl -sS --max-time 5 http://{METRICS}/metrics")
    return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l and not l.startswith("#")}


def client(b, *args):
    return b.host_popen(f"python3 {CLIENT} " + " ".join(map(str, args)), stdout=-1, stderr=-1, text=True)


def result(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"client failed ({p.returncode}): {err}"
    return json.loads(out)


def diagnose(g):
    """What a failed takeover test needs to be understood."""
    return g.out(f"dmesg | grep -i lazarus | tail -30; {LZCTL} -j shadow status; {LZCTL} -j shadow conns; ss -tnoie; "
                 "nstat -az | grep -v ' 0 '", timeout=30)


def kill_seed():
    """The seed of a test's random kill point: LZ_SEED replays a printed one."""
    return int(os.environ.get("LZ_SEED") or random.randrange(1 << 30))


def check_get(r, n):
    assert r["received"] == n and r["received_sha"] == r["expected_sha"], r


def check_put(r, n):
    assert r["sent"] == n and r["server_sha"] == r["sent_sha"], r


def check_chat(r, n):
    assert r["lines"] == n and r["bad_replies"] == 0, r


def start_transfers(b, seed, get_n=9_000_000, put_n=4_500_000, lines=120):
    """A paced download, a paced upload and an interactive session, each lasting about
    3 s (seeds `seed` and `seed + 1`): what the failover tests kill a node in."""
    return [
        ("get", client(b, "get", VIP, PORT, get_n, seed, "--rate", 3_000_000), get_n),
        ("put", client(b, "put", VIP, PORT, put_n, seed + 1, "--rate", 1_500_000), put_n),
        ("chat", client(b, "chat", VIP, PORT, lines, "--interval", 0.025), lines),
    ]


def fail_over(dead, survivor):
    """Kill `dead`'s VM and, once `survivor`'s heartbeats say so, take over there by
    hand (no lazarusd). Returns the takeover's reply."""
    dead.fence()
    wait_for(f"guest {survivor.index} to see its peer fail", lambda: status(survivor)["peer_state"] == "failed")
    t = json.loads(survivor.out(f"{LZCTL} -j shadow takeover"))
    print("takeover:", t)
    return t


def check_transfers(transfers, *diagnosed):
    """Every byte of every transfer arrived; on a failure the nodes `diagnosed` are
    described first. Returns the results by name."""
    try:
        results = {name: result(p) for name, p, _ in transfers}
    except AssertionError:
        print(*(diagnose(g) for g in diagnosed))
        raise
    for name, _, n in transfers:
        {"get": check_get, "put": check_put, "chat": check_chat}[name](results[name], n)
    print("client stalls:", {k: v["max_gap_s"] for k, v in results.items()})
    return results


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
        clients = start_transfers(b, 21, 12_000_000, 6_000_000, 150)
        # At a random point of the transfers (each lasts about 4 s); the seed is
        # printed so that a failure can be replayed. Not in the first second: the
        # backup's guest misses frames of the opening bursts now and then, which the
        # primary resends within a few heartbeats; a primary that dies before is a
        # second failure, which loses the bytes it had acknowledged (the reset case
        # of docs/failure-model.md), not what this test is about.
        seed = kill_seed()
        kill_at = random.Random(seed).uniform(1.0, 3.0)
        print(f"seed {seed}: killing the primary {kill_at:.2f} s into the transfers")
        time.sleep(kill_at)
        killed = time.monotonic()
        primary.fence()
        wait_for("lazarusd to take over", lambda: status(backup)["gate_open"], timeout=10)
        print(f"serving again (seen by the test) {time.monotonic() - killed:.3f} s after the kill")
        log = backup.out("cat /tmp/lzd.log")
        print(log)
        assert "takeover:" in log, log
        check_transfers(clients, backup)
        st = status(backup)
        assert st["gate_open"] is True and st["role"] == "primary", st
        assert st["stats"]["translated_out"] > 0 and st["stats"]["prompts"] >= 1, st
        # What an operator's Prometheus sees: the failover, and the module's own counters.
        m = metrics(backup)
        assert m["lazarus_failovers_total"] == 1 and m["lazarus_failovers_failed_total"] == 0, m
        assert 0 < m["lazarus_last_failover_seconds"] < 5, m
        assert m['lazarus_shadow_role{role="primary"}'] == 1 and m["lazarus_shadow_gate_open"] == 1, m
        assert m["lazarus_shadow_prompts_total"] >= st["stats"]["prompts"], m
        assert m["lazarus_shadow_peer_link_authenticated"] == 1, m
        assert m['lazarus_module_up{module="lazarus_shadow"}'] == 1, m

        # The survivor keeps serving new connections too.
        check_get(result(client(b, "get", VIP, PORT, 1_000_000, 31)), 1_000_000)


def test_planned_switchover_loses_no_connection():
    """Planned maintenance: `lzctl shadow step-down` on the primary silences it and asks
    the backup to take over; lazarusd on the backup waits until it has every client
    byte the primary had and takes over, with no fence. Transfers running through it
    get every byte with no reset, and the old primary sends nothing for the service
    from the step-down on. A step-down nobody answers ends by itself and the primary
    serves again; `takeover --planned` refuses when the primary has not stepped down."""
    with Bench(2, name="lzsw", hub=True) as b:
        primary, backup = setup_pair(b)

        # Refusals first, and a step-down nobody answers: the chat running through it
        # only pauses.
        rc, out, err = backup.run(f"{LZCTL} shadow takeover --planned", check=False)
        assert rc == 4 and "has not stepped down" in err, (rc, out, err)
        chat = client(b, "chat", VIP, PORT, 80, "--interval", 0.025)
        time.sleep(0.5)
        t0 = time.monotonic()
        rc, out, err = primary.run(f"{LZCTL} shadow step-down --timeout-ms 1000", check=False, timeout=30)
        print(f"unanswered step-down returned after {time.monotonic() - t0:.2f} s")
        assert rc == 4 and "did not take over within 1000 ms" in err, (rc, out, err)
        assert status(primary)["stepping_down"] is False
        assert "step-down ended: the backup did not take over in time" in primary.out("dmesg")
        r = result(chat)
        check_chat(r, 80)
        print("chat through an unanswered step-down, longest gap:", r["max_gap_s"])

        # The switchover, in the middle of transfers, answered by lazarusd.
        start_lazarusd(backup, primary)
        cap = os.path.join(b.workdir, "old-primary.pcap")
        dump = b.host_popen(f"exec tcpdump -i lzt{primary.index} -n -U -w {cap} "
                            f"ether src {backup_mac(primary)} and src host {VIP} and tcp src port {PORT}",
                            stdout=-1, stderr=-1, text=True)
        time.sleep(0.5)
        clients = start_transfers(b, 41, 12_000_000, 6_000_000, 150)
        time.sleep(1.5)
        primary.run(f"({LZCTL} -j shadow step-down > /tmp/sd.out 2>&1; echo $? > /tmp/sd.rc) </dev/null >/dev/null 2>&1 &")
        wait_for("the primary to step down", lambda: status(primary)["stepping_down"], timeout=10)
        silent_from = time.time()
        wait_for("the step-down to finish", lambda: primary.out("cat /tmp/sd.rc 2>/dev/null").strip() != "", timeout=20)
        sd = primary.out("cat /tmp/sd.out").strip()
        print("step-down:", sd)
        assert primary.out("cat /tmp/sd.rc").strip() == "0", sd
        assert json.loads(sd)["handed_over"] is True, sd
        rc, again, err = primary.run(f"{LZCTL} shadow step-down --no-wait", check=False)
        assert rc == 1 and "stepped down already" in err, (rc, again, err)
        log = backup.out("cat /tmp/lzd.log")
        print(log)
        assert "planned takeover: caught up after" in log, log

        check_transfers(clients, backup, primary)

        sb, sp = status(backup), status(primary)
        assert sb["gate_open"] is True and sb["role"] == "primary", sb
        assert sb["stats"]["conns_reset"] == 0, sb["stats"]
        m = metrics(backup)
        assert m["lazarus_planned_switchovers_total"] == 1 and m["lazarus_failovers_total"] == 0, m
        assert sp["handed_over"] is True and sp["stepping_down"] is True, sp
        assert sp["stats"]["swallowed"] > 0, sp["stats"]
        # The old primary retired its copies of the connections, and nothing of the
        # service left it after the step-down.
        assert primary.out(f"ss -Htn state established '( sport = :{PORT} )'").strip() == "", \
            primary.out(f"ss -tn '( sport = :{PORT} )'")
        dump.terminate()
        dump.communicate(timeout=10)
        stamps = [float(l.split()[0]) for l in b.host(f"tcpdump -r {cap} -n -tt 2>/dev/null").stdout.splitlines() if l]
        late = [ts for ts in stamps if ts > silent_from]
        assert stamps and not late, f"{len(late)} service frames from the old primary after its step-down ({len(stamps)} in all)"

        # New connections go to the new primary.
        check_get(result(client(b, "get", VIP, PORT, 1_000_000, 43)), 1_000_000)


def test_a_failed_primary_comes_back_as_backup_and_the_pair_is_protected_again():
    """The cycle an operator goes through: the primary dies and the backup takes over;
    the failed node boots again and joins as the new backup; once the connections the
    survivor took over have ended, lazarusd configures the survivor afresh as primary
    (its file says so); and the pair survives the next failure, of the other node
    this time."""
    with Bench(2, name="lzrj", hub=True) as b:
        first, second = setup_pair(b)
        chat = client(b, "chat", VIP, PORT, 600, "--interval", 0.025)
        get = client(b, "get", VIP, PORT, 6_000_000, 51, "--rate", 3_000_000)
        time.sleep(1.0)
        fail_over(first, second)
        check_get(result(get), 6_000_000)
        st = status(second)
        assert st["took_over"] is True and st["translating"] >= 1, st
        # The chat still needs the survivor's translation: deconfiguring is refused.
        rc, out, err = second.run(f"{LZCTL} shadow configure --role none", check=False)
        assert rc == 1 and "still open" in err, (rc, out, err)
        # The operator's file now makes the survivor the primary, with the failed node
        # as its backup: lazarusd configures it afresh once the chat has ended.
        second.start_lazarusd(f'[shadow]\nrole = "primary"\nservice = "{VIP}:{PORT}"\npeer = "{first.addr}"\n'
                              f'dev = "lz0"\nheartbeat_ms = {HEARTBEAT_MS}\nkey_file = "{KEY_FILE}"',
                              ready="re-arm as primary waits for")

        # The failed node boots again and joins as backup, before it has the address.
        first.restart()
        first.insmod("lazarus_shadow")
        start_lzserver(first)
        write_key(first)
        first.run(f"{LZCTL} shadow configure --role backup --service {VIP}:{PORT} --peer {second.addr} "
                  f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE}")
        first.run(f"ip addr add {VIP}/32 dev lz0")
        check_chat(result(chat), 600)
        wait_for("lazarusd to re-arm the survivor", lambda: "shadow: re-armed" in second.out("cat /tmp/lzd.log"), timeout=30)
        print(second.out("cat /tmp/lzd.log"))
        st = status(second)
        assert st["role"] == "primary" and st["took_over"] is False and st["gate_open"], st
        for g in (first, second):
            wait_for(f"guest {g.index} to see its peer alive", lambda g=g: status(g)["peer_state"] == "alive")
        wait_for("the new primary to be fault-tolerant", lambda: status(second)["fault_tolerant"], timeout=10)

        # Protected again: the new primary dies in the middle of transfers.
        clients = start_transfers(b, 52)
        time.sleep(1.5)
        t = fail_over(second, first)
        assert t["conns"] >= 3, t
        check_transfers(clients, first)
        st = status(first)
        assert st["role"] == "primary" and st["gate_open"] and st["stats"]["conns_reset"] == 0, st


MCAST_MAC = "01:00:5e:4d:00:64"


def test_a_multicast_mac_deployment_needs_no_hub():
    """The service address resolves to a multicast MAC (a static neighbour entry on
    the clients' side, as a router would have) that both nodes listen on, and the
    segment is an ordinary learning bridge: every client frame reaches both nodes,
    but the backup never sees the primary's own segments. Both nodes' TCP accept the
    multicast-addressed frames, the backup learns each connection's offsets from the
    client's handshake ACK, and a failover keeps every byte."""
    with Bench(2, name="lzmc", hub=False) as b:
        b.host("ip link set br0 type bridge mcast_snooping 0")
        b.host(f"ip neigh replace {VIP} lladdr {MCAST_MAC} dev br0 nud permanent")
        for g in b.guests:
            g.run(f"ip maddr add {MCAST_MAC} dev lz0")
        primary, backup = setup_pair(b)
        cap = os.path.join(b.workdir, "backup-port.pcap")
        dump = b.host_popen(f"exec tcpdump -i lzt{backup.index} -n -U -e -w {cap} tcp port {PORT}",
                            stdout=-1, stderr=-1, text=True)
        time.sleep(0.5)
        clients = start_transfers(b, 61)
        time.sleep(1.5)
        dump.terminate()
        dump.communicate(timeout=10)
        frames = b.host(f"tcpdump -r {cap} -n -e 2>/dev/null").stdout.splitlines()
        to_vip = [f for f in frames if f" > {VIP}.{PORT}:" in f]
        from_primary = [f for f in frames if f" {VIP}.{PORT} > " in f]
        # From the clients, to the multicast MAC; the only others are client segments
        # the primary resent to the backup's own MAC when it asked.
        odd = [f for f in to_vip if MCAST_MAC not in f]
        assert to_vip and all(f.split()[1] == backup_mac(primary) for f in odd), odd[:3]
        print(f"{len(to_vip)} client frames on the backup's port, {len(odd)} of them resent by the primary")
        assert not from_primary, f"the backup's port saw the primary's segments: {from_primary[:3]}"
        t = fail_over(primary, backup)
        assert t["conns"] >= 3, t
        check_transfers(clients, backup)
        st = status(backup)
        assert st["stats"]["translated_in"] > 0 and st["stats"]["conns_reset"] == 0, st["stats"]
        check_get(result(client(b, "get", VIP, PORT, 1_000_000, 63)), 1_000_000)


NGINX_MB = 48


def start_nginx(g):
    g.start_nginx(NGINX_MB)


def test_unmodified_nginx_download_and_keepalive_survive_the_primary():
    """Debian's nginx on both nodes; curl on the host downloads a file at a paced rate
    and, on a second connection, fetches a small object over keep-alive, while the
    primary is killed at a random point."""
    seed = kill_seed()
    rng = random.Random(seed)
    with Bench(2, name="lzng", hub=True) as b:
        primary, backup = setup_pair(b, port=80, start_server=start_nginx)
        want = primary.out("sha256sum /tmp/www/blob").split()[0]
        assert backup.out("sha256sum /tmp/www/blob").split()[0] == want
        backup.start_lazarusd(shadow_backup_toml(VIP, 80, primary.addr, HEARTBEAT_MS, key_file=KEY_FILE))
        out = os.path.join(b.workdir, "blob")
        rate = 4 << 20
        dl = b.host_popen(f"curl -sS --limit-rate {rate} -o {out} -w '%{{http_code}} %{{size_download}}' "
                          f"http://{VIP}/blob", stdout=-1, stderr=-1, text=True)
        # A keep-alive session: one connection, many requests, before, across and
        # after the failure.
        ka = b.host_popen(f"for i in $(seq 60); do echo url = http://{VIP}/blob.sha; echo output = /dev/null; done "
                          f"| curl -sS -K - -w '%{{http_code}} %{{num_connects}}\\n' --rate 10/s",
                          stdout=-1, stderr=-1, text=True)
        kill_at = rng.uniform(1.0, NGINX_MB * (1 << 20) / rate * 0.6)
        print(f"seed {seed}: killing the primary {kill_at:.2f} s into the download")
        time.sleep(kill_at)
        primary.fence()
        wait_for("lazarusd to take over", lambda: status(backup)["gate_open"], timeout=10)
        o, e = dl.communicate(timeout=300)
        assert dl.returncode == 0, (o, e, diagnose(backup))
        code, size = o.split()
        assert code == "200" and int(size) == NGINX_MB << 20, o
        assert sha256_file(out) == want
        o, e = ka.communicate(timeout=120)
        assert ka.returncode == 0, (o, e)
        replies = o.split("\n")[:-1]
        assert len(replies) == 60 and all(r.startswith("200 ") for r in replies), o
        # One connection carried them all: none was reopened after the failure.
        assert sum(int(r.split()[1]) for r in replies) == 1, o
        st = status(backup)
        assert st["stats"]["prompts"] >= 1 and st["stats"]["conns_reset"] == 0, st


def seal(key, sender_role, msg, seq):
    """A datagram sealed as the module seals it (rust/proto/src/auth.rs), written
    independently here: HMAC-SHA256 over "LZA1", the sender's role, the message and the
    sequence number, truncated to 16 bytes."""
    s = struct.pack(">Q", seq)
    tag = hmac.new(key, b"LZA1" + bytes([sender_role]) + msg + s, hashlib.sha256).digest()[:16]
    return msg + s + tag


def test_peer_link_rejects_forged_replayed_truncated_and_stale_datagrams():
    """Both nodes share a cluster key. Datagrams sent to the backup's heartbeat port
    from the primary's own address (so that only the authentication can tell them
    apart): a captured beat sent again, the same with one bit flipped, one cut short, a
    beat sealed with the right key but stamped two minutes ahead, and one sealed for
    the wrong role. Each is refused and counted by reason, and the backup keeps
    seeing its primary alive. Then the primary gets another key: the backup refuses
    everything it sends and declares it failed."""
    with Bench(2, name="lzau", hub=True) as b:
        cap = os.path.join(b.workdir, "beats.pcap")
        dump = b.host_popen(f"exec tcpdump -i br0 -n -U -w {cap} udp port 7401", stdout=-1, stderr=-1, text=True)
        primary, backup = setup_pair(b)
        fp = {g.index: status(g)["key_fingerprint"] for g in (primary, backup)}
        assert fp[0] == fp[1] != 0, fp
        assert "authenticated, key fingerprint" in backup.out(f"{LZCTL} shadow status")
        time.sleep(0.5)
        dump.terminate()
        dump.communicate(timeout=10)
        beats = [p for src, dst, p in pcap.udp_payloads(cap, 7401)
                 if src == primary.addr and dst == backup.addr and p[:4] == b"LZHB"]
        assert beats, "no heartbeat from the primary was captured"
        beat = beats[-1]
        assert len(beat) == 24 + 24, f"a sealed beat is 24 bytes and a 24-byte trailer, got {len(beat)}"
        flipped = bytearray(beat)
        flipped[10] ^= 0x01
        future = time.time_ns() + 120 * 10**9
        sends = {
            "replayed": beat,
            "forged": bytes(flipped),
            "truncated": beat[:20],
            "stale": seal(KEY.encode(), 1, beat[:24], future),
            "reflected": seal(KEY.encode(), 2, beat[:24], time.time_ns()),
        }
        before = status(backup)["stats"]
        script = "import socket, sys\n" \
                 "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
                 f"s.bind(('{primary.addr}', 0))\n" \
                 "for h in sys.argv[1:]:\n" \
                 f"    s.sendto(bytes.fromhex(h), ('{backup.addr}', 7401))\n"
        primary.run(f"python3 -c {shlex.quote(script)} " + " ".join(d.hex() for d in sends.values()))
        time.sleep(0.5)
        after = status(backup)
        d = {k: after["stats"][k] - before[k] for k in ("auth_replayed", "auth_forged", "auth_truncated", "auth_stale")}
        print("refused by reason:", d)
        # Reflected (sealed as if by a backup) and flipped are both wrong tags.
        assert d == {"auth_replayed": 1, "auth_forged": 2, "auth_truncated": 1, "auth_stale": 1}, d
        assert after["peer_state"] == "alive", after
        assert after["stats"]["beats_received"] > before["beats_received"], "genuine beats still arrive"

        # The primary with another key: nothing it sends is accepted any more.
        primary.run(f"{LZCTL} shadow configure --role none")
        write_key(primary, "a different cluster key, 32 bytes")
        primary.run(f"{LZCTL} shadow configure --role primary --service {VIP}:{PORT} --peer {backup.addr} "
                    f"--dev lz0 --heartbeat-ms {HEARTBEAT_MS} --key-file {KEY_FILE}")
        assert status(primary)["key_fingerprint"] not in (0, fp[1])
        forged = status(backup)["stats"]["auth_forged"]
        wait_for("the backup to declare the primary failed", lambda: status(backup)["peer_state"] == "failed", timeout=5)
        assert status(backup)["stats"]["auth_forged"] > forged + 3
        # A key of the wrong length is refused with a reason, and nothing changes.
        primary.run("umask 077; printf short > /tmp/short.key")
        rc, out, err = primary.run(f"{LZCTL} shadow configure --role none; {LZCTL} shadow configure --role primary "
                                   f"--service {VIP}:{PORT} --peer {backup.addr} --dev lz0 --key-file /tmp/short.key",
                                   check=False)
        assert rc == 2 and "16 to 64 bytes, not 5" in err, (rc, out, err)
        assert status(primary)["role"] == "none"


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
    """Client data segments to the backup only are lost (3 %, dropped on its receive
    side): the client's TCP never retransmits what the primary acknowledged, so the
    backup must get those bytes from the primary's kept copies, and a later failover
    must find its TCP complete. (Handshakes are not lost here: a backup that misses a
    connection's SYN does not shadow it, which the primary reports as unprotected.)"""
    with Bench(2, name="lzsl", hub=True) as b:
        primary, backup = setup_pair(b)
        b.drop_ingress(backup, 3, data_to_port=PORT)
        # A long-lived interactive session spans the lossy phase and the failover. Its
        # lines come 0.1 s apart, longer than a report interval, so that between two
        # of them the primary can have released everything it kept.
        lines = 200
        chat = client(b, "chat", VIP, PORT, lines, "--interval", 0.1)
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
        try:
            wait_for("the backup to catch up (primary keeps nothing)",
                     lambda: status(primary)["retained_bytes"] == 0, timeout=15)
        except BenchError:
            print("primary:", diagnose(primary), "\nbackup:", diagnose(backup))
            raise
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


def test_one_sided_fin_and_rst_are_held_up_to_max_delay_fin():
    with Bench(2, name="lzsf", hub=True) as b:
        max_delay = 800
        primary, backup = setup_pair(b, f"--max-delay-fin-ms {max_delay}")
        # Both programs close: the primary's FIN waits only for the backup's report,
        # never for MaxDelayFIN.
        agreed = result(client(b, "bye", VIP, PORT, 0))
        assert agreed["reply"] == "bye\n" and agreed["rest"] == 0, agreed
        assert agreed["eof_after_s"] < max_delay / 1000 * 0.9, agreed
        # Both programs reset: the same for the RST.
        agreed_rst = result(client(b, "abort", VIP, PORT, 0))
        assert agreed_rst["reply"] == "abort\n" and agreed_rst["end"] == "reset", agreed_rst
        assert agreed_rst["end_after_s"] < max_delay / 1000 * 0.9, agreed_rst
        held_before = status(primary)["stats"]["fins_held"]
        rsts_before = status(primary)["stats"]["rsts_held"]
        # Only the primary's program closes: its FIN is held for MaxDelayFIN, then sent.
        backup.run("touch /tmp/lzserver-linger")
        alone = result(client(b, "bye", VIP, PORT, 0))
        assert alone["reply"] == "bye\n" and alone["rest"] == 0, alone
        assert max_delay / 1000 * 0.9 <= alone["eof_after_s"] < 5, alone
        assert alone["reply_after_s"] < max_delay / 1000 * 0.9, alone
        assert status(primary)["stats"]["fins_held"] > held_before
        print("FIN after", agreed["eof_after_s"], "s when both close,", alone["eof_after_s"], "s when only the primary does")
        # Only the primary's program resets: TCP never sends an RST again, so the
        # primary keeps the segment itself for MaxDelayFIN and then sends it.
        alone_rst = result(client(b, "abort", VIP, PORT, 0))
        assert alone_rst["reply"] == "abort\n" and alone_rst["end"] == "reset", alone_rst
        assert max_delay / 1000 * 0.9 <= alone_rst["end_after_s"] < 5, alone_rst
        assert status(primary)["stats"]["rsts_held"] > rsts_before
        print("RST after", agreed_rst["end_after_s"], "s when both reset,", alone_rst["end_after_s"],
              "s when only the primary does")


def test_a_thousand_connections_through_one_takeover():
    with Bench(2, name="lzsm", hub=True) as b:
        primary, backup = setup_pair(b)
        # Rounds of one echo per connection, half a second apart; the primary dies
        # during the first ones and at least three must follow the takeover. A round
        # of 1000 echoes takes a few seconds on the emulated CPUs; a read may wait
        # 120 s before its connection counts as hung.
        n, rounds = int(os.environ.get("LZ_MANY_CONNS", "1000")), 16
        ready = os.path.join(b.workdir, "many-ready")
        # Headers only, so that a connection that goes wrong can be followed afterwards.
        cap = os.path.join(b.workdir, "many.pcap")
        dump = b.host_popen(f"exec tcpdump -i br0 -n -U -s 96 -w {cap} tcp port {PORT}", stdout=-1, stderr=-1, text=True)
        many = b.host_popen(f"ulimit -n 8192; python3 {os.path.join(TESTS, 'manyclient.py')} {VIP} {PORT} {n} {rounds} "
                            f"--interval 0.5 --timeout 120 --ready {ready}", stdout=-1, stderr=-1, text=True)
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
        took_over = time.time()
        print("takeover:", t)
        try:
            r = result(many, timeout=900)
        except (AssertionError, subprocess.TimeoutExpired):
            many.kill()
            print("client:", many.communicate())
            print(diagnose(backup))
            raise
        st = status(backup)
        print("1000 connections:", r, "reset by the backup:", st["stats"]["conns_reset"])
        dump.terminate()
        dump.wait()
        for h in r["hung"][:3]:
            port = h["local_port"]
            print("hung:", h)
            print(backup.out(f"ss -tnoie dport = :{port}; {LZCTL} shadow conns | grep -E '^(CLIENT|[0-9.]+:{port} )' || true"))
            print(b.host(f"tcpdump -r {cap} -n -tt port {port} 2>/dev/null | tail -40", check=False))
        assert not r["hung"], r["hung"]
        # No wrong byte, no hang. A connection whose client bytes the old primary
        # acknowledged but the backup never received (its NIC dropped them in the last
        # moments) cannot continue: it must be reset, reported, and rare.
        assert r["bad"] == 0 and r["echoed_bytes"] > 0, r
        assert r["reset"] == st["stats"]["conns_reset"], (r, st["stats"])
        assert r["reset"] <= n // 100, r
        assert t["conns"] >= n, t
        after = sum(1 for at in r["round_began"] if at > took_over)
        assert after >= 3, f"only {after} rounds followed the takeover: {r}"
        print("prompts:", st["stats"]["prompts"], "rounds after the takeover:", after)
