// A bench-only prototype for bench/nbd-client.ts's TLS rows: what a worker thread per connection
// would give. Each worker runs an NbdClient over TLS (TCP, STARTTLS, decryption and the parsing of
// replies all off the main thread) and answers the main thread's reads with transferred
// ArrayBuffers, which the main thread copies into the caller's buffer and sends back for reuse.
// Not product code: no aborts, no error paths beyond failing the run.
import { parentPort, Worker, workerData } from 'node:worker_threads';
import type { Extent } from '../src/nbd/extents.js';
import { NbdClient, type NbdClientOptions } from '../src/nbd/index.js';
import type { ReadableExport } from '../test/nbd/read-all.js';

type ToWorker = { id: number; offset: number; length: number } | { give: ArrayBuffer } | { extents: true } | { close: true };
type FromWorker = { id: number; data: ArrayBuffer; length: number } | { extents: Extent[] } | { ready: { size: number; requestSize: number } } | { closed: true };

async function workerMain(port: NonNullable<typeof parentPort>, options: NbdClientOptions): Promise<void> {
  const client = await NbdClient.connect(options);
  const free: ArrayBuffer[] = [];
  port.on('message', (m: ToWorker) => {
    if ('give' in m) free.push(m.give);
    else if ('extents' in m) {
      void (async () => {
        const extents: Extent[] = [];
        for await (const e of client.blockStatus('base:allocation', 0, client.size)) extents.push(e);
        port.postMessage({ extents } satisfies FromWorker);
      })();
    } else if ('close' in m) void client.close().then(() => port.postMessage({ closed: true } satisfies FromWorker));
    else {
      const data = free.pop() ?? new ArrayBuffer(client.requestSize);
      void client.read(m.offset, m.length, Buffer.from(data, 0, m.length))
        .then(() => port.postMessage({ id: m.id, data, length: m.length } satisfies FromWorker, [data]));
    }
  });
  port.postMessage({ ready: { size: client.size, requestSize: client.requestSize } } satisfies FromWorker);
}

if (parentPort !== null && (workerData as { nbdTlsWorker?: boolean } | undefined)?.nbdTlsWorker) {
  await workerMain(parentPort, (workerData as { options: NbdClientOptions }).options);
}

function next<T>(w: Worker, pick: (m: FromWorker) => T | undefined): Promise<T> {
  return new Promise((resolve, reject) => {
    const on = (m: FromWorker) => {
      const v = pick(m);
      if (v !== undefined) { w.off('message', on); resolve(v); }
    };
    w.on('message', on);
    w.once('error', reject);
  });
}

/** `connections` workers, each with its own TLS connection, behind one ReadableExport. */
export async function workerExport(options: NbdClientOptions, connections: number): Promise<ReadableExport & { close(): Promise<void> }> {
  const workers = Array.from({ length: connections }, () =>
    new Worker(new URL(import.meta.url), { workerData: { nbdTlsWorker: true, options } }));
  const infos = await Promise.all(workers.map((w) => next(w, (m) => ('ready' in m ? m.ready : undefined))));
  const pending = new Map<number, { into: Buffer; resolve(b: Buffer): void }>();
  let nextId = 1;
  let turn = 0;
  for (const w of workers) {
    w.on('message', (m: FromWorker) => {
      if (!('id' in m)) return;
      const p = pending.get(m.id)!;
      pending.delete(m.id);
      p.into.set(new Uint8Array(m.data, 0, m.length));
      w.postMessage({ give: m.data } satisfies ToWorker, [m.data]);
      p.resolve(p.into);
    });
  }
  return {
    size: infos[0]!.size,
    requestSize: infos[0]!.requestSize,
    contexts: new Map([['base:allocation', 1]]),
    read(offset, length, into = Buffer.allocUnsafe(length)) {
      return new Promise<Buffer>((resolve) => {
        const id = nextId++;
        pending.set(id, { into: into.subarray(0, length), resolve });
        workers[turn++ % connections]!.postMessage({ id, offset, length } satisfies ToWorker);
      });
    },
    async *blockStatus() {
      const first = workers[0]!;
      const extents = next(first, (m) => ('extents' in m ? m.extents : undefined));
      first.postMessage({ extents: true } satisfies ToWorker);
      yield* await extents;
    },
    async close() {
      await Promise.all(workers.map(async (w) => {
        const closed = next(w, (m) => ('closed' in m ? true : undefined));
        w.postMessage({ close: true } satisfies ToWorker);
        await closed;
        await w.terminate();
      }));
    },
  };
}
