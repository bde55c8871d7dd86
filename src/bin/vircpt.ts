#!/usr/bin/env node
// vircpt: the only place that reads argv, handles signals and exits.
import { runVircpt } from '../cli/vircpt.js';
import { defaultRuntimeDirs } from '../exports/runtime.js';
import { createLogger } from '../log.js';

const argv = process.argv.slice(2);
const verbose = argv.includes('-v') || argv.includes('--verbose');
const controller = new AbortController();
let interrupted = 0;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    // First signal: cancel and let the command release what it started; second: leave now.
    if (++interrupted > 1) process.exit(130);
    controller.abort(new Error(`interrupted by ${sig}`));
  });
}

const code = await runVircpt(argv, {
  log: createLogger({ level: verbose ? 'debug' : 'warn', prefix: 'vircpt' }),
  dirs: defaultRuntimeDirs(),
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  isTTY: !!process.stdout.isTTY,
  signal: controller.signal,
});
process.exitCode = code;
