// vircpt copy: every selected disk to DIR/<target>.raw, sparse, with a progress bar on a TTY.
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { VircptError } from '../../errors.js';
import { copyDisk } from '../../copy/sparse-copy.js';
import type { Ctx } from '../context.js';
import { withExport } from '../use-export.js';

const DISKS_AT_ONCE = 2;

/** Loaded only for a terminal: scripts and pipes never draw one. */
async function progressBar() {
  const { default: cliProgress } = await import('cli-progress');
  return new cliProgress.SingleBar({
    format: 'copying {bar} {percentage}% | {doneMiB}/{totalMiB} MiB | {eta_formatted} left',
    hideCursor: true, stream: process.stdout,
  }, cliProgress.Presets.shades_classic);
}

export async function copyCmd(ctx: Ctx, name: string, outDir: string): Promise<void> {
  await mkdir(outDir, { recursive: true });
  await withExport(ctx, name, async ({ exp, targets, release }) => {
    const files = targets.map((t) => path.join(outDir, `${t}.raw`));
    for (const f of files) {
      if (await stat(f).then(() => true, () => false)) throw new VircptError('INVALID', `${f} already exists; not overwriting it`);
    }
    const disks = await Promise.all(targets.map((t) => exp.disk(t)));
    const total = disks.reduce((n, d) => n + d.size, 0);
    const bar = ctx.isTTY ? await progressBar() : undefined;
    let done = 0;
    bar?.start(total, 0, { doneMiB: 0, totalMiB: (total / 2 ** 20).toFixed(0) });
    const onProgress = (delta: number) => {
      done += delta;
      bar?.update(done, { doneMiB: (done / 2 ** 20).toFixed(0) });
    };
    const started = Date.now();
    const results: string[] = [];
    // Once every disk is read, the export goes (libvirt ends the job) while the writes finish.
    let reading = disks.length;
    const onReadsDone = () => { if (--reading === 0) release(); };
    try {
      let next = 0;
      await Promise.all(Array.from({ length: DISKS_AT_ONCE }, async () => {
        while (next < disks.length) {
          const i = next++;
          const r = await copyDisk(disks[i]!, files[i]!, { signal: ctx.signal, onProgress, onReadsDone });
          results[i] = `${targets[i]}: ${files[i]} (${r.size} bytes, ${r.writtenBytes} written, the rest sparse)`;
        }
      }));
    } finally {
      bar?.stop();
    }
    const secs = (Date.now() - started) / 1000;
    ctx.stdout(`${results.join('\n')}\ncopied ${exp.domain} at checkpoint ${name}'s export (${exp.rec.startedAt}) in ${secs.toFixed(1)} s\n`);
  });
}
