// The path model (pure): what each path of the mount names.
//   /                                   the root: a directory per domain
//   /<domain>/                          a directory per checkpoint
//   /<domain>/<checkpoint>/<target>.raw a disk at the export's point in time
//   /<domain>/<checkpoint>/dirty-map.json

export const DIRTY_MAP = 'dirty-map.json';
export const RAW_SUFFIX = '.raw';

export type Node =
  | { kind: 'root' }
  | { kind: 'domain'; domain: string }
  | { kind: 'checkpoint'; domain: string; checkpoint: string }
  | { kind: 'disk'; domain: string; checkpoint: string; target: string }
  | { kind: 'map'; domain: string; checkpoint: string }
  | { kind: 'none' };

export function parsePath(path: string): Node {
  const parts = path.split('/').filter((p) => p.length > 0);
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
