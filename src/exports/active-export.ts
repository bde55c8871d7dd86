// A started export as the filesystem uses it: its record, lazily opened NBD disks, liveness,
// and the dirty map of a checkpoint at the export's point in time.
import { VircptError } from '../errors.js';
import type { Virsh } from '../libvirt/virsh.js';
import { toMapExtents, type DirtyMap } from './dirty-map.js';
import { exportServing } from './discover.js';
import type { ExportRecord } from './export.js';
import { NbdDisk, type NbdDiskOptions } from './nbd-disk.js';

const LIVENESS_CHECK_MS = 1000;

export class ActiveExport {
  /** Open files holding it (the manager counts). */
  refs = 0;
  readonly rec: ExportRecord;
  /** Started by another instance of ours: read through it, never stop it. */
  readonly borrowed: boolean;
  readonly startedAt: Date;
  readonly #virsh: Virsh;
  readonly #diskOptions: NbdDiskOptions;
  readonly #disks = new Map<string, Promise<NbdDisk>>();
  #checkedAt = Date.now();
  #gone = false;
  #gaveUp: VircptError | undefined;
  #closed: Promise<void> | undefined;

  constructor(rec: ExportRecord, borrowed: boolean, virsh: Virsh, diskOptions: NbdDiskOptions) {
    this.rec = rec;
    this.borrowed = borrowed;
    this.startedAt = new Date(rec.startedAt);
    this.#virsh = virsh;
    this.#diskOptions = diskOptions;
  }

  get domain(): string {
    return this.rec.domain;
  }

  hasDisk(target: string): boolean {
    return this.rec.disks.some((d) => d.target === target);
  }

  /** The disk's NBD pool, connected on first use; a failed connect is forgotten. */
  disk(target: string): Promise<NbdDisk> {
    if (this.#closed) return Promise.reject(new VircptError('NBD_CLOSED', `the export of ${this.domain} was released`));
    if (this.#gaveUp) return Promise.reject(this.#gaveUp);
    let p = this.#disks.get(target);
    if (!p) {
      const d = this.rec.disks.find((x) => x.target === target);
      if (!d) {
        return Promise.reject(new VircptError('NOT_FOUND', `the export of ${this.domain} has no disk ${target}`));
      }
      p = NbdDisk.open(this.rec, d, this.#diskOptions);
      p.catch(() => this.#disks.delete(target));
      this.#disks.set(target, p);
    }
    return p;
  }

  /** The meta context holding `checkpoint`'s dirty bitmap for a disk, or BUSY when this export lacks it. */
  dirtyContext(checkpoint: string, target: string): string {
    const ctx = this.rec.disks.find((d) => d.target === target)?.dirtyContexts[checkpoint];
    if (!ctx) {
      throw new VircptError('BUSY',
        `domain ${this.domain} is exported at checkpoint ${this.rec.checkpoint ?? '?'}; the dirty map of ${checkpoint} ` +
        'needs its own export: close the files of this domain and retry once it is released');
    }
    return ctx;
  }

  async dirtyMap(checkpoint: string, targets: string[]): Promise<DirtyMap> {
    const contexts = targets.map((t) => this.dirtyContext(checkpoint, t));
    const disks: DirtyMap['disks'] = {};
    await Promise.all(targets.map(async (t, i) => {
      const disk = await this.disk(t);
      disks[t] = { size: disk.size, extents: toMapExtents(await disk.extents(contexts[i]!), disk.size) };
    }));
    const ordered = Object.fromEntries(targets.map((t) => [t, disks[t]!]));
    return { domain: this.domain, checkpoint, exportedAt: this.rec.startedAt, disks: ordered };
  }

  /** False once its servers went away (a dead NBD connection, the job or qemu-nbd gone). */
  async alive(): Promise<boolean> {
    if (this.#gone) return false;
    let connected = false;
    for (const p of this.#disks.values()) {
      const d = await p.catch(() => undefined);
      if (d?.dead) return !(this.#gone = true);
      connected ||= d !== undefined;
    }
    // Live NBD connections are proof enough (a dead server closes them); ask libvirt only when
    // no disk is connected yet.
    if (connected) return true;
    if (Date.now() - this.#checkedAt > LIVENESS_CHECK_MS) {
      this.#checkedAt = Date.now();
      if (!(await exportServing(this.#virsh, this.rec))) this.#gone = true;
    }
    return !this.#gone;
  }

  /**
   * Given up (the scratch guard): gone at once, and every read of its disks fails with `reason`
   * from now on, also those the block cache could answer (files.ts checks `dead`).
   */
  giveUp(reason: VircptError): void {
    this.#gone = true;
    this.#gaveUp ??= reason;
    for (const p of this.#disks.values()) void p.then((d) => d.destroy(reason), () => undefined);
  }

  close(): Promise<void> {
    return (this.#closed ??= Promise.all(
      [...this.#disks.values()].map((p) => p.then((d) => d.close(), () => undefined)),
    ).then(() => undefined));
  }
}
