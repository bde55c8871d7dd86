// The repository's own files, for the checks of the repository itself (test/repo/): found from
// the compiled test (dist/test/repo/) three levels up, never inside node_modules or dist.
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SKIP = new Set(['node_modules', 'dist', 'build', '.git']);

/** Files under the given folders of the repository (relative paths), whose names pass `keep`. */
export function repoFiles(folders: readonly string[], keep: (name: string) => boolean): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const abs = path.join(ROOT, rel);
    if (!statSync(abs, { throwIfNoEntry: false })) return;
    if (statSync(abs).isFile()) {
      if (keep(path.basename(rel))) out.push(rel);
      return;
    }
    for (const name of readdirSync(abs)) if (!SKIP.has(name)) walk(path.join(rel, name));
  };
  folders.forEach(walk);
  return out.sort();
}
