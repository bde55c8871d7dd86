#!/usr/bin/env bash
# Removes exactly what scripts/install.sh put in place: the npm package (npm uninstall -g, which
# takes its PREFIX/bin links along) and what its list, PREFIX/lib/node_modules/vircptfs/
# .vircptfs-install, names (the mount(8) helper, folders made for it). Without that list, it
# looks at the default places and removes only a helper that carries install.sh's marker and
# points into this prefix. Anything else is left alone. Idempotent.
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
pkgdir=$prefix/lib/node_modules/vircptfs

paths=()
dirs=()
if [ -f "$pkgdir/$MANIFEST" ]; then
  while read -r line; do
    case $line in '#'*|'') ;; 'dir '*) dirs+=("${line#dir }") ;; *) paths+=("$line") ;; esac
  done <"$pkgdir/$MANIFEST"
else
  paths=("$sbindir/mount.fuse.vircptfs")
fi

# Ours: carries the marker and runs this prefix's package (another prefix's install is not ours).
ours() { [ -f "$1" ] && grep -q "$MARKER" "$1" && grep -qF "'$pkgdir/dist/src/bin/" "$1"; }

removed=0
for p in "${paths[@]}"; do
  if ours "$p"; then
    rm -f "$p"
    log "removed $p"
    removed=$((removed + 1))
  elif [ -e "$p" ]; then
    log "left $p: not installed by install.sh"
  fi
done
if [ -f "$pkgdir/package.json" ] && [ "$(node -p 'require(process.argv[1]).name' "$pkgdir/package.json" 2>/dev/null)" = vircptfs ]; then
  npm uninstall -g --prefix "$prefix" --no-audit --no-fund --loglevel=warn vircptfs >&2 || die "npm uninstall -g vircptfs failed"
  log "removed $pkgdir and its links in $prefix/bin"
  removed=$((removed + 1))
fi
for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do # deepest first
  rmdir "${dirs[i]}" 2>/dev/null && log "removed ${dirs[i]}/" || true
done
[ "$removed" -gt 0 ] || log "nothing to remove: vircptfs is not installed (prefix $prefix)"
if grep -q ' fuse\.vircptfs ' /proc/mounts; then
  log "note: vircptfs mounts are still live; unmount them with umount MOUNTPOINT"
fi
