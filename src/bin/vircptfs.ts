#!/usr/bin/env node
// vircptfs: the filesystem (issue 4) is not here yet.
process.stderr.write('vircptfs: not yet\n');
process.exitCode = 1;
