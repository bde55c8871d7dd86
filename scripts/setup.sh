#!/usr/bin/env bash
# One-time (idempotent) preparation of a Debian 12 host, run as root from the repository:
# Debian packages, npm dependencies + build, and the libvirt daemons.
# Every step checks first, so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (libvirt qemu:///system, FUSE and loop devices need it)" >&2; exit 2; }

# Debian packages (docs/lab.md). Checked one by one: a machine that has some of them hides a missing one.
pkgs=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra
      libnbd-bin nbdkit fuse3 libfuse3-dev pkg-config e2fsprogs fdisk clamav
      rsync jq util-linux procps psmisc python3 make g++ time
      openssh-server gnutls-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node.js >= 20 (Debian 12's own nodejs is 18: an upstream build is needed).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup.sh: Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none)); Debian 12's nodejs is 18, install an upstream build" >&2
  exit 1
fi

# npm dependencies (the install script builds the FUSE addon in native/) and the build.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
# The FUSE addon again when a source in native/ is newer than the build (a pull, an edit).
addon=native/build/Release/vircptfs_fuse.node
if [ ! -f "$addon" ] || [ -n "$(find native -maxdepth 1 -newer "$addon" -type f)" ]; then
  log "building the FUSE addon"
  node native/build.mjs
fi
log "building"
npm run -s build

# /dev/kvm: Debian's usual owner and mode, so libvirt does not re-probe QEMU on every define (docs/lab.md).
if [ -e /dev/kvm ]; then
  getent group kvm >/dev/null && chgrp kvm /dev/kvm && chmod 660 /dev/kvm || true
fi

# Daemons: no systemd on these machines; start them only when not running.
if ! pgrep -x virtlogd >/dev/null; then log "starting virtlogd"; virtlogd -d; fi
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; libvirtd -d; fi
  for _ in $(seq 1 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -c qemu:///system version >/dev/null || { echo "setup.sh: libvirtd did not come up" >&2; exit 1; }
fi
# Mount propagation as systemd sets it: libvirt starts each QEMU in a mount namespace copied from
# the host's; with a private / (no systemd here), an unmount on the host never reaches those copies
# and a FUSE mount lives on in every VM started while it was up.
if [ "$(findmnt -no PROPAGATION / 2>/dev/null)" = private ]; then
  log "making / a shared mount (as systemd does)"
  mount --make-rshared /
fi
# FUSE needs /dev/fuse; loop devices need the loop module (built in on these machines).
[ -c /dev/fuse ] || { echo "setup.sh: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
log "ready"
