// Running the README's recipes as written: each command is kept here verbatim, checked to be in
// README.md (so the test fails when the README changes under it), its demo names replaced by the
// test's own (one pass, so a replacement is never replaced again), and run by bash.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { VIRCPT } from '../lab/cli.js';
import type { LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountEntry } from '../lab/mount.js';
import { run } from '../lab/tools.js';
export { DIRTY_GRAIN, dirtyRanges } from '../lab/dirty.js';
export { assertSameBytes, firstDiff, waitReleased } from '../fs/helpers.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const KiB = 1024;
export const MiB = 1024 * KiB;

const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The demo's names in the README's recipes, and what a test uses instead. */
export interface RecipeNames {
  mount: string; //      /mnt/vircptfs-demo
  domain: string; //     vircptfs-demo
  checkpoints?: string[]; // demo-1, demo-2, ...
  guest?: string; //     /mnt/guest
  backup?: string; //    /backup
  overlay?: string; //   /tmp/sda-overlay.qcow2
}

function substitutions(n: RecipeNames): Map<string, string> {
  const m = new Map<string, string>([['/mnt/vircptfs-demo', n.mount], ['vircptfs-demo', n.domain]]);
  (n.checkpoints ?? []).forEach((c, i) => m.set(`demo-${i + 1}`, c));
  if (n.guest) m.set('/mnt/guest', n.guest);
  if (n.backup) m.set('/backup', n.backup);
  if (n.overlay) m.set('/tmp/sda-overlay.qcow2', n.overlay);
  return m;
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');

/** A README command line with its demo names replaced; fails if the README does not have it. */
export function readmeLine(line: string, names: RecipeNames): string {
  assert.ok(README.includes(line), `README.md no longer has the recipe line:\n  ${line}`);
  const subs = substitutions(names);
  // Longest first: /mnt/vircptfs-demo before vircptfs-demo.
  const keys = [...subs.keys()].sort((a, b) => b.length - a.length);
  return line.replace(new RegExp(keys.map(escapeRe).join('|'), 'g'), (k) => subs.get(k)!);
}

/**
 * A folder with `vircpt` on it, so README lines that call `vircpt` run as written: the built
 * program, with this Node.
 */
export async function binDir(dir: string): Promise<string> {
  const bin = path.join(dir, 'bin');
  await mkdir(bin, { recursive: true });
  const wrapper = path.join(bin, 'vircpt');
  await writeFile(wrapper, `#!/bin/sh\nexec '${process.execPath}' '${VIRCPT}' "$@"\n`);
  await chmod(wrapper, 0o755);
  return bin;
}

export interface BashResult { code: number; stdout: string; stderr: string }

/** Runs a script with bash in the repository (scripts/... paths resolve), `bin` first on PATH. */
export function bash(script: string, opts: { bin: string; cwd?: string; input?: 'pipe' }): ResultPromise {
  return execa('bash', ['-c', script], {
    cwd: opts.cwd ?? ROOT,
    reject: false,
    timeout: 120_000,
    stdin: opts.input ?? 'ignore',
    env: { LC_ALL: 'C', PATH: `${opts.bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` },
  });
}

export async function bashOk(script: string, opts: { bin: string; cwd?: string }): Promise<BashResult> {
  const r = await bash(script, opts);
  const out = { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  assert.equal(out.code, 0, `bash failed (${out.code}):\n${script}\nstdout: ${out.stdout}\nstderr: ${out.stderr}`);
  return out;
}

/** Loop devices whose backing file lies under `dir` (losetup -a lists "dev: [..]:ino (file)"). */
export async function loopsUnder(dir: string): Promise<string[]> {
  const out = await run('losetup', ['-a']);
  return out.split('\n').filter((l) => l.includes(`(${dir}/`));
}

/** Waits until no loop device uses a file under `dir`: umount's autoclear detaches it a moment later. */
export async function waitNoLoops(dir: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const loops = await loopsUnder(dir);
    if (loops.length === 0) return;
    if (Date.now() > deadline) assert.fail(`loop devices still on ${dir} after ${timeoutMs} ms: ${loops.join('; ')}`);
    await sleep(100);
  }
}

/** Every /proc/mounts entry at or under `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const lines = (await readFile('/proc/mounts', 'utf8')).split('\n');
  return lines.filter((l) => {
    const at = l.split(' ')[1] ?? '';
    return at === dir || at.startsWith(`${dir}/`);
  });
}

/** Nothing of a mount is left: not in /proc/mounts, no loop device on its files, no exports. */
export async function assertNothingLeft(vm: LabVm, mnt: string, guest?: string): Promise<void> {
  assert.equal(await mountEntry(mnt), undefined, `${mnt} still mounted`);
  if (guest) assert.deepEqual(await mountsUnder(guest), [], `${guest} still mounted`);
  assert.deepEqual(await loopsUnder(mnt), [], `loop devices left on ${mnt}`);
  assert.deepEqual(await leftoversOf(vm.name), [], `exports left for ${vm.name}`);
  assert.equal(await vm.jobType(), 'None', `${vm.name} still has a backup job`);
}
