// vircptfs's command line and -o options (README "vircptfs"; docs/design.md), parsed and
// validated before anything is mounted: an unknown option must not leave a dead mount behind.
import { execFileSync } from 'node:child_process';
import { VircptError } from '../errors.js';
import { parsePorts, parseTlsMode, type RemoteOptions } from '../exports/remote.js';
import { DEFAULT_SCRATCH_RESERVE, type ScratchReserve } from '../exports/scratch-guard.js';

export interface FsOptions {
  source: string;
  mountpoint: string;
  foreground: boolean;
  debug: boolean;
  /** Only these domains; all when empty. */
  domains: string[];
  cacheBytes: number;
  idleSeconds: number;
  scratch: string | undefined;
  /** Free space kept on the scratch filesystem: below it, exports are given up (and none start). */
  scratchReserve: ScratchReserve;
  freeze: boolean;
  allowOther: boolean;
  /** Owner and group of every file and directory (uid=, gid=); the mounting user's when unset. */
  uid: number | undefined;
  gid: number | undefined;
  /** Taken away from 0444 (files) and 0555 (directories): the kernel checks these modes. */
  umask: number;
  /** Kernel read-ahead for the mount (KiB). */
  readaheadKb: number;
  /** When disk files go through the kernel's page cache (page_cache=; direct_io is `never`). */
  pageCache: PageCachePolicy;
  /** Daemon log file. */
  logFile: string | undefined;
  /** A remote hypervisor's NBD over TCP: nbd_bind=, nbd_host=, nbd_ports=, nbd_tls=, nbd_certs=. */
  remote: RemoteOptions;
  /** A remote hypervisor: scratch bytes the mount's exports may use there together (0: unguarded). */
  scratchBudget: number;
}

/**
 * always: every open of a disk file uses the page cache (kept while the export is the same);
 * never: none does (direct_io); auto: the first reader of a file in an export goes past it, a
 * reader that comes back (an earlier open read from it and closed) uses it. docs/read-path.md.
 */
export type PageCachePolicy = 'auto' | 'always' | 'never';
const PAGE_CACHE_POLICIES: readonly PageCachePolicy[] = ['auto', 'always', 'never'];

export const DEFAULTS = { cacheBytes: 256 * 1024 * 1024, idleSeconds: 30, readaheadKb: 1024, umask: 0o077, pageCache: 'auto' as PageCachePolicy } as const;

/**
 * What mount(8), fstab and systemd pass along (generic mount flags, fstab and utab bookkeeping,
 * boot ordering), meaningless here: accepted and ignored, with any value (`user=NAME`,
 * `comment=...`), as are names starting with x- or X- (userspace options). The one list of
 * them: the mount helper (mount-helper/mount.fuse.vircptfs) passes every option on to vircptfs,
 * and `--help` and the README show this list.
 */
export const MOUNT8_OPTIONS: readonly string[] = ['defaults', 'ro', 'rw', 'dev', 'nodev', 'suid', 'nosuid', 'exec',
  'noexec', 'atime', 'noatime', 'relatime', 'strictatime', 'nodiratime', 'async', 'sync', 'auto', 'noauto', 'user',
  'users', 'nouser', 'owner', 'group', 'nofail', '_netdev', 'comment', 'helper', 'uhelper',
  // The kernel always checks modes (fs/mount.ts): kept so that existing fstab lines still mount.
  'default_permissions'];
const IGNORED = new Set(MOUNT8_OPTIONS);
/** The largest uid/gid: (uid_t)-1 means "unchanged" to the kernel. */
const MAX_ID = 0xffff_fffe;

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw usage(`${what}=${text}: not a size (like 256M or 1G)`);
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
}

/** `SIZE` (like 1G) or `N%` of the filesystem's size; 0 turns the scratch guard off. */
export function parseReserve(text: string, what: string): ScratchReserve {
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  if (pct) {
    const percent = Number(pct[1]);
    if (percent >= 100) throw usage(`${what}=${text}: a percentage below 100`);
    return { percent };
  }
  try {
    return { bytes: parseSize(text, what) };
  } catch {
    throw usage(`${what}=${text}: not a size (like 1G or 512M) or a percentage (like 5%)`);
  }
}

function parseUint(text: string, what: string, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) > max) throw usage(`${what}=${text}: not a whole number up to ${max}`);
  return Number(text);
}

/**
 * uid= / gid=: a number, or a user or group name (getent: /etc/passwd, /etc/group and whatever
 * else NSS is told to ask), resolved once, before mounting.
 */
