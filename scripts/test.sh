#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, then runs it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bash scripts/setup.sh
exec node --test --test-concurrency=2 --test-timeout=600000 --test-reporter=spec 'dist/test/**/*.test.js'
