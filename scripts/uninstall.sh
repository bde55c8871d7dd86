#!/usr/bin/env bash
# Removes exactly what scripts/install.sh put in place: the paths listed in
# PREFIX/lib/vircptfs/.vircptfs-install (the wrappers, the mount(8) helper, the package copy).
# Without that list (the copy removed by hand), it looks at the default places and removes only
# files that carry install.sh's marker. Anything else is left alone. Idempotent.
# Live vircptfs mounts keep running (their code is loaded) and still unmount with umount.
set -euo pipefail

MARKER=vircptfs-install-marker
MANIFEST=.vircptfs-install

usage() { echo "usage: uninstall.sh [--prefix DIR] [--sbindir DIR]" >&2; exit 2; }
die() { echo "uninstall.sh: $*" >&2; exit 1; }
log() { printf '[uninstall] %s\n' "$*" >&2; }

prefix=/usr/local
sbindir=/sbin
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift ;;
    --sbindir) [ $# -ge 2 ] || usage; sbindir=$2; shift ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "run as root"
libdir=$prefix/lib/vircptfs

paths=()
dirs=()
if [ -f "$libdir/$MANIFEST" ]; then
  while read -r line; do
    case $line in '#'*|'') ;; 'dir '*) dirs+=("${line#dir }") ;; *) paths+=("$line") ;; esac
  done <"$libdir/$MANIFEST"
else
  paths=("$prefix/bin/vircpt" "$prefix/bin/vircptfs" "$sbindir/mount.fuse.vircptfs")
fi

# Ours: carries the marker and runs this prefix's copy (another prefix's install is not ours).
ours() { [ -f "$1" ] && grep -q "$MARKER" "$1" && grep -qF "'$libdir/dist/src/bin/" "$1"; }

removed=0
for p in "${paths[@]}"; do
  if [ "$p" = "$libdir" ]; then
    continue # last, once nothing points into it
  elif ours "$p"; then
    rm -f "$p"
    log "removed $p"
    removed=$((removed + 1))
  elif [ -e "$p" ]; then
    log "left $p: not installed by install.sh"
  fi
done
if [ -f "$libdir/$MANIFEST" ]; then
  rm -rf "$libdir"
  log "removed $libdir"
  removed=$((removed + 1))
fi
for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do # deepest first
  rmdir "${dirs[i]}" 2>/dev/null && log "removed ${dirs[i]}/" || true
done
[ "$removed" -gt 0 ] || log "nothing to remove: vircptfs is not installed (prefix $prefix)"
if grep -q ' fuse\.vircptfs ' /proc/mounts; then
  log "note: vircptfs mounts are still live; unmount them with umount MOUNTPOINT"
fi
