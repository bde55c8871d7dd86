// Builds the FUSE addon (native/) with node-gyp at install time, against the headers of the
// Node.js that runs this script, and checks that the result loads. Run by npm's install script
// (`npm ci` in a clone, `npm install -g vircptfs-X.tgz` on a host) and by hand: node native/build.mjs
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const fail = (message) => {
  console.error(`vircptfs: building the FUSE addon failed: ${message}`);
  process.exit(1);
};

// node-gyp: the one npm hands its scripts, else the one bundled with npm, else one on PATH.
function nodeGyp() {
  const candidates = [process.env.npm_config_node_gyp];
  const npmDir = path.resolve(path.dirname(process.execPath), '../lib/node_modules/npm');
  candidates.push(path.join(npmDir, 'node_modules/node-gyp/bin/node-gyp.js'));
  for (const c of candidates) if (c && existsSync(c)) return [process.execPath, c];
  return ['node-gyp'];
}

// The headers of this very Node.js: a distribution's (/usr/include/node) or an upstream
// build's (PREFIX/include/node). With them node-gyp needs no download (and no network).
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include/node/node_api.h')) ? prefix : undefined;
}

try {
  execFileSync('pkg-config', ['--exists', 'fuse3'], { stdio: 'ignore' });
} catch {
  fail('libfuse 3 development files not found (Debian: apt-get install libfuse3-dev pkg-config)');
}
const [cmd, ...pre] = nodeGyp();
const dir = nodeDir();
const args = [...pre, 'rebuild', `--directory=${here}`, '--loglevel=warn', ...(dir ? [`--nodedir=${dir}`] : [])];
try {
  execFileSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
} catch (err) {
  fail(`node-gyp: ${err.message} (Debian: apt-get install python3 make g++ libfuse3-dev pkg-config)`);
}
try {
  const addon = createRequire(import.meta.url)('./build/Release/vircptfs_fuse.node');
  if (typeof addon.mount !== 'function') fail('the built addon has no mount()');
} catch (err) {
  fail(`the built addon does not load: ${err.message}`);
}
