"""Header rewriting in the kernel: stateless port redirection keeps every checksum valid.

lazarus_core rewrites the destination port of incoming segments (PRE_ROUTING) and the
source port of outgoing ones (LOCAL_OUT) with incremental checksum updates. The
guest's NIC gets no receive offloads, so every incoming segment carries a complete
checksum that the guest verifies after the rewrite. Outgoing TCP buffers are always
CHECKSUM_PARTIAL at LOCAL_OUT: with transmit offloads on they leave as GSO/partial
frames, and with them off the guest finishes each checksum in software from the
rewritten pseudo-header seed and the host's TCP stack verifies it. A wrong update
anywhere loses segments, and the transfer fails or its bytes differ.
"""
import json
import os

from lzbench import Bench

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpclient.py")
NBYTES = 2_000_000


def transfers(b, g, blob_sha):
    r = json.loads(b.host(f"python3 {CLIENT} echo {g.addr} 9999 {NBYTES} --seed 3", timeout=300).stdout)
    assert r["received"] == NBYTES and r["received_sha"] == r["sent_sha"], r
    r = json.loads(b.host(f"python3 {CLIENT} get {g.addr} 7777", timeout=300).stdout)
    assert r["received_sha"] == blob_sha, r


def test_redirect_rewrites_with_valid_checksums():
    with Bench(1, nic_opts=Bench.NIC_NO_RX_OFFLOAD) as b:
        g = b.guests[0]
        g.insmod()
        g.run("head -c 2000000 /dev/urandom > /tmp/blob; sha256sum /tmp/blob | cut -d' ' -f1 > /tmp/blob.sha\n"
              "setsid socat -t 30 TCP-LISTEN:8080,reuseaddr,fork EXEC:cat </dev/null >/dev/null 2>&1 &\n"
              "setsid socat -t 30 -U TCP-LISTEN:8081,reuseaddr,fork OPEN:/tmp/blob </dev/null >/dev/null 2>&1 &\n"
              "for p in 8080 8081; do for i in $(seq 50); do ss -lnt | grep -q \":$p \" && break; sleep 0.1; done; done")
        blob_sha = g.out("cat /tmp/blob.sha").strip()
        # Without the redirect nobody listens on 9999.
        assert b.host(f"python3 {CLIENT} echo {g.addr} 9999 10", check=False).returncode != 0

        g.run("sysctl -w net.lazarus.core.redirect='9999:8080 7777:8081'")
        assert g.out("sysctl -n net.lazarus.core.redirect").strip() == "9999:8080 7777:8081"
        transfers(b, g, blob_sha)

        g.run("ethtool -K lz0 tx off sg off tso off gso off gro off")
        feats = g.out("ethtool -k lz0")
        for f in ("tx-checksumming: off", "generic-receive-offload: off", "tcp-segmentation-offload: off"):
            assert f in feats, f"offload still on: {f}"
        transfers(b, g, blob_sha)

        for bad in ("80", "80:80", "1:2 3:2", "1:2 1:3", "0:5", "1:2:3", "1:2 " * 9):
            rc, _, err = g.run(f"sysctl -w net.lazarus.core.redirect='{bad}'", check=False)
            assert rc != 0 and "Invalid argument" in err, (bad, err)
        assert g.out("sysctl -n net.lazarus.core.redirect").strip() == "9999:8080 7777:8081"
        # Removing the redirect restores plain behaviour.
        g.run("sysctl -w net.lazarus.core.redirect=''")
        assert b.host(f"python3 {CLIENT} echo {g.addr} 9999 10", check=False).returncode != 0
        g.run("rmmod lazarus_core")
