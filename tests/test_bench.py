"""The bench itself fails loudly: a kernel warning in any guest fails the test that
produced it, and a fenced guest refuses further commands."""
import pytest

from lzbench import Bench, BenchError


def test_kernel_warning_in_a_guest_fails_the_bench():
    with pytest.raises(BenchError, match="kernel trouble in guests"):
        with Bench(1) as b:
            g = b.guests[0]
            g.run("echo 'WARNING: CPU: 0 PID: 1 at lazarus bench self-test' > /dev/kmsg")
            # The log is streamed: wait until the line has reached the host.
            g.run("for i in $(seq 50); do dmesg | grep -q 'bench self-test' && break; sleep 0.1; done")
            g.fence()
            with pytest.raises(BenchError, match="fenced"):
                g.run("true")
