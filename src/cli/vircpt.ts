// The vircpt program: commander, built from injected dependencies (bin/ wires the real ones).
import { createRequire } from 'node:module';
import type * as Commander from 'commander';
import { VircptError, messageOf } from '../errors.js';
import { DEFAULT_SCRATCH_RESERVE, formatReserve, type ScratchReserve } from '../exports/scratch-guard.js';
import { parseReserve, parseSize } from '../fs/options.js';
import { DEFAULT_NBD_PORTS, parsePorts, parseTlsMode, type PortRange } from '../exports/remote.js';
import { DEFAULT_NBD_CERTS, type NbdTlsMode } from '../nbd/tls.js';
import { makeCtx, type Ctx, type Deps, type GlobalOptions } from './context.js';
import { defaultUri, EXIT_FAILED, EXIT_OK, EXIT_USAGE } from './exit.js';

// Required when this module runs, not imported: an import would load commander before
// bin/vircpt.ts could start the virsh shell (bundled, every static import is loaded first).
const { Command, CommanderError, InvalidArgumentError, Option } = createRequire(import.meta.url)('commander') as typeof Commander;

// Each command's module is loaded when it runs: a process runs one, and `--help` none.
const checkpoints = () => import('./commands/checkpoints.js');
const exporting = () => import('./commands/export.js');
const hotadd = () => import('./commands/hotadd.js');


function collect(value: string, previous: string[] = []): string[] {
  for (const v of value.split(',')) {
    if (!/^[A-Za-z0-9_.-]+$/.test(v)) throw new InvalidArgumentError(`'${v}' is not a disk target (like sda or vdb)`);
    previous.push(v);
  }
  return previous;
}

function scratchReserve(value: string): ScratchReserve {
  try {
    return parseReserve(value, '--scratch-reserve');
  } catch (err) {
    throw new InvalidArgumentError(messageOf(err));
  }
}

function scratchBudget(value: string): number {
  try {
    return parseSize(value, '--scratch-budget');
  } catch (err) {
    throw new InvalidArgumentError(messageOf(err));
  }
}

function nbdPorts(value: string): PortRange {
  try {
    return parsePorts(value, '--nbd-ports');
  } catch (err) {
    throw new InvalidArgumentError(messageOf(err));
  }
}

function nbdTls(value: string): NbdTlsMode {
  try {
    return parseTlsMode(value, '--nbd-tls');
  } catch (err) {
    throw new InvalidArgumentError(messageOf(err));
  }
}

function seconds(value: string): number {
  if (!/^\d+(\.\d+)?$/.test(value) || Number(value) > 3600) throw new InvalidArgumentError(`'${value}' is not a number of seconds (0 to 3600)`);
  return Number(value);
}

function checkpointName(value: string): string {
  if (!/^[^/\s][^/]*$/.test(value) || value.length > 255) throw new InvalidArgumentError(`'${value}' is not a valid checkpoint name`);
  return value;
}

