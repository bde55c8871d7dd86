// The FUSE -o list (src/fs/fuse/options.ts): only what libfuse 3 accepts reaches the mount.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { fuseOptionList } from '../../src/fs/fuse/options.js';

test('fuseOptionList: named options in order, then the extra ones', () => {
  assert.deepEqual(fuseOptionList({ allowOther: true, readOnly: true, fsname: 'vircptfs', subtype: 'vircptfs', extraOptions: ['max_read=1048576'] }),
    ['allow_other', 'ro', 'fsname=vircptfs', 'subtype=vircptfs', 'max_read=1048576']);
  assert.deepEqual(fuseOptionList({}), []);
});

test('fuseOptionList: an option libfuse 3 would refuse is one error naming it', () => {
  for (const bad of ['kernel_cache', 'max_read=x', 'max_read=4294967296', 'readdirplus=maybe', 'fsname=a,b', 'uid=0']) {
    assert.throws(() => fuseOptionList({ extraOptions: [bad] }),
      (err: unknown) => isVircptError(err) && err.code === 'INVALID' && err.message.endsWith(`: ${bad}`), bad);
  }
  assert.throws(() => fuseOptionList({ fsname: 'x'.repeat(256) }), /not accepted/);
});
