#!/usr/bin/env bash
# postinstall: apply patches/ (patch-package), then rebuild the @cocalc/fuse-native addon when
# its build does not come from the patched sources. npm builds the addon from the unpatched
# source (against libfuse 2) before the root postinstall runs; the patch moves it to libfuse 3
# (1 MiB requests, lseek) and adds the C fixes (worker-thread handle recycling, loop-exit call,
# per-open FOPEN_* flags, SEEK_DATA/SEEK_HOLE), so without the rebuild all of that is missing.
# Idempotent: a second run checks a stamp and exits.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf '[patch-fuse] %s\n' "$*" >&2; }

npx --no-install patch-package --error-on-fail

pkg_dir=$(dirname "$(node -p "require.resolve('@cocalc/fuse-native/package.json')")")
stamp="$pkg_dir/build/Release/vircpt-source.sha256"
want=$(cat "$pkg_dir/fuse-native.c" "$pkg_dir/binding.gyp" | sha256sum | cut -d' ' -f1)

if [ -f "$pkg_dir/build/Release/fuse.node" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

# node-gyp: npm's own copy (npm sets npm_config_node_gyp in lifecycle scripts), else the one
# bundled next to npm, else one on PATH.
gyp=${npm_config_node_gyp:-}
if [ -z "$gyp" ]; then
  npm_dir=$(dirname "$(readlink -f "$(command -v npm)")")/..
  gyp="$npm_dir/node_modules/node-gyp/bin/node-gyp.js"
  [ -f "$gyp" ] || gyp=$(command -v node-gyp || true)
fi
[ -n "$gyp" ] || { echo "patch-fuse.sh: node-gyp not found (it comes with npm)" >&2; exit 1; }

# Offline builds need the Node headers of the system's node (Debian: /usr/include/node);
# the project's .npmrc sets nodedir=/usr, which npm passes as npm_config_nodedir.
nodedir=${npm_config_nodedir:-}
if [ -z "$nodedir" ] && [ -f /usr/include/node/common.gypi ]; then nodedir=/usr; fi

log "rebuilding $pkg_dir after patching"
(
  cd "$pkg_dir"
  case "$gyp" in *.js) set -- node "$gyp" ;; *) set -- "$gyp" ;; esac
  "$@" rebuild ${nodedir:+--nodedir="$nodedir"} --loglevel=warn >&2
)

native=$(node -p "require('@cocalc/fuse-native').VIRCPT_PATCH?.native ?? 0")
[ "$native" -ge 2 ] || { echo "patch-fuse.sh: the rebuilt addon lacks the patch (libfuse 3 build)" >&2; exit 1; }
echo "$want" >"$stamp"
log "patched addon built"
