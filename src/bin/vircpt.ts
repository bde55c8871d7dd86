#!/usr/bin/env node
// vircpt: the only place that reads argv, handles signals and exits.
import { readFileSync, writeSync } from 'node:fs';
import v8 from 'node:v8';
import { earlyUri } from '../cli/early-uri.js';
import { defaultUri, EXIT_INTERRUPTED } from '../cli/exit.js';
import { textLogger } from '../cli/text-log.js';
import { defaultRuntimeDirs } from '../exports/runtime.js';
import { prestartSession } from '../libvirt/virsh-session.js';
import { lazyLogger } from '../log.js';

// A vircpt process lives seconds: V8's optimizing compiler cost it CPU and its code ran the copy
// no faster (docs/benchmarks.md, "Start-up of vircpt"). Baseline code it is; the long-lived
// vircptfs daemon keeps the optimizer.
v8.setFlagsFromString('--no-opt');

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
const argv = process.argv.slice(2);
// `vircpt --version` alone needs no command line parser: answered before one is loaded (the same
// line commander prints).
if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  process.stdout.write(`vircpt ${pkg.version}\n`);
  process.exit(0);
}
// A command that will ask libvirt gets its virsh shell started now: virsh loads libvirt and
// connects while node loads the program, instead of after.
const uri = earlyUri(argv, defaultUri());
if (uri !== undefined) prestartSession(uri);
const { runVircpt } = await import('../cli/vircpt.js');
const verbose = argv.includes('-v') || argv.includes('--verbose');
const controller = new AbortController();
let interrupted = 0;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    // First signal: cancel and let the command release what it started; second: leave now.
    if (++interrupted > 1) process.exit(EXIT_INTERRUPTED);
    controller.abort(new Error(`interrupted by ${sig}`));
  });
}

const code = await runVircpt(argv, {
  version: pkg.version,
  // Without -v only warnings and errors are written: plain lines, no pino (cli/text-log.ts).
  log: verbose ? lazyLogger({ level: 'debug', prefix: 'vircpt' }) : textLogger('vircpt', (line) => writeSync(2, line)),
  dirs: defaultRuntimeDirs(),
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  isTTY: !!process.stdout.isTTY,
  signal: controller.signal,
});
process.exitCode = code;
