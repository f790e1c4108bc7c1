#!/bin/bash
# Boot-time driver of the suite in the `cargo xtask vm-test` image
# (vm-suite.service runs it from the 9p share at every boot).
#   first boot:  suite.sh main, then reboot
#   second boot: suite.sh after-reboot, then suite.sh power-cut, which
#                resets the guest with no sync (a power cut)
#   third boot:  suite.sh after-power-cut, then power off
# The host reads $SHARE/results after qemu exits.
set -u
SHARE=/mnt/share
export VM_RESULTS=$SHARE/results
STATE=/var/lib/vm-suite-phase
mkdir -p "$VM_RESULTS"
phase=$(cat $STATE 2>/dev/null || echo main)
case "$phase" in
main)
    bash $SHARE/guest/suite.sh main $SHARE/interceptor.deb
    echo "main rc=$?" >>"$VM_RESULTS/phases"
    echo after-reboot >$STATE
    journalctl -b --no-pager >"$VM_RESULTS/journal-boot1.txt" 2>&1
    sync
    systemctl reboot
    ;;
after-reboot)
    bash $SHARE/guest/suite.sh after-reboot
    echo "after-reboot rc=$?" >>"$VM_RESULTS/phases"
    journalctl -b --no-pager >"$VM_RESULTS/journal-boot2.txt" 2>&1
    echo after-power-cut >$STATE
    sync
    echo "power-cut rc=cut" >>"$VM_RESULTS/phases"
    bash $SHARE/guest/suite.sh power-cut
    echo "power-cut rc=$? (the power was not cut)" >>"$VM_RESULTS/phases"
    systemctl poweroff
    ;;
after-power-cut)
    bash $SHARE/guest/suite.sh after-power-cut
    echo "after-power-cut rc=$?" >>"$VM_RESULTS/phases"
    echo done >$STATE
    journalctl -b --no-pager >"$VM_RESULTS/journal-boot3.txt" 2>&1
    sync
    systemctl poweroff
    ;;
*)
    echo "vm-runner: nothing left to do (phase $phase)"
    systemctl poweroff
    ;;
esac
