// The kernel's view of mounts (proc(5) mountinfo) and a FUSE mount's read-ahead (sysfs).
import { readFile, realpath, writeFile } from 'node:fs/promises';
import { VircptError } from '../../errors.js';

export interface MountinfoEntry { devId: string; mountpoint: string; fstype: string; source: string }

/** proc(5) /proc/pid/mountinfo: "id parent major:minor root mountpoint opts ... - fstype source ...". */
export async function readMountinfo(pid: number | 'self' = 'self'): Promise<MountinfoEntry[]> {
  const text = await readFile(`/proc/${pid}/mountinfo`, 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text.split('\n').filter(Boolean).map((line) => {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const at = (i: number) => unescape(fields[i] ?? '');
    return { devId: at(2), mountpoint: at(4), fstype: at(sep + 1), source: at(sep + 2) };
  });
}

export async function fuseMountEntry(mountpoint: string): Promise<MountinfoEntry | undefined> {
  return (await readMountinfo()).findLast((m) => m.mountpoint === mountpoint && m.fstype.startsWith('fuse'));
}

/** The kernel reads ahead 128 KiB on a FUSE mount (the bdi's default); raise it after mounting. */
export async function setReadAhead(mountpoint: string, kb: number): Promise<void> {
  if (!Number.isInteger(kb) || kb < 0) throw new VircptError('INVALID', `bad read-ahead ${kb} KiB`);
  const entry = await fuseMountEntry(await realpath(mountpoint));
  if (!entry) throw new VircptError('NOT_FOUND', `no FUSE mount at ${mountpoint}`);
  await writeFile(`/sys/class/bdi/${entry.devId}/read_ahead_kb`, `${kb}\n`);
}
