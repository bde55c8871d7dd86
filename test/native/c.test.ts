// The addon's C that can run alone (native/test/*.c), compiled with the flags of the addon's
// build and run under AddressSanitizer and UndefinedBehaviorSanitizer.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const SOURCES = path.join(ROOT, 'native/test');

test('the addon C tests pass under ASan and UBSan', async (t) => {
  await execFileP('sh', ['-c', 'command -v cc && pkg-config --exists fuse3'])
    .catch(() => assert.fail('cc and libfuse 3 headers are needed: install the Debian packages gcc libfuse3-dev pkg-config'));
  const dir = await mkdtemp(path.join(tmpdir(), 'vircptfs-ctest-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cflags = (await execFileP('pkg-config', ['--cflags', 'fuse3'])).stdout.trim().split(/\s+/);
  const tests = (await readdir(SOURCES)).filter((f) => f.endsWith('.c'));
  assert.ok(tests.length > 0, `no C tests in ${SOURCES}`);
  for (const name of tests) {
    const exe = path.join(dir, name.replace(/\.c$/, ''));
    await execFileP('cc', ['-std=gnu11', '-g', '-O1', '-Wall', '-Wextra', '-Werror', '-fsanitize=address,undefined',
      '-fno-sanitize-recover=all', ...cflags, '-o', exe, path.join(SOURCES, name)]);
    const { stdout } = await execFileP(exe);
    assert.match(stdout, /: ok$/m, `${name}: ${stdout}`);
  }
});
