// Every document that a comment, a script or a document names exists in the repository, so a
// reader can follow it: docs/... by its path, a document beside the naming one by its name.
// Upstream specifications are named by their upstream names and are the only exception.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT, repoFiles } from './files.js';

/** NBD's doc/proto.md and doc/uri.md (NetworkBlockDevice/nbd). */
const UPSTREAM = new Set(['proto.md', 'doc/proto.md', 'uri.md', 'doc/uri.md']);
const NAMED = /(?<![\w./-])((?:[\w.-]+\/)*[\w.-]+\.md)\b/g;

function missing(file: string): string[] {
  const out: string[] = [];
  for (const m of readFileSync(path.join(ROOT, file), 'utf8').matchAll(NAMED)) {
    const name = m[1]!;
    if (UPSTREAM.has(name)) continue;
    const found = existsSync(path.join(ROOT, name)) || existsSync(path.join(ROOT, path.dirname(file), name));
    if (!found) out.push(`${file}: ${name}`);
  }
  return out;
}

test('every *.md that code, scripts and documents name is in the repository', () => {
  const code = repoFiles(['src', 'test', 'bench', 'scripts', 'mount-helper', 'native', '.ci'],
    (n) => /\.(ts|mjs|js|c|h|gyp|sh)$/.test(n) || !n.includes('.'));
  const docs = ['README.md', ...repoFiles(['docs'], (n) => n.endsWith('.md'))];
  assert.ok(code.length > 50 && code.includes('src/fs/fuse/index.ts'), `found the code (${code.length} files)`);
  assert.deepEqual([...code, ...docs, 'package.json'].flatMap(missing), []);
});
