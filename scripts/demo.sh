#!/usr/bin/env bash
# The built-in demo: a small VM with a GPT + ext4 disk and a data disk, a checkpoint, some guest
# writes after it, and vircptfs mounted so that the checkpoint's disks are plain files.
#   bash scripts/demo.sh        set up (idempotent) and show the mount
#   bash scripts/demo.sh down   unmount and remove everything the demo made
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
REPO=$PWD

DOM=vircptfs-demo
DIR=/var/lib/vircptfs-demo
MNT=/mnt/vircptfs-demo
GUEST=/mnt/vircptfs-demo-guest
CPT=demo-1
VIRCPT=("$(command -v node)" "$REPO/dist/src/bin/vircpt.js")
VIRCPTFS=("$(command -v node)" "$REPO/dist/src/bin/vircptfs.js")
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
virsh() { command virsh -q -c qemu:///system "$@"; }

down() {
  mountpoint -q "$GUEST" 2>/dev/null && umount "$GUEST"
  if mountpoint -q "$MNT" 2>/dev/null || grep -q " $MNT fuse" /proc/mounts; then
    umount "$MNT" 2>/dev/null || fusermount3 -uz "$MNT"
    # the daemon releases its exports, then exits
    for _ in $(seq 1 50); do grep -q " $MNT fuse" /proc/mounts || break; sleep 0.1; done
  fi
  if virsh dominfo "$DOM" >/dev/null 2>&1; then
    virsh destroy "$DOM" >/dev/null 2>&1 || true
    virsh undefine --checkpoints-metadata "$DOM" >/dev/null
  fi
  rm -rf "$DIR"
  rmdir "$MNT" "$GUEST" 2>/dev/null || true
  echo "demo removed"
}

make_disks() {
  mkdir -p "$DIR/content/docs"
  chmod 755 "$DIR"
  echo "Hello from inside the demo VM's ext4 filesystem." > "$DIR/content/README.txt"
  printf 'checkpoints are bitmaps, not data\n' > "$DIR/content/docs/notes.txt"
  # The standard antivirus test file (harmless), for the clamav recipe in the README.
  printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-' 'TEST-FILE!$H+H*' > "$DIR/content/docs/eicar.com"
  head -c 4M /dev/urandom > "$DIR/content/random.bin"
  truncate -s 256M "$DIR/sda.raw"
  printf 'label: gpt\nstart=2048, size=262144, type=linux\n' | sfdisk -q --no-reread --no-tell-kernel "$DIR/sda.raw"
  mkfs.ext4 -q -F -E offset=1048576 -d "$DIR/content" "$DIR/sda.raw" 131072k
  qemu-img convert -q -f raw -O qcow2 "$DIR/sda.raw" "$DIR/sda.qcow2"
  rm -rf "$DIR/sda.raw" "$DIR/content"
  qemu-img create -q -f qcow2 "$DIR/vdb.qcow2" 64M
  chmod 644 "$DIR"/*.qcow2
  cat > "$DIR/domain.xml" <<XML
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$DIR/sda.qcow2'/><target dev='sda' bus='sata'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$DIR/vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>
XML
}

guest_write() { # target-qdev offset length pattern: a write through QEMU's block layer, as a guest would
  virsh qemu-monitor-command "$DOM" --hmp "qemu-io -d $1 \"write -P $4 $2 $3\"" >/dev/null
  virsh qemu-monitor-command "$DOM" --hmp "qemu-io -d $1 \"flush\"" >/dev/null
}

up() {
  bash scripts/setup.sh
  if ! virsh dominfo "$DOM" >/dev/null 2>&1; then
    say "Creating the demo VM $DOM (TCG, started paused: it never writes by itself)"
    make_disks
    virsh define "$DIR/domain.xml" >/dev/null
  fi
  [ "$(virsh domstate "$DOM")" = "shut off" ] && virsh start --paused "$DOM" >/dev/null
  if ! "${VIRCPT[@]}" -d "$DOM" list --json | grep -q "\"$CPT\""; then
    say "A checkpoint, then some guest writes after it"
    run "${VIRCPT[@]}" -d "$DOM" create --name "$CPT"
    guest_write /machine/peripheral/virtio-disk1/virtio-backend 2M 1M 0xab
    guest_write /machine/peripheral/virtio-disk1/virtio-backend 40M 256K 0xcd
    guest_write sata0-0-0 200M 512K 0xef
  fi
  run "${VIRCPT[@]}" -d "$DOM" list
  mkdir -p "$MNT"
  if ! grep -q " $MNT fuse" /proc/mounts; then
    say "Mounting vircptfs at $MNT"
    run "${VIRCPTFS[@]}" -o "domain=$DOM,log=/var/log/vircptfs-demo.log" qemu:///system "$MNT"
  fi
  say "The tree (ls starts no export)"
  run ls -lR "$MNT"
  say "What changed since $CPT (reading dirty-map.json starts the export)"
  jq -c '.disks | to_entries[] | {disk: .key, dirty: [.value.extents[] | select(.type == 1) | {offset, length}]}' \
    "$MNT/$DOM/$CPT/dirty-map.json"
  say "A file from inside the guest filesystem (loop mount of sda.raw's partition, read-only)"
  mkdir -p "$GUEST"
  run mount -o ro,noload,offset=1048576 "$MNT/$DOM/$CPT/sda.raw" "$GUEST"
  run ls -l "$GUEST" "$GUEST/docs"
  run cat "$GUEST/README.txt"
  run umount "$GUEST"
  cat <<EOT

The demo stays mounted at $MNT (log: /var/log/vircptfs-demo.log). Try:
  cp $MNT/$DOM/$CPT/vdb.raw /tmp/vdb.raw
  jq . $MNT/$DOM/$CPT/dirty-map.json
Unmount (releases the export):   umount $MNT
Remove everything:               bash scripts/demo.sh down
EOT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
