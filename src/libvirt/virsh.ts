// The one way this project talks to libvirt: virsh (libvirt-clients), XML in and out.
// node-libvirt does not build on Node 20 and has no checkpoint/backup calls; virsh has them all.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { VircptError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';

export interface VirshOptions {
  uri: string;
  /** Default deadline of one call (ms). */
  timeoutMs?: number;
  log?: Logger;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  input?: string;
}

// libvirt's own words -> our codes. Order matters: the first match wins.
const CLASSIFY: [RegExp, ErrorCode][] = [
  [/failed to get domain|Domain not found/i, 'DOMAIN_NOT_FOUND'],
  [/checkpoint not found|no domain checkpoint with matching name/i, 'CHECKPOINT_NOT_FOUND'],
  [/already exists/i, 'CHECKPOINT_EXISTS'],
  [/domain is not running/i, 'DOMAIN_NOT_RUNNING'],
  [/no domain backup job present/i, 'NO_EXPORT'],
  [/cannot acquire state change lock|another job|job .* is active|operation is not valid: .*job/i, 'JOB_ACTIVE'],
  [/guest agent is not (configured|connected|responding)|QEMU guest agent/i, 'AGENT_UNAVAILABLE'],
];

export function classifyVirshError(stderr: string): ErrorCode {
  for (const [re, code] of CLASSIFY) if (re.test(stderr)) return code;
  return 'LIBVIRT';
}

/** libvirt's message without virsh's "error: " prefixes, on one line. */
export function libvirtWords(stderr: string): string {
  return stderr
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim())
    .filter((l) => l.length > 0)
    .join(': ');
}

export class Virsh {
  readonly uri: string;
  readonly #timeoutMs: number;
  readonly #log: Logger | undefined;

  constructor(opts: VirshOptions) {
    this.uri = opts.uri;
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
    this.#log = opts.log;
  }

  /**
   * Runs virsh with an XML document as a file argument: `{xml}` in args stands for its path.
   * (virsh cannot open /dev/stdin when stdin is the socket pair Node gives a child.)
   */
  async runWithXml(args: string[], xml: string, opts: CallOptions = {}): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), 'vircpt-xml-'));
    const file = path.join(dir, 'doc.xml');
    try {
      await writeFile(file, xml, { mode: 0o600 });
      return await this.run(args.map((a) => (a === '{xml}' ? file : a)), opts);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Runs `virsh -c URI ARGS...`; resolves to stdout, rejects with a VircptError in libvirt's words. */
  async run(args: string[], opts: CallOptions = {}): Promise<string> {
    const timeout = opts.timeoutMs ?? this.#timeoutMs;
    this.#log?.debug({ args }, 'virsh');
    const res = await execa('virsh', ['-q', '-c', this.uri, ...args], {
      env: { LC_ALL: 'C' },
      reject: false,
      timeout,
      cancelSignal: opts.signal,
      input: opts.input,
      stripFinalNewline: true,
    });
    if (res.exitCode === 0 && !res.failed) return res.stdout;
    if (res.timedOut) {
      throw new VircptError('TIMEOUT', `virsh ${args[0]} timed out after ${timeout} ms`);
    }
    if (res.isCanceled) throw new VircptError('ABORTED', `virsh ${args[0]} was cancelled`);
    if ((res as { code?: string }).code === 'ENOENT') {
      throw new VircptError('LIBVIRT', 'virsh not found: install the Debian package libvirt-clients');
    }
    const words = libvirtWords(String(res.stderr || res.message));
    throw new VircptError(classifyVirshError(words), words, { cause: res });
  }
}
