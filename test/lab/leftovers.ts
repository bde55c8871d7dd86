// "Nothing left behind": what a test checks after a release, an unmount or an exit.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { defaultRuntimeDirs, domainDirName } from '../../src/exports/runtime.js';

async function listRecursive(dir: string): Promise<string[]> {
  try {
    const out: string[] = [];
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      out.push(p);
      if (e.isDirectory()) out.push(...(await listRecursive(p)));
    }
    return out;
  } catch {
    return [];
  }
}

/** Every file or folder of ours still present for a domain: sockets, pid files, scratch images. */
export async function leftoversOf(domain: string): Promise<string[]> {
  const dirs = defaultRuntimeDirs();
  const name = domainDirName(domain);
  const found: string[] = [];
  for (const root of [dirs.runDir, dirs.scratchRoot]) {
    let instances: string[] = [];
    try {
      instances = await readdir(root);
    } catch {
      continue;
    }
    for (const inst of instances) {
      const d = path.join(root, inst, name);
      const inside = await listRecursive(d);
      if (inside.length > 0 || (await readdir(d).then(() => true, () => false))) found.push(d, ...inside);
    }
  }
  return found;
}
