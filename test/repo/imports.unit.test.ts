// No import circles among the repository's modules (type-only imports included: a circle of
// types is still two modules that cannot be read one without the other).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT, repoFiles } from './files.js';

function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of repoFiles(['src', 'test', 'bench'], (n) => n.endsWith('.ts'))) {
    const text = readFileSync(path.join(ROOT, file), 'utf8');
    const deps = [...text.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s+'(\.[^']+)'/gms)]
      .map((m) => path.normalize(path.join(path.dirname(file), m[1]!.replace(/\.js$/, '.ts'))));
    graph.set(file, deps);
  }
  return graph;
}

/** Tarjan's strongly connected components with more than one module (or a self-import). */
function circles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) visit(w);
      if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, low.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || graph.get(v)!.includes(v)) out.push(component.sort());
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return out;
}

test('no import circles in src, test and bench', () => {
  const graph = importGraph();
  assert.ok(graph.size > 100, `read the modules (${graph.size})`);
  assert.ok((graph.get('src/cli/vircpt.ts') ?? []).includes('src/cli/exit.ts'), 'the imports are read');
  assert.deepEqual(circles(graph), []);
});

test('vircptfs does not load commander (the vircpt command line) on its way in', () => {
  const graph = importGraph();
  const seen = new Set<string>();
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    (graph.get(f) ?? []).forEach(walk);
  };
  walk('src/bin/vircptfs.ts');
  const withCommander = [...seen].filter((f) => /from 'commander'/.test(readFileSync(path.join(ROOT, f), 'utf8')));
  assert.deepEqual(withCommander, []);
});

/** docs/design.md's layers, top first: a module imports its own layer and those below it. */
const LAYERS = [['cli', 'bin'], ['fs'], ['copy'], ['exports'], ['cache'], ['nbd'], ['libvirt'], ['']];
const layerOf = (file: string) => {
  const dir = file.split('/').length > 2 ? file.split('/')[1]! : '';
  return LAYERS.findIndex((l) => l.includes(dir));
};

test('src imports only its own layer and those below it; the cache never imports nbd', () => {
  const graph = importGraph();
  const upward: string[] = [];
  for (const [file, deps] of graph) {
    if (!file.startsWith('src/')) continue;
    for (const dep of deps) {
      const cacheToNbd = file.startsWith('src/cache/') && dep.startsWith('src/nbd/');
      if (layerOf(dep) < layerOf(file) || cacheToNbd) upward.push(`${file} -> ${dep}`);
    }
  }
  const missing = LAYERS.flat().filter((l) => l !== '' && ![...graph.keys()].some((f) => f.startsWith(`src/${l}/`)));
  assert.deepEqual(missing, [], 'every layer named is a folder of src');
  assert.deepEqual(upward, []);
});
