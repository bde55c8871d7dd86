// Real NBD servers for tests: nbdkit and qemu-nbd, started and stopped by the PID we got,
// in a private temporary folder that stop() removes. Reusable by other test folders.

import { execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { formatNbdUri } from '../../src/nbd/uri.js';

export const execFileP = promisify(execFile);

/** Fails (never skips) when a tool is missing, naming the Debian package that has it. */
export function requireTool(tool: string, debianPackage: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
    throw new Error(`${tool} is not installed: apt-get install ${debianPackage}`);
  }
}

export interface TempDir { path: string; remove(): Promise<void> }

/** A unique folder (pid + random suffix) under /tmp, short enough for Unix socket paths. */
export async function makeTempDir(prefix = 'vircpt-nbd'): Promise<TempDir> {
  const dir = await mkdtemp(path.join(tmpdir(), `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}-`));
  return { path: dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface NbdServer {
  pid: number;
  exportName: string;
  socketPath?: string;
  host?: string;
  port?: number;
  uri: string;
  dir: string;
  /** Kills the server (by its PID) and removes its folder. Idempotent. */
  stop(): Promise<void>;
}

/** Running, and not a zombie waiting for an init that reaps late (PID 1 here is no init). */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function killPid(pid: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, signal);
  await waitFor(`PID ${pid} to exit`, () => !alive(pid), 5_000).catch(() => process.kill(pid, 'SIGKILL'));
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released for the server). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface NbdkitOptions {
  /** Plugin and its arguments, e.g. ['memory', '1G'] or ['pattern', '1G']. */
  plugin: string[];
  /** Filters with their parameters, e.g. [['error', 'error-rate=100%']]. */
  filters?: string[][];
  extraArgs?: string[];
  tcp?: boolean;
  exportName?: string;
}

export async function startNbdkit(options: NbdkitOptions): Promise<NbdServer> {
  requireTool('nbdkit', 'nbdkit');
  const tmp = await makeTempDir('vircpt-nbdkit');
  const pidFile = path.join(tmp.path, 'nbdkit.pid');
  const filters = options.filters ?? [];
  const where = options.tcp ? { host: '127.0.0.1', port: await freePort() } : { socketPath: path.join(tmp.path, 'nbd.sock') };
  const listen = where.socketPath !== undefined ? ['-U', where.socketPath] : ['-i', where.host, '-p', String(where.port)];
  const args = ['-f', '--exit-with-parent', '-P', pidFile, ...listen, ...(options.extraArgs ?? []),
    ...filters.map((f) => `--filter=${f[0]}`), options.plugin[0]!, ...options.plugin.slice(1), ...filters.flatMap((f) => f.slice(1))];
  const child = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const pid = child.pid!;
  const exportName = options.exportName ?? '';
  const server: NbdServer = {
    pid, exportName, ...where, dir: tmp.path, uri: formatNbdUri({ exportName, ...where }),
    stop: async () => { await killPid(pid); await tmp.remove(); },
  };
  try {
    // nbdkit writes its PID file once it listens.
    await waitFor('nbdkit to listen', () => {
      if (child.exitCode !== null) throw new Error(`nbdkit ${args.join(' ')} exited: ${stderr}`);
      return existsSync(pidFile);
    });
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

export interface QemuNbdOptions {
  image: string;
  format?: string;
  bitmaps?: string[];
  exportName?: string;
  /** Clients allowed at once; 0 = unlimited (what multi-conn needs). */
  shared?: number;
}

export async function startQemuNbd(options: QemuNbdOptions): Promise<NbdServer> {
  requireTool('qemu-nbd', 'qemu-utils');
  const tmp = await makeTempDir('vircpt-qemu-nbd');
  const socketPath = path.join(tmp.path, 'nbd.sock');
  const pidFile = path.join(tmp.path, 'qemu-nbd.pid');
  const exportName = options.exportName ?? 'disk';
  const args = ['-r', '-f', options.format ?? 'qcow2', ...(options.bitmaps ?? []).flatMap((b) => ['-B', b]),
    '-x', exportName, '-k', socketPath, '-e', String(options.shared ?? 0), '--persistent', '--fork',
    '--pid-file', pidFile, options.image];
  try {
    await execFileP('qemu-nbd', args); // --fork returns once the socket listens
  } catch (err) {
    await tmp.remove();
    throw err;
  }
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return {
    pid, exportName, socketPath, dir: tmp.path, uri: formatNbdUri({ exportName, socketPath }),
    stop: async () => { await killPid(pid); await tmp.remove(); },
  };
}

export interface QemuNbdTcpOptions {
  image: string;
  format?: string;
  /** A loopback address to bind (127.0.0.x). */
  host: string;
  /** QEMU's server certificate folder (ca-cert.pem server-cert.pem server-key.pem); plaintext without. */
  tlsDir?: string;
  exportName?: string;
}

/** qemu-nbd on HOST:PORT (a free port), with TLS when tlsDir is given. */
export async function startQemuNbdTcp(o: QemuNbdTcpOptions): Promise<NbdServer & { host: string; port: number }> {
  requireTool('qemu-nbd', 'qemu-utils');
  const tmp = await makeTempDir('vircpt-qemu-nbd-tcp');
  const pidFile = path.join(tmp.path, 'qemu-nbd.pid');
  const port = await freePort();
  const exportName = o.exportName ?? 'disk';
  const creds = o.tlsDir ? ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${o.tlsDir}`, '--tls-creds', 'tls0'] : [];
  try {
    await execFileP('qemu-nbd', ['-r', '-f', o.format ?? 'raw', '-x', exportName, '-b', o.host, '-p', String(port), '-e', '0',
      '--persistent', '--fork', '--pid-file', pidFile, ...creds, o.image]);
  } catch (err) {
    await tmp.remove();
    throw err;
  }
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return {
    pid, exportName, host: o.host, port, dir: tmp.path, uri: formatNbdUri({ exportName, host: o.host, port, tls: !!o.tlsDir }),
    stop: async () => { await killPid(pid); await tmp.remove(); },
  };
}

/** One step in building a test image: add a persistent bitmap, or qemu-io commands. */
export type ImageStep = { bitmap: string } | { io: string[] };

/** A qcow2 image built by qemu-img/qemu-io: bitmaps added between writes record what followed. */
export async function makeQcow2(file: string, size: number, steps: ImageStep[]): Promise<void> {
  requireTool('qemu-img', 'qemu-utils');
  requireTool('qemu-io', 'qemu-utils');
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(size)]);
  for (const step of steps) {
    if ('bitmap' in step) await execFileP('qemu-img', ['bitmap', '--add', file, step.bitmap]);
    else await execFileP('qemu-io', ['-f', 'qcow2', ...step.io.flatMap((c) => ['-c', c]), file], { maxBuffer: 64 << 20 });
  }
}

export interface NbdinfoExtent { offset: number; length: number; type: number }

/** `nbdinfo --map=CTX --json URI`: the C reference's view of an export's extents. */
export async function nbdinfoMap(uri: string, context: string): Promise<NbdinfoExtent[]> {
  requireTool('nbdinfo', 'libnbd-bin');
  const { stdout } = await execFileP('nbdinfo', [`--map=${context}`, '--json', uri], { maxBuffer: 256 << 20 });
  return (JSON.parse(stdout) as NbdinfoExtent[]).map(({ offset, length, type }) => ({ offset, length, type }));
}

/** `nbdcopy URI FILE`: the C reference's copy of an export. */
export async function nbdcopyTo(uri: string, file: string): Promise<void> {
  requireTool('nbdcopy', 'libnbd-bin');
  await execFileP('nbdcopy', [uri, file]);
}
