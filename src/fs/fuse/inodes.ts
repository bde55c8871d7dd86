// Inode numbers for a path-based filesystem on libfuse's low-level API. The kernel learns an
// inode from lookup and holds it until it sends forget with the same count of lookups; until
// then the number must keep naming the same path. Numbers come from a hash of the path, so a
// directory listing shows the number a later lookup gives (ls -i, find), and are never reused
// for another path while the kernel holds them (a collision probes on).
import { createHash } from 'node:crypto';

const ROOT_INO = 1;
/** Inode numbers stay below 2^53 (exact in a double, which is how they cross to C). */
const INO_SPACE = 2 ** 52;

interface Node { path: string; lookups: number }

export class Inodes {
  readonly #byIno = new Map<number, Node>([[ROOT_INO, { path: '/', lookups: 1 }]]);
  readonly #byPath = new Map<string, number>([['/', ROOT_INO]]);

  get size(): number {
    return this.#byIno.size;
  }

  path(ino: number): string | undefined {
    return this.#byIno.get(ino)?.path;
  }

  /** The number `path` has or would get, without counting a lookup (directory listings). */
  peek(path: string): number {
    return this.#byPath.get(path) ?? this.#free(path);
  }

  /** Counts one lookup of `path` by the kernel: its inode number. */
  lookup(path: string): number {
    let ino = this.#byPath.get(path);
    if (ino === undefined) {
      ino = this.#free(path);
      this.#byIno.set(ino, { path, lookups: 0 });
      this.#byPath.set(path, ino);
    }
    if (ino !== ROOT_INO) this.#byIno.get(ino)!.lookups++;
    return ino;
  }

  /** The kernel forgot `count` lookups of `ino`; at zero the number is free again. */
  forget(ino: number, count: number): void {
    const node = this.#byIno.get(ino);
    if (!node || ino === ROOT_INO) return;
    node.lookups -= count;
    if (node.lookups > 0) return;
    this.#byIno.delete(ino);
    this.#byPath.delete(node.path);
  }

  #free(path: string): number {
    let ino = hashIno(path);
    while (this.#byIno.has(ino) && this.#byIno.get(ino)!.path !== path) ino = ino + 1 < INO_SPACE ? ino + 1 : 2;
    return ino;
  }
}

function hashIno(path: string): number {
  const h = createHash('sha1').update(path).digest();
  const n = h.readUIntBE(0, 6) * 16 + (h[6]! >> 4); // 52 bits
  return n < 2 ? n + 2 : n;
}

/** The path of `name` inside directory `dir`. */
export function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** The directory that holds `path` ('/' for the root itself). */
export function parentPath(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}
