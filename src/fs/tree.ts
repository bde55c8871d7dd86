// The path model (pure): what each path of the mount names.
//   /                                   the root: a directory per domain
//   /<domain>/                          a directory per checkpoint
//   /<domain>/<checkpoint>/<target>.raw a disk at the export's point in time
//   /<domain>/<checkpoint>/dirty-map.json

export const DIRTY_MAP = 'dirty-map.json';
const RAW_SUFFIX = '.raw';
/** The longest path component, in bytes (NAME_MAX). FUSE forwards names of up to 1024 bytes:
 *  the length is ours to refuse. */
export const NAME_MAX = 255;

export type Node =
  | { kind: 'root' }
  | { kind: 'domain'; domain: string }
  | { kind: 'checkpoint'; domain: string; checkpoint: string }
  | { kind: 'disk'; domain: string; checkpoint: string; target: string }
  | { kind: 'map'; domain: string; checkpoint: string }
  | { kind: 'none' }
  /** A component longer than NAME_MAX bytes: ENAMETOOLONG, whatever the rest. */
  | { kind: 'too-long' };

export function parsePath(path: string): Node {
  const parts = path.split('/').filter((p) => p.length > 0);
  if (parts.some((p) => Buffer.byteLength(p) > NAME_MAX)) return { kind: 'too-long' };
  if (parts.some((p) => p === '.' || p === '..')) return { kind: 'none' };
  const [domain, checkpoint, file, ...rest] = parts;
  if (domain === undefined) return { kind: 'root' };
  if (checkpoint === undefined) return { kind: 'domain', domain };
  if (file === undefined) return { kind: 'checkpoint', domain, checkpoint };
  if (rest.length > 0) return { kind: 'none' };
  if (file === DIRTY_MAP) return { kind: 'map', domain, checkpoint };
  if (file.endsWith(RAW_SUFFIX) && file.length > RAW_SUFFIX.length) {
    return { kind: 'disk', domain, checkpoint, target: file.slice(0, -RAW_SUFFIX.length) };
  }
  return { kind: 'none' };
}

export function diskFileName(target: string): string {
  return `${target}${RAW_SUFFIX}`;
}

/**
 * Whether a name from libvirt can be one component of a path as it is: not empty, not `.` or
 * `..`, no `/` or NUL, at most NAME_MAX bytes. libvirt 9.0 refuses every other case for domains
 * and allows only [A-Za-z0-9_-][A-Za-z0-9_.-]* for checkpoints; names it may let through one
 * day are left out of the tree rather than shown under another name.
 */
export function isPathComponent(name: string): boolean {
  return name.length > 0 && name !== '.' && name !== '..' && !/[/\0]/.test(name) && Buffer.byteLength(name) <= NAME_MAX;
}
