#!/bin/bash
# Vagrant provisioning: installs what the suite needs, then runs one phase of
# vagrant/guest/suite.sh (main, or after-reboot) as root. Fails on any
# failed check, so `vagrant up` fails loudly; results in /var/lib/vm-suite.
set -euo pipefail
phase=${1:?usage: provision.sh main|after-reboot}
GUEST=/var/lib/vm-guest
export VM_RESULTS=/var/lib/vm-suite DEBIAN_FRONTEND=noninteractive
if [ "$phase" = main ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends curl python3 openssl ca-certificates
    install -d -m 0755 $GUEST
    cp -r /tmp/vm-guest/. $GUEST/
    install -m 0644 /tmp/interceptor.deb $GUEST/interceptor.deb
    rm -f $VM_RESULTS/results.txt
    bash $GUEST/suite.sh main $GUEST/interceptor.deb
else
    bash $GUEST/suite.sh after-reboot
fi
