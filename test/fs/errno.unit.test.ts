// The errno table at the FUSE edge (src/fs/errno.ts), imported directly: no root, no libvirt.
// Each row of the table is pinned, and docs/errors.md must list every code with the
// errno the code gives.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VircptError, type ErrorCode } from '../../src/errors.js';
import {
  EBUSY, EINTR, EIO, ENOENT, ENOSPC, ENOTSUP, ENXIO, EPERM, EROFS, EINVAL, ENOMEM, EOVERFLOW, ERRNO_NAMES, ERRNO_TABLE, toErrno,
} from '../../src/fs/errno.js';
import { serverError, closedError, protocolError } from '../../src/nbd/errors.js';
import { EPROTO, NBD_ESHUTDOWN } from '../../src/nbd/constants.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const err = (code: ErrorCode, errno?: number) => new VircptError(code, `a ${code}`, errno === undefined ? {} : { errno });

test('what a reader can act on: export gone, interrupted, deadline, no scratch space, foreign job', () => {
  assert.equal(toErrno(closedError()), EIO, 'connection closed');
  assert.equal(toErrno(err('NBD_CLOSED')), EIO, 'export released');
  assert.equal(toErrno(err('NO_EXPORT')), EIO, 'job gone');
  assert.equal(toErrno(err('DOMAIN_NOT_RUNNING')), EIO, 'VM ended');
  assert.equal(toErrno(err('ABORTED')), EINTR, 'a read interrupted by the reader');
  assert.equal(toErrno(err('TIMEOUT')), EIO, 'an internal deadline');
  assert.equal(toErrno(err('NO_SPACE')), ENOSPC, 'no scratch space at open');
  assert.equal(toErrno(err('FOREIGN_JOB')), EBUSY, 'a job vircptfs did not start');
  assert.equal(toErrno(protocolError('bad magic')), EIO);
});

test('what existed before stays: ENOENT, EROFS, EBUSY, EINVAL, ENXIO', () => {
  for (const c of ['NOT_FOUND', 'DOMAIN_NOT_FOUND', 'CHECKPOINT_NOT_FOUND', 'DISK_NOT_FOUND'] as const) assert.equal(toErrno(err(c)), ENOENT, c);
  assert.equal(toErrno(err('READ_ONLY')), EROFS);
  assert.equal(toErrno(err('BUSY')), EBUSY);
  assert.equal(toErrno(err('JOB_ACTIVE')), EBUSY);
  assert.equal(toErrno(err('INVALID')), EINVAL);
  assert.equal(toErrno(err('NO_DATA')), ENXIO);
  assert.equal(toErrno(err('UNSUPPORTED')), ENOTSUP);
});

test('the NBD server\'s own errno is passed through; ESHUTDOWN, EPROTO and unknown values are EIO', () => {
  for (const e of [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP]) {
    assert.equal(toErrno(serverError(e, 'no', 'a read')), e, ERRNO_NAMES[e]);
  }
  assert.equal(toErrno(serverError(NBD_ESHUTDOWN, 'going away', 'a read')), EIO, 'ESHUTDOWN: the export is going');
  assert.equal(toErrno(serverError(EPROTO, '', 'a read')), EIO, 'EPROTO: the server sent no errno');
  assert.equal(toErrno(serverError(4242, '', 'a read')), EIO, 'a value proto.md does not define');
  assert.equal(toErrno(err('NBD_SERVER_ERROR')), EIO, 'a refusal without errno (handshake)');
});

test('anything that is not one of our errors is EIO', () => {
  assert.equal(toErrno(new Error('boom')), EIO);
  assert.equal(toErrno('a string'), EIO);
  assert.equal(toErrno(undefined), EIO);
  assert.equal(toErrno(Object.assign(new Error('x'), { code: 'ENOENT' })), EIO, 'a Node error is not ours to trust');
});

test('docs/errors.md lists every code once, with the errno the code gives', async () => {
  const md = await readFile(path.join(ROOT, 'docs/errors.md'), 'utf8');
  const documented = new Map<string, string>();
  for (const line of md.split('\n').filter((l) => /^\| [^-]/.test(l) && !l.startsWith('| errno'))) {
    const cells = line.split(' | ').map((c) => c.replace(/^\| |\s*\|$/g, '').trim());
    const errno = cells[0]!.replace(/`/g, '');
    for (const code of cells[cells.length - 1]!.matchAll(/`([A-Z_]+)`/g)) {
      assert.ok(!documented.has(code[1]!), `${code[1]} is listed twice`);
      documented.set(code[1]!, errno);
    }
  }
  for (const [code, row] of Object.entries(ERRNO_TABLE)) {
    const want = row.errno === 'server' ? "the server's errno" : ERRNO_NAMES[row.errno];
    assert.equal(documented.get(code), want, `docs/errors.md row of ${code}`);
  }
  assert.deepEqual([...documented.keys()].filter((c) => !(c in ERRNO_TABLE)), [], 'documented codes that do not exist');
});
