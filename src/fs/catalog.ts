// What the tree shows, from libvirt, cached briefly: `ls -lR` and `find` must be quick and must
// never start an export, and a new checkpoint should appear within a few seconds.
import { LRUCache } from 'lru-cache';
import { VircptError } from '../errors.js';
import { listCheckpoints, type Checkpoint } from '../libvirt/checkpoint.js';
import { blockInfo, listDomains, type BlockInfo } from '../libvirt/domain.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { isPathComponent } from './tree.js';

export interface DomainEntry {
  name: string;
  checkpoints: Checkpoint[];
  sizes: Map<string, BlockInfo>;
}

export interface CatalogOptions {
  /** Only these domains (-o domain=NAME); all when empty. */
  domains?: readonly string[];
  /** How long a listing stays fresh (ms). */
  ttlMs?: number;
  /** Where names left out of the tree are reported (once each). */
  log?: Logger;
}

const DOMAINS_KEY = '';
/** A value younger than this is trusted when a name is missing from it (see #lookup). */
const MISS_RECHECK_MS = 500;

export class Catalog {
  readonly #virsh: Virsh;
  readonly #only: ReadonlySet<string>;
  readonly #domainList: LRUCache<string, string[]>;
  readonly #entries: LRUCache<string, DomainEntry>;
  readonly #log: Logger | undefined;
  readonly #leftOut = new Set<string>();

  constructor(virsh: Virsh, opts: CatalogOptions = {}) {
    this.#virsh = virsh;
    this.#log = opts.log;
    this.#only = new Set(opts.domains ?? []);
    const ttl = opts.ttlMs ?? 2000;
    // Stale entries are served while a refresh runs in the background: a lookup never waits on
    // virsh once the domain has been seen (a reader at EOF asks for attributes again and again).
    const stale = { allowStale: true, noDeleteOnStaleGet: true, allowStaleOnFetchRejection: true } as const;
    this.#domainList = new LRUCache<string, string[]>({
      max: 1, ttl, ...stale,
      fetchMethod: async () => (await listDomains(virsh)).map((d) => d.name)
        .filter((n) => this.#allowed(n) && this.#showable(n, `domain ${JSON.stringify(n)}`)),
    });
    this.#entries = new LRUCache<string, DomainEntry>({ max: 1024, ttl, ...stale, fetchMethod: (name) => this.#load(name) });
  }

  #allowed(name: string): boolean {
    return this.#only.size === 0 || this.#only.has(name);
  }

  /** A name a path can hold as it is; any other is left out (logged once), never renamed, so that
   *  no path can lead to a domain or checkpoint other than the one it names. */
  #showable(name: string, what: string): boolean {
    if (isPathComponent(name)) return true;
    if (!this.#leftOut.has(what) && this.#leftOut.size < 1000) {
      this.#leftOut.add(what);
      this.#log?.warn(`${what} left out of the tree: not usable as a file name`);
    }
    return false;
  }

  async domains(): Promise<string[]> {
    return (await this.#domainList.fetch(DOMAINS_KEY)) ?? [];
  }

  async domain(name: string): Promise<DomainEntry> {
    if (!this.#allowed(name)) throw new VircptError('NOT_FOUND', `no domain ${name}`);
    const names = await this.#lookup(this.#domainList, DOMAINS_KEY, (list) => list.includes(name));
    if (!names?.includes(name)) throw new VircptError('NOT_FOUND', `no domain ${name}`);
    const entry = await this.#entries.fetch(name);
    if (!entry) throw new VircptError('NOT_FOUND', `no domain ${name}`);
    return entry;
  }

  async checkpoint(domain: string, name: string): Promise<{ entry: DomainEntry; checkpoint: Checkpoint }> {
    await this.domain(domain);
    const has = (e: DomainEntry) => e.checkpoints.some((c) => c.name === name);
    const entry = await this.#lookup(this.#entries, domain, has);
    const checkpoint = entry?.checkpoints.find((c) => c.name === name);
    if (!entry || !checkpoint) throw new VircptError('NOT_FOUND', `domain ${domain} has no checkpoint ${name}`);
    return { entry, checkpoint };
  }

  /**
   * A cached value that may be stale; when it lacks what is looked for and is older than
   * MISS_RECHECK_MS, it is fetched afresh before the answer is no (a checkpoint created a moment
   * ago must not be ENOENT). Young values are trusted: the kernel caches no negative lookups, and
   * probes of names that do not exist (.Trash, autorun.inf) must not each cost virsh calls.
   */
  async #lookup<T extends {}>(cache: LRUCache<string, T>, key: string, found: (v: T) => boolean): Promise<T | undefined> {
    const value = await cache.fetch(key);
    if (value !== undefined && found(value)) return value;
    const age = cache.ttl - cache.getRemainingTTL(key);
    if (value !== undefined && age < MISS_RECHECK_MS) return value;
    return cache.fetch(key, { forceRefresh: true, allowStale: false });
  }

  /** Forget what is cached (tests, or after we changed something ourselves). */
  refresh(): void {
    this.#domainList.clear();
    this.#entries.clear();
  }

  async #load(name: string): Promise<DomainEntry> {
    try {
      const [all, sizes] = await Promise.all([listCheckpoints(this.#virsh, name), blockInfo(this.#virsh, name)]);
      const checkpoints = all.filter((c) => this.#showable(c.name, `checkpoint ${JSON.stringify(c.name)} of ${name}`));
      return { name, checkpoints, sizes };
    } catch (err) {
      if (err instanceof VircptError && err.code === 'DOMAIN_NOT_FOUND') {
        throw new VircptError('NOT_FOUND', `no domain ${name}`, { cause: err });
      }
      throw err;
    }
  }
}

/** The disks of a checkpoint that carry its bitmap: the files of its directory. */
export function checkpointDisks(c: Checkpoint): string[] {
  return c.disks.filter((d) => d.checkpoint === 'bitmap').map((d) => d.target);
}