function parseId(text: string, what: 'uid' | 'gid'): number {
  if (/^\d+$/.test(text)) return parseUint(text, what, MAX_ID);
  const db = what === 'uid' ? 'passwd' : 'group';
  let entry = '';
  try {
    entry = execFileSync('getent', [db, '--', text], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    throw usage(`${what}=${text}: no such ${what === 'uid' ? 'user' : 'group'}`);
  }
  const id = entry.split(':')[2];
  if (id === undefined || !/^\d+$/.test(id)) throw usage(`${what}=${text}: getent ${db} gave no number`);
  return Number(id);
}

function parseUmask(text: string): number {
  if (!/^[0-7]{1,4}$/.test(text) || Number.parseInt(text, 8) > 0o777) throw usage(`umask=${text}: not an octal mode up to 0777 (like 0027)`);
  return Number.parseInt(text, 8);
}

function parsePageCache(value: string): PageCachePolicy {
  const p = PAGE_CACHE_POLICIES.find((x) => x === value);
  if (!p) throw usage(`page_cache=${value}: one of ${PAGE_CACHE_POLICIES.join(', ')}`);
  return p;
}

function usage(message: string): VircptError {
  return new VircptError('USAGE', message);
}

/** Applies one -o option (already split on commas). */
function applyOption(o: FsOptions, opt: string): void {
  const eq = opt.indexOf('=');
  const key = eq < 0 ? opt : opt.slice(0, eq);
  const value = eq < 0 ? undefined : opt.slice(eq + 1);
  const need = () => {
    if (value === undefined || value === '') throw usage(`option ${key} needs a value (${key}=...)`);
    return value;
  };
  switch (key) {
    case 'domain': o.domains.push(need()); return;
    case 'cache': o.cacheBytes = parseSize(need(), key);
      if (o.cacheBytes < 16 * 2 ** 20) throw usage(`cache=${value}: at least 16M`);
      return;
    case 'idle': o.idleSeconds = parseUint(need(), key, 86400); return;
    case 'scratch': o.scratch = need(); return;
    case 'scratch_reserve': o.scratchReserve = parseReserve(need(), key); return;
    case 'readahead': o.readaheadKb = parseUint(need(), key, 65536); return;
    case 'log': o.logFile = need(); return;
    case 'direct_io': o.pageCache = 'never'; return;
    case 'page_cache': o.pageCache = parsePageCache(need()); return;
    case 'freeze': o.freeze = true; return;
    case 'nofreeze': o.freeze = false; return;
    case 'allow_other': o.allowOther = true; return;
    case 'uid': o.uid = parseId(need(), key); return;
    case 'gid': o.gid = parseId(need(), key); return;
    case 'umask': o.umask = parseUmask(need()); return;
    case 'nbd_bind': o.remote.bind = need(); return;
    case 'nbd_host': o.remote.host = need(); return;
    case 'nbd_ports': o.remote.ports = parsePorts(need(), key); return;
    case 'nbd_tls': o.remote.tls = parseTlsMode(need(), key); return;
    case 'nbd_certs': o.remote.certs = need(); return;
    case 'scratch_budget': o.scratchBudget = parseSize(need(), key); return;
    default:
      if (IGNORED.has(key) || /^[xX]-/.test(key)) return;
      throw usage(`unknown option: ${opt}`);
  }
}

/** Parses `[-f] [-d] [-o OPTS]... SOURCE MOUNTPOINT` (options may come before or after). */
export function parseFsArgs(argv: readonly string[]): FsOptions {
  const o: FsOptions = {
    source: '', mountpoint: '', foreground: false, debug: false, domains: [], cacheBytes: DEFAULTS.cacheBytes,
    idleSeconds: DEFAULTS.idleSeconds, scratch: undefined, scratchReserve: DEFAULT_SCRATCH_RESERVE, freeze: true,
    allowOther: false, uid: undefined, gid: undefined, umask: DEFAULTS.umask, readaheadKb: DEFAULTS.readaheadKb, pageCache: DEFAULTS.pageCache, logFile: undefined, remote: {}, scratchBudget: 0,
  };
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-f') o.foreground = true;
    else if (a === '-d') o.debug = o.foreground = true;
    else if (a === '-o' || a.startsWith('-o')) {
      const list = a === '-o' ? argv[++i] : a.slice(2);
      if (list === undefined) throw usage('-o needs a list of options');
      for (const opt of list.split(',').filter((x) => x.length > 0)) applyOption(o, opt);
    } else if (a.startsWith('-') && a !== '-') throw usage(`unknown flag: ${a}`);
    else positional.push(a);
  }
  if (positional.length !== 2) throw usage(`expected SOURCE and MOUNTPOINT, got ${positional.length} argument(s)`);
  [o.source, o.mountpoint] = positional as [string, string];
  return o;
}

export function sourceUri(source: string, defaultUri: string): string {
  if (source === 'default') return defaultUri;
  if (!/^[a-z][a-z0-9+]*:\/\//.test(source)) throw usage(`SOURCE ${source}: not a libvirt URI (like qemu:///system) or 'default'`);
  return source;
}
