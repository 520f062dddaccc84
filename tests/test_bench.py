"""The bench itself fails loudly: a kernel warning in any guest fails the test that
produced it, and a fenced guest refuses further commands."""
import time

import pytest

from lzbench import Bench, BenchError


def test_kernel_warning_in_a_guest_fails_the_bench():
    with pytest.raises(BenchError, match="kernel trouble in guests"):
        with Bench(1) as b:
            g = b.guests[0]
            g.run("echo 'WARNING: CPU: 0 PID: 1 at lazarus bench self-test' > /dev/kmsg")
            # The log is streamed: wait until the line has reached the host's copy.
            deadline = time.time() + 30
            while "bench self-test" not in g.read("dmesg.log") and time.time() < deadline:
                time.sleep(0.1)
            g.fence()
            with pytest.raises(BenchError, match="fenced"):
                g.run("true")
