"""Backdoors: a monitor reads a target's Sensor Box with one-sided RDMA READ over
soft-RoCE (rdma_rxe on the test network) and judges every sensor.

The target's kernel feeds its own sensors (timer ticks, context switches, tasks,
forks, OOM kills); the test adds one sensor of each class through netlink and
drives it across its limit, so that each class's verdict is seen to turn to an
alarm and back. Only configured monitors may connect.
"""
import json
import shlex
import time

from lzbench import Bench, lzctl_path, wait_for

LZCTL = lzctl_path()
NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all"
KERNEL_SENSORS = {1, 2, 3, 4, 5, 6}


def rdma_up(g):
    """Soft-RoCE on the guest's test NIC, then the module."""
    g.run("modprobe crc32_generic 2>/dev/null; modprobe rdma_rxe && rdma link add rxe0 type rxe netdev lz0 && "
          "for i in $(seq 100); do rdma link show rxe0/1 | grep -q 'state ACTIVE' && break; sleep 0.1; done; "
          "rdma link show rxe0/1 | grep 'state ACTIVE'")
    g.insmod("lazarus_backdoor")


def status(g):
    return json.loads(g.out(f"{LZCTL} -j backdoor status"))


def targets(g):
    return json.loads(g.out(f"{LZCTL} -j backdoor sensors"))


def sensors(g):
    """The monitor's one target's sensors by id, when it is connected."""
    ts = targets(g)
    if len(ts) != 1 or ts[0]["state"] != "connected":
        return None
    return {s["id"]: s for s in ts[0]["sensors"]}


def verdict_of(g, sid):
    s = sensors(g)
    return s and sid in s and s[sid]["verdict"]


def set_sensor(g, sid, value, extra=""):
    g.run(f"{LZCTL} backdoor sensor-set --id {sid} --value {value} {extra}")