/** `opened` gets every command context made, for the caller to close (runVircpt does). */
export function buildProgram(deps: Deps, opened: Ctx[] = []): Commander.Command {
  const program = new Command('vircpt')
    .description('libvirt checkpoints: create, list, delete, export, release, hotadd, hotremove, map, info, copy')
    .addOption(new Option('-U, --uri <uri>', 'libvirt connection URI').default(defaultUri()))
    .option('-d, --domain <name>', 'the libvirt domain')
    .option('-i, --include <targets>', 'only these disk targets (repeatable, or comma-separated)', collect)
    .option('-x, --exclude <targets>', 'not these disk targets (repeatable, or comma-separated)', collect)
    .option('--scratchdir <dir>', 'where backup scratch images go (they can grow up to each disk\'s size; it must exist and be writable)')
    .option('--scratch-reserve <size>', `free space kept where the scratch images go, SIZE or N% (default ${formatReserve(DEFAULT_SCRATCH_RESERVE)}): ` +
      'below it an export is given up before the guest\'s writes could fail, and none starts; 0: off', scratchReserve)
    .option('--nbd-bind <addr>', 'remote URI: the address QEMU\'s NBD server binds on the hypervisor (default: the URI\'s host)')
    .option('--nbd-host <addr>', 'remote URI: the address dialled, checked in the server\'s certificate (default: the URI\'s host)')
    .option('--nbd-ports <from-to>', `remote URI: NBD ports to take from (default ${DEFAULT_NBD_PORTS.from}-${DEFAULT_NBD_PORTS.to})`, nbdPorts)
    .option('--nbd-tls <mode>', 'remote URI: require, prefer or off (default require; prefer on loopback)', nbdTls)
    .option('--nbd-certs <dir>', `remote URI: ca-cert.pem client-cert.pem client-key.pem (default ${DEFAULT_NBD_CERTS})`)
    .option('--scratch-budget <size>', 'remote URI: scratch map/copy\'s own export may use on the hypervisor, by libvirt\'s figures; over it the export is given up (default: unguarded)', scratchBudget)
    .option('-v, --verbose', 'debug log, and stack traces on errors')
    .version(`vircpt ${deps.version}`, '-V, --version', 'print the version')
    .showHelpAfterError('(vircpt --help for usage)')
    .configureOutput({ writeOut: deps.stdout, writeErr: deps.stderr })
    .exitOverride();
  const ctx = () => {
    const c = makeCtx(deps, program.opts<GlobalOptions>());
    opened.push(c);
    return c;
  };
  // The context first (it starts the virsh shell), then the command's modules, meanwhile.
  const run = async <M>(load: () => Promise<M>, fn: (m: M, c: Ctx) => Promise<void>): Promise<void> => {
    const c = ctx();
    return fn(await load(), c);
  };

  program.command('create').description('create a checkpoint (guest-agent freeze when reachable)')
    .requiredOption('--name <name>', 'checkpoint name', checkpointName)
    .action(async (o: { name: string }) => run(checkpoints, (m, c) => m.createCmd(c, o.name)));
  program.command('list').description('list the domain\'s checkpoints')
    .option('--json', 'JSON output')
    .action(async (o: { json?: boolean }) => run(checkpoints, (m, c) => m.listCmd(c, !!o.json)));
  program.command('delete').description('delete a checkpoint (merging its bitmap into the parent)')
    .requiredOption('--name <name>', 'checkpoint name', checkpointName)
    .option('--metadata', 'only forget it in libvirt; bitmaps stay in the images')
    .action(async (o: { name: string; metadata?: boolean }) => run(checkpoints, (m, c) => m.deleteCmd(c, o.name, !!o.metadata)));
  program.command('export').description('start an export at a checkpoint; print NBD URIs and commands')
    .requiredOption('--name <name>', 'checkpoint name (the incremental base of the dirty map)', checkpointName)
    .option('--json', 'JSON output')
    .action(async (o: { name: string; json?: boolean }) => run(exporting, (m, c) => m.exportCmd(c, o.name, !!o.json)));
  program.command('release').description('stop the export that vircpt export started (or one left by a dead instance of ours)')
    .action(async () => run(exporting, (m, c) => m.releaseCmd(c)));
  program.command('hotadd').description('attach a checkpoint\'s disks read-only to another running domain (a scanner), through an export')
    .requiredOption('--name <name>', 'checkpoint name', checkpointName)
    .requiredOption('--to <domain>', 'the running domain that gets the disks')
    .addOption(new Option('--bus <bus>', 'scsi: on a virtio-scsi controller (unplugs at once); virtio: virtio-blk (PCIe hot-plug)').choices(['scsi', 'virtio']).default('scsi'))
    .option('--json', 'JSON output')
    .action(async (o: { name: string; to: string; bus: 'scsi' | 'virtio'; json?: boolean }) =>
      run(hotadd, (m, c) => m.hotaddCmd(c, { name: o.name, to: o.to, bus: o.bus, json: !!o.json })));
  program.command('hotremove').description('detach what hotadd attached, then release the export hotadd started')
    .option('--to <domain>', 'only from this domain')
    .option('--wait <seconds>', 'how long each guest may take to let go', seconds, 10)
    .option('--force', 'release the export even if a guest did not let go')
    .action(async (o: { to?: string; wait: number; force?: boolean }) =>
      run(hotadd, (m, c) => m.hotremoveCmd(c, { ...(o.to !== undefined && { to: o.to }), waitS: o.wait, force: !!o.force })));
  program.command('map').description('extents changed since a checkpoint (--base: allocation), per disk')
    .requiredOption('--name <name>', 'checkpoint name', checkpointName)
    .option('--base', 'allocation extents (base:allocation) instead of the dirty ones')
    .option('--json', 'JSON output (fields as nbdinfo --map --json)')
    .action(async (o: { name: string; base?: boolean; json?: boolean }) => run(() => import('./commands/map.js'), (m, c) => m.mapCmd(c, o.name, !!o.base, !!o.json)));
  program.command('info').description('the running export\'s NBD details (never starts one)')
    .option('--json', 'JSON output')
    .action(async (o: { json?: boolean }) => run(() => import('./commands/info.js'), (m, c) => m.infoCmd(c, !!o.json)));
  program.command('copy').description('copy every selected disk to DIR/<target>.raw, sparse')
    .requiredOption('--name <name>', 'checkpoint name', checkpointName)
    .requiredOption('--out <dir>', 'output directory (created if missing; existing files are not overwritten)')
    .action(async (o: { name: string; out: string }) => run(() => import('./commands/copy.js'), (m, c) => m.copyCmd(c, o.name, o.out)));
  return program;
}

/** Runs the program; resolves to the exit code. Errors are one line on stderr (stack with -v). */
export async function runVircpt(argv: string[], deps: Deps): Promise<number> {
  const opened: Ctx[] = [];
  const program = buildProgram(deps, opened);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    const verbose = !!program.opts<GlobalOptions>().verbose;
    if (err instanceof VircptError) {
      deps.stderr(`vircpt: ${err.message}\n`);
      if (verbose && err.stack) deps.stderr(`${err.stack}\n`);
      return err.code === 'USAGE' ? EXIT_USAGE : EXIT_FAILED;
    }
    deps.stderr(`vircpt: ${err instanceof Error ? err.message : String(err)}\n`);
    if (verbose && err instanceof Error && err.stack) deps.stderr(`${err.stack}\n`);
    return EXIT_FAILED;
  } finally {
    for (const c of opened) c.virsh.close(); // its virsh shell: nothing is left running
  }
}
