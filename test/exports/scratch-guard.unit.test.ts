// checkScratch's verdicts with libvirt's answers given by a fake virsh (no libvirt here): a job
// that ended, a domain that is gone or shut off, and space that is fine.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { VircptError } from '../../src/errors.js';
import { checkScratch } from '../../src/exports/scratch-guard.js';
import type { Virsh } from '../../src/libvirt/virsh.js';

/** A stand-in for Virsh whose every call fails with `code` (or answers `text`). */
function fakeVirsh(answer: { code: 'DOMAIN_NOT_FOUND' | 'DOMAIN_NOT_RUNNING' | 'TIMEOUT' } | { text: string }): Virsh {
  const run = async () => {
    if ('code' in answer) throw new VircptError(answer.code, `fake virsh: ${answer.code}`);
    return answer.text;
  };
  return { run } as unknown as Virsh;
}

test('a watched job whose domain is gone or shut off counts as gone; a failed question does not', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'vircptfs-guard-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const look = (virsh: Virsh) => checkScratch({ virsh, domain: 'vm', dir, reserve: { bytes: 0 }, watchJob: true });
  assert.equal((await look(fakeVirsh({ code: 'DOMAIN_NOT_FOUND' }))).kind, 'gone');
  assert.equal((await look(fakeVirsh({ code: 'DOMAIN_NOT_RUNNING' }))).kind, 'gone');
  // libvirt not answering says nothing about the job: keep watching.
  assert.equal((await look(fakeVirsh({ code: 'TIMEOUT' }))).kind, 'ok');
});
