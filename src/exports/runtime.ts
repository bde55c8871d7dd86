// Ownership of exports (docs/exports.md): every socket, pid file and scratch file lives under a
// directory named for this tool, the running instance and the domain:
//   <runDir>/<instance>/<domain>/            sockets, qemu-nbd pid files, export.json
//   <scratchRoot>/<instance>/<domain>/       backup scratch images
// An instance id is `<kind>-<pid>-<starttime>`: the process's kernel start time makes its
// liveness check immune to pid reuse, so a later run can clean up after a crashed one, and only
// after it. `vircpt export` uses the fixed instance `export`: its exports outlive the command and
// end only with `vircpt release`.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chown, mkdir, readdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';

export type InstanceKind = 'fs' | 'cli' | 'export';

export const PERSISTENT_INSTANCE = 'export';

export interface RuntimeDirs {
  /** Sockets and bookkeeping: only root and QEMU's user may reach it. */
  runDir: string;
  /** Scratch images (copy-before-write), which can grow up to each disk's size. */
  scratchRoot: string;
}

export function defaultRuntimeDirs(env: NodeJS.ProcessEnv = process.env): RuntimeDirs {
  const root = process.getuid?.() === 0;
  const runBase = root ? '/run' : (env.XDG_RUNTIME_DIR ?? `/tmp/vircptfs-${process.getuid?.()}`);
  return { runDir: path.join(runBase, 'vircptfs'), scratchRoot: root ? '/var/tmp/vircptfs' : path.join(runBase, 'vircptfs-scratch') };
}

/**
 * The kernel's start time of a live process (clock ticks since boot), or undefined when it is gone
 * or a zombie (PID 1 here may not reap orphans, so a dead daemon can linger as one).
 */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses: count fields after its closing ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

export function instanceId(kind: InstanceKind, pid = process.pid): string {
  if (kind === 'export') return PERSISTENT_INSTANCE;
  return `${kind}-${pid}-${processStartTime(pid) ?? '0'}`;
}

/** Whether the instance that owns a directory still runs. The persistent instance always "lives". */
export function instanceAlive(id: string): boolean {
  if (id === PERSISTENT_INSTANCE) return true;
  const m = /^(fs|cli)-(\d+)-(\d+)$/.exec(id);
  if (!m) return true; // not a name we make: never ours to clean
  return processStartTime(Number(m[2])) === m[3];
}

/**
 * A domain name as one path component: safe characters only, bounded length, and a hash of the
 * real name whenever it had to be changed, so two domains never share a directory and a socket
 * path stays under the 108-byte limit of sun_path.
 */
export function domainDirName(domain: string): string {
  const safe = domain.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 32);
  if (safe === domain && !safe.startsWith('.')) return safe;
  return `${safe}~${createHash('sha256').update(domain).digest('hex').slice(0, 8)}`;
}

export class Instance {
  readonly id: string;
  readonly dirs: RuntimeDirs;

  constructor(id: string, dirs: RuntimeDirs) {
    this.id = id;
    this.dirs = dirs;
  }

  /** This process's instance of the given kind. */
  static of(kind: InstanceKind, dirs: RuntimeDirs): Instance {
    return new Instance(instanceId(kind), dirs);
  }

  get persistent(): boolean {
    return this.id === PERSISTENT_INSTANCE;
  }

  domainDir(domain: string): string {
    return path.join(this.dirs.runDir, this.id, domainDirName(domain));
  }

  scratchDir(domain: string, scratchRoot = this.dirs.scratchRoot): string {
    return path.join(scratchRoot, this.id, domainDirName(domain));
  }

  /** Creates the domain's directories, reachable by root and `owner` (QEMU's user) only. */
  async prepare(domain: string, owner?: { uid: number; gid: number }, scratchRoot?: string): Promise<void> {
    await mkdir(this.dirs.runDir, { recursive: true, mode: 0o755 });
    await Promise.all([this.domainDir(domain), this.scratchDir(domain, scratchRoot)].map(async (dir) => {
      await mkdir(path.dirname(dir), { recursive: true, mode: 0o711 });
      await mkdir(dir, { recursive: true, mode: 0o700 });
      if (owner && process.getuid?.() === 0) await chown(dir, owner.uid, owner.gid);
    }));
  }

  /** Removes the domain's directories (and the instance's, once empty). */
  async cleanup(domain: string, scratchRoot?: string): Promise<void> {
    for (const dir of [this.domainDir(domain), this.scratchDir(domain, scratchRoot)]) {
      await rm(dir, { recursive: true, force: true });
      await rmdirIfEmpty(path.dirname(dir));
    }
  }
}

export async function rmdirIfEmpty(dir: string): Promise<void> {
  try {
    if ((await readdir(dir)).length === 0) await rmdir(dir);
  } catch {
    // already gone, or not empty
  }
}

/** The instance id a path of ours belongs to, or undefined when the path is not under runDir. */
export function ownerOfPath(dirs: RuntimeDirs, p: string | undefined): string | undefined {
  if (!p) return undefined;
  const rel = path.relative(dirs.runDir, p);
  if (rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep)[0];
}

/**
 * This machine's identity among the backup servers that use one hypervisor: the first 12 hex
 * digits of /etc/machine-id. A remote export carries it (in its scratch file names), so a server
 * never takes another server's job for one of its own dead instances. VIRCPTFS_HOST_ID replaces
 * it, for tests only (two "hosts" on one machine).
 */
export function hostId(env: NodeJS.ProcessEnv = process.env): string {
  const forced = env.VIRCPTFS_HOST_ID;
  if (forced !== undefined && /^[a-z0-9]{1,32}$/.test(forced)) return forced;
  try {
    const id = readFileSync('/etc/machine-id', 'utf8').trim().toLowerCase();
    if (/^[0-9a-f]{12,}$/.test(id)) return id.slice(0, 12);
  } catch {
    // no machine-id (a minimal container): fall through
  }
  return 'nohostid';
}
