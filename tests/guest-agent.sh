#!/bin/bash
# Runs inside a test guest (started by tests/lzbench.py through virtme-ng).
# Brings up the test NIC, streams the kernel log to the shared directory, then runs
# the command files the host drops there, one at a time, in order:
#   cmd.N  ->  out.N, err.N, then rc.N (written last, atomically)
share=$1
addr=$2
set -u
exec 2>"$share/agent.err"
ip link set lo up
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
ip link set "$nic" name lz0 2>/dev/null && nic=lz0
ip addr add "$addr/24" dev "$nic"
ip link set "$nic" up
dmesg --level=emerg,alert,crit,err,warn,notice,info,debug -w >"$share/dmesg.log" 2>&1 &
mount -t debugfs none /sys/kernel/debug 2>/dev/null
echo "$nic" >"$share/ready"
n=0
while :; do
  if [ -f "$share/cmd.$n" ]; then
    bash "$share/cmd.$n" >"$share/out.$n" 2>"$share/err.$n" </dev/null
    echo $? >"$share/rc.$n.tmp"
    mv "$share/rc.$n.tmp" "$share/rc.$n"
    n=$((n + 1))
  else
    sleep 0.05
  fi
done