def test_a_monitor_reads_a_targets_sensors_over_rdma_and_judges_each_class():
    with Bench(2, name="lzbd") as b:
        target, monitor = b.guests
        for g in b.guests:
            rdma_up(g)
        # Sensors of the target's programs, one of each class.
        # (An lzctl run takes up to a second in these emulated guests: the progress
        # limit leaves room for that between two updates.)
        set_sensor(target, 1000, 1, "--class progress --limit 3000")
        set_sensor(target, 1001, 5, "--class level --limit 10")
        set_sensor(target, 1002, 0, "--class pressure --limit 50")

        # A target that accepts another monitor only refuses this one.
        target.run(f"{LZCTL} backdoor configure --role target --peer 10.77.0.99 --interval-ms 20")
        monitor.run(f"{LZCTL} backdoor configure --role monitor --peer {target.addr} --interval-ms 50")
        wait_for("the target to refuse an unlisted monitor", lambda: status(target)["stats"]["refused"] > 0, timeout=60)
        assert sensors(monitor) is None, targets(monitor)
        assert status(target)["stats"]["accepted"] == 0

        # Listed: the monitor connects and reads every sensor.
        target.run(f"{LZCTL} backdoor configure --role target --peer {monitor.addr} --interval-ms 20")
        first = wait_for("the monitor to read the target's box",
                         lambda: (s := sensors(monitor)) and all(v["verdict"] != "learning" for v in s.values()) and s,
                         timeout=90)
        assert set(first) == KERNEL_SENSORS | {1000, 1001, 1002}, first
        assert first[3]["class"] == "level" and 10 < first[3]["value"] < first[3]["limit"], first[3]
        time.sleep(1.0)
        later = sensors(monitor)
        assert later[1]["value"] > first[1]["value"], "the target's timer ticks move in the box"
        assert later[2]["value"] > first[2]["value"], "and its context switches"
        for sid in KERNEL_SENSORS:
            assert later[sid]["verdict"] == "ok", later[sid]

        # Progress: it has not moved since it was made, so it is an alarm by now; ok
        # again while the program counts, an alarm once it stops for longer than the
        # limit (3 s).
        wait_for("a progress sensor that never moved to alarm", lambda: verdict_of(monitor, 1000) == "alarm", timeout=20)
        target.run(f"setsid bash -c 'for i in $(seq 2 8); do {LZCTL} backdoor sensor-set --id 1000 --value $i; sleep 0.1; done' "
                   "</dev/null >/tmp/counting.log 2>&1 &")
        # (An alarm stays shown five seconds after it last held.)
        try:
            wait_for("a counting progress sensor to be ok", lambda: verdict_of(monitor, 1000) == "ok", timeout=10)
        except AssertionError:
            print("monitor:", targets(monitor), "\ncounting:", target.out("cat /tmp/counting.log; dmesg | tail -5"))
            raise
        wait_for("a stalled progress sensor to alarm", lambda: verdict_of(monitor, 1000) == "alarm", timeout=40)

        # Level: above its limit is an alarm, at it is fine.
        assert verdict_of(monitor, 1001) == "ok"
        set_sensor(target, 1001, 11)
        wait_for("a level sensor above its limit to alarm", lambda: verdict_of(monitor, 1001) == "alarm", timeout=20)
        set_sensor(target, 1001, 10)
        wait_for("the level sensor to recover", lambda: verdict_of(monitor, 1001) == "ok", timeout=20)

        # Pressure: 5000 events at once is far above 50 a second; none after is fine.
        set_sensor(target, 1002, 5000)
        wait_for("a pressure sensor to alarm", lambda: verdict_of(monitor, 1002) == "alarm", timeout=20)
        wait_for("the pressure sensor to recover", lambda: verdict_of(monitor, 1002) == "ok", timeout=20)

        # A limit that changes lays the box out again; the monitor follows.
        gen = targets(monitor)[0]["generation"]
        set_sensor(target, 1001, 10, "--limit 5")
        wait_for("a changed limit to reach the monitor",
                 lambda: (s := sensors(monitor)) and s[1001]["limit"] == 5 and targets(monitor)[0]["generation"] != gen,
                 timeout=20)
        wait_for("the new limit to be judged", lambda: verdict_of(monitor, 1001) == "alarm", timeout=20)

        ms, ts = status(monitor)["stats"], status(target)["stats"]
        print("monitor:", ms, "target:", ts)
        assert ms["reads"] > 50 and ms["read_errors"] == 0, ms
        assert ms["alarms"] >= 4, ms
        assert ts["accepted"] >= 1 and ts["refused"] >= 1, ts

        # Taking the roles down and unloading with a live connection is clean (the
        # bench fails the test on any kernel warning).
        monitor.run(f"{LZCTL} backdoor configure --role none")
        target.run(f"{LZCTL} backdoor configure --role none")
        monitor.run(f"{LZCTL} backdoor configure --role monitor --peer {target.addr} --interval-ms 50")
        target.run(f"{LZCTL} backdoor configure --role target --peer {monitor.addr}")
        wait_for("the monitor to connect again", lambda: sensors(monitor) is not None, timeout=60)
        target.run("rmmod lazarus_backdoor")
        wait_for("the monitor to see the target gone", lambda: targets(monitor)[0]["state"] != "connected", timeout=30)
        monitor.run("rmmod lazarus_backdoor")


def test_bad_backdoor_requests_get_clean_errors():
    with Bench(1, name="lzbb") as b:
        g = b.guests[0]
        g.insmod("lazarus_backdoor")
        cases = [
            ("unprivileged", f"{NOBODY} {LZCTL} backdoor configure --role target --peer 10.77.0.12", 1, "Operation not permitted"),
            ("a target without monitors", f"{LZCTL} raw --family backdoor --cmd 2 --attr 2:01 --attr 3:2f1d", 1,
             "a target needs at least one monitor"),
            ("interval 0", f"{LZCTL} backdoor configure --role monitor --peer 10.77.0.12 --interval-ms 0", 1, "interval-ms must be between"),
            ("a multicast peer", f"{LZCTL} backdoor configure --role monitor --peer 224.0.0.1", 1, "unicast"),
            ("sensor id 0", f"{LZCTL} backdoor sensor-set --id 0 --class level --limit 1 --value 1", 1, "out of range"),
            ("a kernel sensor's class", f"{LZCTL} backdoor sensor-set --id 3 --class level --limit 1 --value 1", 1, "class and flags are fixed"),
            ("the timer's limit", f"{LZCTL} backdoor sensor-set --id 1 --limit 5 --value 0", 1, "only the limits of kernel sensors 3 to 6"),
            ("an unknown policy", f"{LZCTL} backdoor configure --role monitor --peer 10.77.0.12 --heal reboot", 2, "no healing policy"),
            ("a new sensor without class", f"{LZCTL} backdoor sensor-set --id 1000 --limit 1 --value 1", 1, "needs sensor-class"),
            ("sensor-set unprivileged", f"{NOBODY} {LZCTL} backdoor sensor-set --id 1000 --class level --limit 1 --value 1", 1,
             "Operation not permitted"),
            ("no peers in lzctl", f"{LZCTL} backdoor configure --role monitor", 2, "at least one --peer"),
        ]
        for name, cmd, want_rc, want in cases:
            rc, out, err = g.run(cmd, check=False)
            assert rc == want_rc and want in err, f"{name}: rc {rc}, stderr {err!r}"
        assert status(g)["role"] == "none", "nothing was configured"
        g.run("rmmod lazarus_backdoor")


