// Disk images for lab VMs: empty qcow2, raw, or a realistic guest disk (GPT, one ext4 partition
// at sector 2048 holding given files) made without a guest (docs/lab.md).
import { mkdir, mkdtemp, rm, writeFile, chmod } from 'node:fs/promises';
import path from 'node:path';
import { requireTools, run } from './tools.js';

export const PARTITION_OFFSET = 2048 * 512;
const MiB = 1024 * 1024;

export async function makeEmptyImage(file: string, size: number, format: 'qcow2' | 'raw' = 'qcow2'): Promise<void> {
  await requireTools('qemu-img');
  await run('qemu-img', ['create', '-q', '-f', format, file, String(size)]);
  await chmod(file, 0o644);
}

/**
 * A qcow2 guest disk: GPT with one Linux partition from sector 2048, ext4 inside holding `files`
 * (relative path -> content). Returns nothing; the files are at PARTITION_OFFSET in the raw view.
 */
export async function makeExt4Image(
  file: string,
  size: number,
  files: Record<string, string | Buffer>,
  /** Partition size; the rest of the disk stays unpartitioned. Default: the whole disk. */
  partitionSize?: number,
): Promise<void> {
  await requireTools('qemu-img', 'sfdisk', 'mkfs.ext4');
  const work = await mkdtemp(`${file}.work-`);
  try {
    const content = path.join(work, 'content');
    for (const [rel, data] of Object.entries(files)) {
      const p = path.join(content, rel);
      await mkdir(path.dirname(p), { recursive: true });
      await writeFile(p, data);
    }
    await mkdir(content, { recursive: true });
    const raw = path.join(work, 'disk.raw');
    await run('truncate', ['-s', String(size), raw]);
    // The partition ends before the backup GPT (the last 33 sectors); keep whole MiBs for ext4.
    const fsBytes = partitionSize ?? Math.floor((size - PARTITION_OFFSET - 34 * 512) / MiB) * MiB;
    const part = `label: gpt\nstart=2048, size=${fsBytes / 512}, type=linux\n`;
    await run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', raw], { input: part });
    await run('mkfs.ext4', ['-q', '-F', '-E', `offset=${PARTITION_OFFSET}`, '-d', content, raw, `${fsBytes / 1024}k`]);
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
    await chmod(file, 0o644);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The guest-visible bytes of an image, read without taking its lock (-U), as a raw file. */
export async function imageToRaw(image: string, out: string): Promise<void> {
  await requireTools('qemu-img');
  await run('qemu-img', ['convert', '-U', '-O', 'raw', image, out]);
}
