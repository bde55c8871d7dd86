// Runs the built programs as a user would: a real process, exit code and output captured.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const VIRCPT = path.join(ROOT, 'dist/src/bin/vircpt.js');
export const VIRCPTFS = path.join(ROOT, 'dist/src/bin/vircptfs.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function vircpt(args: string[], opts: { timeout?: number } = {}): Promise<CliResult> {
  if (!existsSync(VIRCPT)) throw new Error(`${VIRCPT} is missing: run npm run build`);
  const r = await execa(process.execPath, [VIRCPT, ...args], { reject: false, timeout: opts.timeout ?? 120_000, env: { LC_ALL: 'C' } });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** The lines of stderr that are errors (not warnings). */
export function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.length > 0 && !/^vircpt: warning:/.test(l));
}
