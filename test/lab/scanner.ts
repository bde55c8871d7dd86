// A scanner's side of hot-plug tests: its QEMU asked over QMP (through libvirt), and what it got
// read through its own NBD server, so a test sees exactly what a guest inside would read.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { virsh } from './lab.js';
import { run } from './tools.js';

export interface BlockEntry { device: string; qdev?: string; inserted?: { 'node-name': string; ro: boolean } }

export async function qmp<T>(dom: string, execute: string, args?: object): Promise<T> {
  const out = await virsh('qemu-monitor-command', '--', dom, JSON.stringify({ execute, ...(args && { arguments: args }) }));
  const reply = JSON.parse(out) as { return?: T; error?: { desc: string } };
  if (reply.error) throw new Error(`${dom}: ${execute}: ${reply.error.desc}`);
  return reply.return as T;
}

/** The scanner's block devices, by qdev id (libvirt names a hot-plugged disk's device by its alias;
 *  a virtio one's qdev is the path of its backend). */
export async function blockDevices(dom: string): Promise<Map<string, BlockEntry>> {
  const list = await qmp<BlockEntry[]>(dom, 'query-block');
  return new Map(list.map((b) => [(b.qdev ?? b.device).replace(/^\/machine\/peripheral\/([^/]+)\/virtio-backend$/, '$1'), b]));
}

/** Copies a hot-plugged disk as the scanner's QEMU sees it: its own NBD server, read-only. */
export async function readThroughScanner(dom: string, alias: string, sockDir: string, out: string): Promise<void> {
  const node = (await blockDevices(dom)).get(alias)?.inserted?.['node-name'];
  assert.ok(node, `${dom} has no block node for ${alias}`);
  const sock = path.join(sockDir, `${alias}.sock`);
  await qmp(dom, 'nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
  try {
    await qmp(dom, 'block-export-add', { type: 'nbd', id: 'vcpt-test', 'node-name': node, name: 'd', writable: false });
    try {
      await run('nbdcopy', [`nbd+unix:///d?socket=${sock}`, out]);
    } finally {
      await qmp(dom, 'block-export-del', { id: 'vcpt-test' });
    }
  } finally {
    await qmp(dom, 'nbd-server-stop');
  }
}

export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  return x.equals(y);
}

export const liveXml = (dom: string) => virsh('dumpxml', '--', dom);

/** Running `virsh attach-device` calls for a domain (pids). */
export async function attachCalls(dom: string): Promise<number[]> {
  const pids: number[] = [];
  for (const p of (await readdir('/proc')).filter((x) => /^\d+$/.test(x))) {
    const cmd = (await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (cmd.some((a) => a.endsWith('virsh')) && cmd.includes('attach-device') && cmd.includes(dom)) pids.push(Number(p));
  }
  return pids;
}

export async function waitFor(cond: () => Promise<boolean>, what: string, ms = 30_000, everyMs = 100): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(everyMs);
  }
}