BOMB = ("import os, time\n"
        "open('/proc/self/comm', 'w').write('lzbomb')\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1000)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.02)\n")
HOG = ("import time\n"
       "open('/proc/self/comm', 'w').write('lzhog')\n"
       "b = b'x' * (200 << 20)\n"
       "time.sleep(1000)\n")


def diagnose(*gs):
    for g in gs:
        print(f"guest {g.index}:", g.out(f"{LZCTL} backdoor status; {LZCTL} backdoor sensors; "
                                         "dmesg | grep lazarus | tail -15", timeout=60))


def count(g, comm):
    """Live processes named `comm` (killed ones may stay zombies: this guest's init
    does not reap orphans)."""
    return int(g.out(f"ps -eo stat=,comm= | awk '$2 == \"{comm}\" && $1 !~ /^Z/' | wc -l").strip())


def test_a_fork_bomb_and_a_memory_hog_are_repaired_remotely():
    with Bench(2, name="lzbh") as b:
        target, monitor = b.guests
        for g in b.guests:
            rdma_up(g)
        target.run(f"{LZCTL} backdoor configure --role target --peer {monitor.addr} --interval-ms 20")
        monitor.run(f"{LZCTL} backdoor configure --role monitor --peer {target.addr} --interval-ms 50 --heal fork-bomb,memory-hog")
        s = wait_for("the monitor to read the box", lambda: sensors(monitor), timeout=90)
        assert status(monitor)["heal"] == ["fork-bomb", "memory-hog"]

        # Fork bomb: the task count may grow by 40 before it is an alarm; a program
        # that forks copies of itself without end then gets its whole group killed.
        target.run(f"{LZCTL} backdoor sensor-set --id 3 --limit {s[3]['value'] + 40} --value 0")
        target.run(f"printf %s {shlex.quote(BOMB)} > /tmp/bomb.py; setsid python3 /tmp/bomb.py </dev/null >/dev/null 2>&1 &")
        try:
            # (It may grow and be killed between two looks: the repair is what counts.)
            wait_for("the bomb to be killed", lambda: status(target)["stats"]["repairs_done"] >= 1, timeout=90)
        except AssertionError:
            diagnose(target, monitor)
            raise
        ts = status(target)["stats"]
        assert ts["repairs_done"] >= 1 and ts["killed"] > 32, ts
        time.sleep(3)
        assert count(target, "lzbomb") == 0, "the bomb stays dead (its forking parent went with it)"

        # Memory hog: free memory may drop by 100 MiB before it is an alarm; a
        # program holding 200 MiB is killed.
        free = sensors(monitor)[6]["value"]
        target.run(f"{LZCTL} backdoor sensor-set --id 6 --limit {free - (100 << 20) // 4096} --value 0")
        target.run(f"printf %s {shlex.quote(HOG)} > /tmp/hog.py; setsid python3 /tmp/hog.py </dev/null >/dev/null 2>&1 &")
        try:
            wait_for("the hog to start", lambda: count(target, "lzhog") == 1, timeout=30)
            wait_for("the hog to be killed", lambda: count(target, "lzhog") == 0, timeout=90)
        except AssertionError:
            diagnose(target, monitor)
            raise
        wait_for("free memory to recover", lambda: verdict_of(monitor, 6) == "ok", timeout=30)

        ms, ts = status(monitor)["stats"], status(target)["stats"]
        print("monitor:", ms, "target:", ts)
        assert ms["repairs_sent"] >= 2 and ts["repairs_done"] >= 2, (ms, ts)
        assert ms["read_errors"] == 0, ms
        # Nothing protected was touched: the guest's own agent still answers, and
        # so does the module.
        assert status(target)["role"] == "target"
