#!/usr/bin/env bash
# Installs vircpt and vircptfs for the whole machine (as root): the npm package, plus the mount(8)
# helper that npm cannot place.
#   npm install -g --prefix PREFIX TARBALL   PREFIX/lib/node_modules/vircptfs (its install script
#                                            builds the FUSE addon) and PREFIX/bin/vircpt, vircptfs
#   SBINDIR/mount.fuse.vircptfs              the mount(8) helper (mount -t fuse.vircptfs, fstab),
#                                            with the node found now and the package's vircptfs
#                                            written in: it must work without PATH (mount(8), systemd)
# TARBALL is `npm pack`'s output; without one, this repository is packed first (its "prepack"
# builds dist/). PREFIX defaults to /usr/local, SBINDIR to /sbin (where mount(8) looks for helpers).
# Idempotent: a second run replaces the package. scripts/uninstall.sh removes exactly what this put
# in place (the list is kept in the package's folder, .vircptfs-install). A bin or helper it would
# replace that it did not install stops it, unless --force.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

MARKER=vircptfs-install-marker
MANIFEST=.vircptfs-install
NODE_MAJOR_MIN=20

usage() { echo "usage: install.sh [--prefix DIR] [--sbindir DIR] [--force] [vircptfs-X.tgz]" >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }
log() { printf '[install] %s\n' "$*" >&2; }

prefix=/usr/local
sbindir=/sbin
force=0
tarball=''
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift ;;
    --sbindir) [ $# -ge 2 ] || usage; sbindir=$2; shift ;;
    --force) force=1 ;;
    -*) usage ;;
    *) [ -z "$tarball" ] || usage; tarball=$(readlink -f "$1") || die "$1: not found" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "run as root (it writes to $prefix and $sbindir)"
