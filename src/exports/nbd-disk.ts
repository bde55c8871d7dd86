// One disk of an export, as the rest of the program reads it: an NBD pool (several connections
// where the server allows multi-conn) that is also the block cache's BlockSource.
import type { BlockSource, Extent as CacheExtent } from '../cache/index.js';
import { VircptError } from '../errors.js';
import { NbdPool, NBD_STATE_ZERO, type ConnectionOptions, type Extent } from '../nbd/index.js';
import type { DiskExport, ExportRecord } from './export.js';

export const BASE_ALLOCATION = 'base:allocation';

export interface NbdDiskOptions {
  /** Connections per disk where the server advertises multi-conn (default 2). */
  connections?: number;
  requestTimeoutMs?: number;
  /** Bytes per read request and requests in flight per connection (the client's defaults otherwise). */
  requestSize?: number;
  maxInFlight?: number;
  signal?: AbortSignal;
}

/** Where a disk's NBD server listens: our Unix socket, or the remote hypervisor's TCP port. */
export function whereToConnect(rec: ExportRecord, disk: DiskExport): ConnectionOptions {
  const remote = rec.remote;
  if (remote === undefined) return { socketPath: disk.socket };
  // An export started with tls='yes' is read over TLS or not at all.
  return { host: remote.host, port: remote.port, tls: { mode: remote.tls ? 'require' : 'off', certs: remote.certs } };
}

export class NbdDisk implements BlockSource {
  readonly id: string;
  readonly size: number;
  readonly maxRequest: number;
  readonly disk: DiskExport;
  readonly #pool: NbdPool;

  private constructor(id: string, disk: DiskExport, pool: NbdPool) {
    this.id = id;
    this.disk = disk;
    this.#pool = pool;
    this.size = pool.size;
    this.maxRequest = pool.blockSize.maximum;
  }

  static async open(rec: ExportRecord, disk: DiskExport, opts: NbdDiskOptions = {}): Promise<NbdDisk> {
    const pool = await NbdPool.connect({
      ...whereToConnect(rec, disk),
      exportName: disk.exportName,
      metaContexts: [BASE_ALLOCATION, ...Object.values(disk.dirtyContexts)],
      connections: opts.connections ?? 2,
      ...(opts.requestTimeoutMs !== undefined ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
      ...(opts.requestSize !== undefined ? { requestSize: opts.requestSize } : {}),
      ...(opts.maxInFlight !== undefined ? { maxInFlight: opts.maxInFlight } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    // A new export is a new id: blocks cached from an older point in time never serve this one.
    return new NbdDisk(`${rec.owner}/${rec.domain}/${rec.startedAt}/${disk.target}`, disk, pool);
  }

  get pool(): NbdPool {
    return this.#pool;
  }

  /** Every connection of the pool has failed: the export went away. */
  get dead(): boolean {
    return this.#pool.clients.every((c) => c.failure !== undefined);
  }

  async read(offset: number, length: number, into: Buffer, signal?: AbortSignal): Promise<void> {
    await this.#pool.read(offset, length, into, signal);
  }

  /** Ranges that base:allocation promises read as zeros (NBD_STATE_ZERO). */
  async zeroExtents(): Promise<CacheExtent[]> {
    const out: CacheExtent[] = [];
    for (const e of await this.extents(BASE_ALLOCATION)) {
      if (e.flags & NBD_STATE_ZERO) out.push({ offset: e.offset, length: e.length });
    }
    return out;
  }

  /** The whole disk's extents in one meta context (merged, gap-free). */
  async extents(context: string, signal?: AbortSignal): Promise<Extent[]> {
    if (!this.#pool.contexts.has(context)) {
      throw new VircptError('NBD_UNSUPPORTED', `disk ${this.disk.target}: the export has no context ${context}`);
    }
    const out: Extent[] = [];
    for await (const e of this.#pool.blockStatus(context, 0, this.size, signal)) out.push(e);
    return out;
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  /** Fails every request at once (with `error`, when given) and drops the connections. */
  destroy(error?: VircptError): void {
    this.#pool.destroy(error);
  }
}
