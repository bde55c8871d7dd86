#!/usr/bin/env bash
# Installs vircpt and vircptfs for the whole machine (as root), from this repository:
#   PREFIX/lib/vircptfs/           a copy of the built package with its production node_modules
#                                  and the FUSE addon (native/): it survives the repository
#   PREFIX/bin/vircpt, vircptfs    wrappers that run it with the node found now, by absolute path
#   SBINDIR/mount.fuse.vircptfs    the mount(8) helper (mount -t fuse.vircptfs, fstab), both paths
#                                  written in: it must work without PATH (mount(8) and systemd)
# PREFIX defaults to /usr/local and SBINDIR to /sbin (where mount(8) looks for helpers).
# Runs scripts/setup.sh first when the build or the FUSE addon is missing. Idempotent: a second
# run replaces the copy. scripts/uninstall.sh removes exactly what this put in place (the list is
# kept in PREFIX/lib/vircptfs/.vircptfs-install). A file it would replace that it did not install
# stops it, unless --force.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

MARKER=vircptfs-install-marker
MANIFEST=.vircptfs-install
NODE_MAJOR_MIN=20

usage() { echo "usage: install.sh [--prefix DIR] [--sbindir DIR] [--force]" >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }
log() { printf '[install] %s\n' "$*" >&2; }

prefix=/usr/local
sbindir=/sbin
force=0
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift ;;
    --sbindir) [ $# -ge 2 ] || usage; sbindir=$2; shift ;;
    --force) force=1 ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "run as root (it writes to $prefix and $sbindir)"
for p in "$prefix" "$sbindir"; do
  case $p in /*) ;; *) die "$p: an absolute path is needed" ;; esac
  case $p in *[\'\"\\\$\`]*|*$'\n'*) die "$p: quotes, backslashes, \$ and newlines are not supported" ;; esac
done
libdir=$prefix/lib/vircptfs
bindir=$prefix/bin
helper=$sbindir/mount.fuse.vircptfs

# The node that runs everything from now on: the one on PATH, kept by absolute path.
node=$(command -v node || true)
[ -n "$node" ] || die "node not found on PATH (Node.js >= $NODE_MAJOR_MIN is needed; Debian 12's nodejs is 18)"
node=$(cd "$(dirname "$node")" && pwd)/$(basename "$node")
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge "$NODE_MAJOR_MIN" ] || die "$node is Node.js $("$node" --version); >= $NODE_MAJOR_MIN is needed"
case $node in *[\'\"\\\$\`]*|*$'\n'*) die "$node: quotes, backslashes, \$ and newlines in its path are not supported" ;; esac

ADDON=native/build/Release/vircptfs_fuse.node
addon_loads() { # $1: a package root holding the built addon
  "$node" -e 'process.exit(typeof require(process.argv[1]).mount === "function" ? 0 : 1)' "$1/$ADDON" 2>/dev/null
}
built() {
  [ -f dist/src/bin/vircpt.js ] && [ -f dist/src/bin/vircptfs.js ] && [ -f node_modules/.package-lock.json ] && addon_loads "$repo"
}
if ! built; then
  log "the build or the FUSE addon is missing: running scripts/setup.sh"
  bash scripts/setup.sh
  built || die "still no build with the FUSE addon after scripts/setup.sh"
fi

ours() { [ -f "$1" ] && grep -q "$MARKER" "$1"; }
# A path this would overwrite: free, or installed by us before (or --force).
check_free() {
  if [ -e "$1" ] && ! ours "$1" && [ "$force" = 0 ]; then
    die "$1 exists and was not installed by install.sh: move it away, or run with --force"
  fi
}
check_free "$bindir/vircpt"
check_free "$bindir/vircptfs"
check_free "$helper"
if [ -e "$libdir" ] && [ ! -f "$libdir/$MANIFEST" ] && [ "$force" = 0 ]; then
  die "$libdir exists and was not installed by install.sh: move it away, or run with --force"
fi

# 1. The package, staged next to its place and swapped in whole. Folders made here are listed
#    (deepest last) so that uninstall.sh removes them too, once empty.
made_dirs=()
for d in "$prefix" "$prefix/lib" "$bindir" "$sbindir"; do
  [ -d "$d" ] || { mkdir -p "$d"; made_dirs+=("$d"); }
done
if [ -f "$libdir/$MANIFEST" ]; then # a reinstall keeps the folders an earlier run made
  while read -r kind d; do [ "$kind" = dir ] && made_dirs+=("$d"); done < <(grep '^dir ' "$libdir/$MANIFEST" || true)
fi
stage=$(mktemp -d "$prefix/lib/.vircptfs-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
log "copying the package to $libdir"
mkdir -p "$stage/dist"
cp -a dist/src "$stage/dist/src"
cp -a package.json package-lock.json node_modules "$stage/"
mkdir -p "$stage/$(dirname "$ADDON")"
cp -a "$ADDON" "$stage/$ADDON"
[ ! -f README.md ] || cp -a README.md "$stage/"
# Only the runtime dependencies; --offline: everything needed is already in node_modules.
(cd "$stage" && npm prune --omit=dev --ignore-scripts --offline --no-audit --no-fund --loglevel=error >&2) \
  || log "npm prune failed: keeping the development dependencies too"
addon_loads "$stage" || die "the copied FUSE addon does not load"
"$node" "$stage/dist/src/bin/vircptfs.js" --version >/dev/null || die "the copied vircptfs does not start"
chmod 755 "$stage"
{
  echo "# $MARKER: what scripts/install.sh put in place (scripts/uninstall.sh removes it)"
  echo "$bindir/vircpt"
  echo "$bindir/vircptfs"
  echo "$helper"
  echo "$libdir"
  for d in "${made_dirs[@]}"; do echo "dir $d"; done
} >"$stage/$MANIFEST"
old=''
if [ -e "$libdir" ]; then
  old=$(mktemp -d "$prefix/lib/.vircptfs-old.XXXXXX")
  mv "$libdir" "$old/"
fi
mv "$stage" "$libdir"
trap - EXIT
[ -z "$old" ] || rm -rf "$old"

# 2. Wrappers and the helper: written beside their place, then renamed over it (atomic).
put() { # $1: destination; the content comes on standard input
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$1"
}
for prog in vircpt vircptfs; do
  put "$bindir/$prog" <<EOF
#!/bin/sh
# $prog, installed by vircptfs's scripts/install.sh ($MARKER); scripts/uninstall.sh removes it.
# It runs child programs (virsh, qemu-nbd, fusermount) by name: give it a PATH when it has none.
[ -n "\${PATH:-}" ] || { PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; }
exec '$node' '$libdir/dist/src/bin/$prog.js' "\$@"
EOF
done
sed -e "s|^VIRCPTFS_NODE=''\$|VIRCPTFS_NODE='$node'|" \
    -e "s|^VIRCPTFS_JS=''\$|VIRCPTFS_JS='$libdir/dist/src/bin/vircptfs.js'|" \
    mount-helper/mount.fuse.vircptfs | put "$helper"
grep -q "^VIRCPTFS_JS='$libdir/" "$helper" || die "$helper: the paths were not written in"

log "installed: $bindir/vircpt $bindir/vircptfs $helper ($("$bindir/vircptfs" --version), $node $("$node" --version))"
if grep -q ' fuse\.vircptfs ' /proc/mounts; then
  log "note: vircptfs mounts are live; they keep running the version they started with until unmounted"
fi
