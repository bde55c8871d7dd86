#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, then runs it:
# the fast tier (npm run test:unit) first, then the rest. Two files run at once; the files under
# test/serial/ (they restart libvirtd or fill a filesystem, which would disturb any other test
# running beside them) run afterwards, alone.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bash scripts/setup.sh
# The remote-hypervisor lab, for the tests only (setup.sh also serves the demo and install.sh, on
# hosts whose libvirtd and sshd are not ours to reconfigure): sshd on 127.0.0.1:10022, a lab CA,
# NBD TLS for backup jobs, libvirtd --listen (TLS on 127.0.0.1 only); it restarts libvirtd once
# when that configuration is missing.
bash scripts/lab-remote.sh
# Node 20's runner takes no globs: list the test files (lab helpers under dist/test are not tests).
# First the fast tier (*.unit.test.js: no root, no libvirt, seconds), then the rest: each file once.
mapfile -t unit < <(find dist/test -name '*.unit.test.js' | sort)
mapfile -t files < <(find dist/test -name '*.test.js' -not -name '*.unit.test.js' -not -path 'dist/test/serial/*' | sort)
mapfile -t serial < <(find dist/test/serial -name '*.test.js' -not -name '*.unit.test.js' 2>/dev/null | sort)
[ ${#unit[@]} -gt 0 ] && [ ${#files[@]} -gt 0 ] || { echo "test.sh: no test files under dist/test" >&2; exit 1; }
status=0
node --test --test-concurrency=2 --test-timeout=120000 --test-reporter=spec "${unit[@]}" || status=$?
node --test --test-concurrency=2 --test-timeout=600000 --test-reporter=spec "${files[@]}" || status=$?
if [ ${#serial[@]} -gt 0 ]; then
  node --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec "${serial[@]}" || status=$?
fi
exit "$status"