for p in "$prefix" "$sbindir"; do
  case $p in /*) ;; *) die "$p: an absolute path is needed" ;; esac
  case $p in *[\'\"\\\$\`]*|*$'\n'*) die "$p: quotes, backslashes, \$ and newlines are not supported" ;; esac
done
[ -z "$tarball" ] || [ -f "$tarball" ] || die "$tarball: not a file (give the .tgz of npm pack)"
pkgdir=$prefix/lib/node_modules/vircptfs
bindir=$prefix/bin
helper=$sbindir/mount.fuse.vircptfs
js=$pkgdir/dist/src/bin/vircptfs.js

# The node that runs everything from now on: the one on PATH, kept by absolute path.
node=$(command -v node || true)
[ -n "$node" ] || die "node not found on PATH (Node.js >= $NODE_MAJOR_MIN is needed; Debian 12's nodejs is 18)"
node=$(cd "$(dirname "$node")" && pwd)/$(basename "$node")
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge "$NODE_MAJOR_MIN" ] || die "$node is Node.js $("$node" --version); >= $NODE_MAJOR_MIN is needed"
case $node in *[\'\"\\\$\`]*|*$'\n'*) die "$node: quotes, backslashes, \$ and newlines in its path are not supported" ;; esac
command -v npm >/dev/null || die "npm not found on PATH"

# Ours: a helper with the marker, or a bin that npm linked into this prefix's package.
ours() {
  if [ -L "$1" ]; then
    case $(readlink -f "$1") in "$pkgdir"/*) return 0 ;; esac
  fi
  [ -f "$1" ] && grep -q "$MARKER" "$1"
}
check_free() {
  if { [ -e "$1" ] || [ -L "$1" ]; } && ! ours "$1" && [ "$force" = 0 ]; then
    die "$1 exists and was not installed by install.sh: move it away, or run with --force"
  fi
}
check_free "$bindir/vircpt"
check_free "$bindir/vircptfs"
check_free "$helper"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$tarball" ]; then
  if [ ! -x node_modules/.bin/tsc ]; then
    log "no development dependencies in the repository: running scripts/setup.sh"
    bash scripts/setup.sh
  fi
  # Packed from a copy: prepack rebuilds dist/src from nothing, and whatever runs from this
  # checkout meanwhile (a mount, the test suite) must not see it missing.
  log "packing the repository (from a copy; prepack builds its dist/)"
  mkdir "$work/src"
  tar -c --exclude=./node_modules --exclude=./dist --exclude=./native/build --exclude=./.git -f - . | tar -x -C "$work/src" -f -
  ln -s "$PWD/node_modules" "$work/src/node_modules"
  (cd "$work/src" && npm pack --pack-destination "$work" --loglevel=error >"$work/pack.out") || die "npm pack failed"
  tarball=$work/$(tail -n 1 "$work/pack.out")
  [ -f "$tarball" ] || die "npm pack gave no tarball ($(cat "$work/pack.out"))"
fi

# Folders this makes are listed (deepest last) so that uninstall.sh removes them too, once empty.
made_dirs=()
for d in "$prefix" "$prefix/lib" "$prefix/lib/node_modules" "$bindir" "$sbindir"; do
  [ -d "$d" ] || { mkdir -p "$d"; made_dirs+=("$d"); }
done
if [ -f "$pkgdir/$MANIFEST" ]; then # a reinstall keeps the folders an earlier run made
  while read -r kind d; do [ "$kind" = dir ] && made_dirs+=("$d"); done < <(grep '^dir ' "$pkgdir/$MANIFEST" || true)
fi
# An earlier install's wrappers (non-npm ones carry the marker) would make npm refuse to link.
for b in "$bindir/vircpt" "$bindir/vircptfs"; do
  if [ -f "$b" ] && [ ! -L "$b" ] && { grep -q "$MARKER" "$b" || [ "$force" = 1 ]; }; then rm -f "$b"; fi
done

# An install by an earlier install.sh (a copy of the build in PREFIX/lib/vircptfs) is replaced.
[ ! -f "$prefix/lib/vircptfs/$MANIFEST" ] || rm -rf "$prefix/lib/vircptfs"

# npm 11.x (11.19 here) runs the install scripts of a package its allow-scripts does not name
# with a warning only, and fails the install under strict-allow-scripts. A tarball is named by
# its resolved path (file:/...), not by the name in its package.json: allow exactly this one.
npm_args=(install -g --prefix "$prefix" --no-audit --no-fund --prefer-offline --loglevel=warn)
if npm config ls -l 2>/dev/null | grep -q '^allow-scripts '; then npm_args+=("--allow-scripts=file:$tarball"); fi
[ "$force" = 0 ] || npm_args+=(--force)
log "npm ${npm_args[*]} $(basename "$tarball")"
npm "${npm_args[@]}" "$tarball" >&2 || die "npm install -g of $tarball failed"

# The addon must have been built by the package's install script (skipped with --ignore-scripts,
# or by a policy): build it now, and stop if it still does not load.
addon=$pkgdir/native/build/Release/vircptfs_fuse.node
addon_loads() { "$node" -e 'process.exit(typeof require(process.argv[1]).mount === "function" ? 0 : 1)' "$addon" 2>/dev/null; }
if ! addon_loads; then
  log "npm did not build the FUSE addon (install scripts not run): building it"
  "$node" "$pkgdir/native/build.mjs" >&2 || true
  addon_loads || die "the FUSE addon in $pkgdir/native does not build or load (Debian: python3 make g++ libfuse3-dev pkg-config)"
fi
"$node" "$js" --version >/dev/null || die "the installed vircptfs does not start"

# The helper: written beside its place, then renamed over it (atomic).
tmp=$(mktemp "$helper.XXXXXX")
sed -e "s|^VIRCPTFS_NODE=''\$|VIRCPTFS_NODE='$node'|" -e "s|^VIRCPTFS_JS=''\$|VIRCPTFS_JS='$js'|" \
  "$pkgdir/mount-helper/mount.fuse.vircptfs" >"$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$helper"
grep -q "^VIRCPTFS_JS='$js'\$" "$helper" || die "$helper: the paths were not written in"
{
  echo "# $MARKER: what scripts/install.sh put in place besides the npm package (uninstall.sh removes it)"
  echo "$helper"
  for d in "${made_dirs[@]}"; do echo "dir $d"; done
} >"$pkgdir/$MANIFEST"

log "installed: $bindir/vircpt $bindir/vircptfs $helper ($("$node" "$js" --version), $node $("$node" --version))"
if grep -q ' fuse\.vircptfs ' /proc/mounts; then
  log "note: vircptfs mounts are live; they keep running the version they started with until unmounted"
fi
