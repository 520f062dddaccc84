"""Backdoors: a monitor reads a target's Sensor Box with one-sided RDMA READ over
soft-RoCE (rdma_rxe on the test network) and judges every sensor.

The target's kernel feeds its own sensors (timer ticks, context switches, tasks,
forks, OOM kills); the test adds one sensor of each class through netlink and
drives it across its limit, so that each class's verdict is seen to turn to an
alarm and back. Only configured monitors may connect.
"""
import json
import time

from lzbench import Bench, lzctl_path, wait_for

LZCTL = lzctl_path()
NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all"
KERNEL_SENSORS = {1, 2, 3, 4, 5}


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
            ("a kernel sensor id", f"{LZCTL} backdoor sensor-set --id 3 --class level --limit 1 --value 1", 1, "out of range"),
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
