#!/usr/bin/env node
// vircptfs: the only place that reads argv, handles signals and exits.
import { readFileSync } from 'node:fs';
import { mountOrExit, parseOrExit, type FsDeps } from '../cli/vircptfs.js';
import { createLogger } from '../log.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
const deps: FsDeps = {
  version: pkg.version,
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  makeLogger: (o) => createLogger({ level: o.debug ? 'debug' : 'info', prefix: 'vircptfs', ...(o.logFile ? { file: o.logFile } : {}) }),
};

const parsed = parseOrExit(process.argv.slice(2), deps);
if (typeof parsed === 'number') {
  process.exitCode = parsed;
} else {
  const log = deps.makeLogger(parsed);
  const fs = await mountOrExit(parsed, log, deps);
  if (typeof fs === 'number') {
    process.exitCode = fs;
  } else {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.on(sig, () => {
        log.info(`${sig}: unmounting ${fs.mountpoint}`);
        void fs.stop().finally(() => process.exit(0));
      });
    }
    await fs.done;
    process.exit(0);
  }
}
