// What every vircpt command gets: injected, so tests can drive the program in-process.
import { VircptError } from '../errors.js';
import { getDomain, blockInfo, checkpointable, type DomainDetails, type BlockInfo } from '../libvirt/domain.js';
import { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import type { RuntimeDirs } from '../exports/runtime.js';
import type { ScratchReserve } from '../exports/scratch-guard.js';
import type { PortRange, RemoteOptions } from '../exports/remote.js';
import type { NbdTlsMode } from '../nbd/tls.js';

export interface GlobalOptions {
  uri: string;
  domain?: string;
  include?: string[];
  exclude?: string[];
  scratchdir?: string;
  scratchReserve?: ScratchReserve;
  verbose?: boolean;
  /** A remote URI's NBD over TCP: --nbd-bind, --nbd-host, --nbd-ports, --nbd-tls, --nbd-certs. */
  nbdBind?: string;
  nbdHost?: string;
  nbdPorts?: PortRange;
  nbdTls?: NbdTlsMode;
  nbdCerts?: string;
  /** A remote URI: scratch bytes map/copy's own export may use on the hypervisor. */
  scratchBudget?: number;
}

export function remoteOptions(o: GlobalOptions): RemoteOptions {
  return { bind: o.nbdBind, host: o.nbdHost, ports: o.nbdPorts, tls: o.nbdTls, certs: o.nbdCerts };
}

export interface Deps {
  /** The package's version (`vircpt --version`). */
  version: string;
  log: Logger;
  dirs: RuntimeDirs;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Whether standard output is a terminal (progress bars). */
  isTTY: boolean;
  /** Cancelled on Ctrl-C / SIGTERM. */
  signal: AbortSignal;
}

export interface Ctx extends Deps {
  opts: GlobalOptions;
  virsh: Virsh;
  domainName: string;
}

/**
 * A command's context. Its queries go through one virsh shell, started here (or taken over from
 * bin/vircpt.ts, which starts it before the program loads) so that virsh loads libvirt and
 * connects while the command's modules load: a command asks libvirt several things, and each
 * virsh process would load libvirt and connect again (tens of milliseconds each, on a CPU the
 * command needs too). Changes run as processes of their own unless their outcome is checked
 * afterwards (virsh.ts). The caller closes `virsh` when the command ends.
 */
export function makeCtx(deps: Deps, opts: GlobalOptions): Ctx {
  if (!opts.domain) throw new VircptError('USAGE', 'a domain is required: -d/--domain NAME');
  const virsh = new Virsh({ uri: opts.uri, log: deps.log, session: true, maxSessions: 1 });
  virsh.warm();
  return { ...deps, opts, virsh, domainName: opts.domain };
}

export interface SelectedDomain {
  domain: DomainDetails;
  sizes: Map<string, BlockInfo>;
  /** Disk targets chosen by -i/-x that can carry a checkpoint. */
  targets: string[];
}

/** The domain, its disk sizes and the disks chosen by -i/-x; raw disks are excluded with a warning. */
export async function selectDisks(ctx: Ctx): Promise<SelectedDomain> {
  const sizes = blockInfo(ctx.virsh, ctx.domainName);
  sizes.catch(() => undefined); // reported through getDomain's error when the domain is missing
  const domain = await getDomain(ctx.virsh, ctx.domainName).catch((err: unknown) => {
    if (err instanceof VircptError && err.code === 'DOMAIN_NOT_FOUND') {
      throw new VircptError('DOMAIN_NOT_FOUND', `domain ${ctx.domainName} not found (connection ${ctx.opts.uri})`, { cause: err });
    }
    throw err;
  });
  const { include, exclude } = ctx.opts;
  const known = new Set(domain.disks.map((d) => d.target));
  for (const t of [...(include ?? []), ...(exclude ?? [])]) {
    if (!known.has(t)) throw new VircptError('DISK_NOT_FOUND', `domain ${domain.name} has no disk ${t} (disks: ${[...known].join(', ')})`);
  }
  const wanted = domain.disks.filter(
    (d) => (!include?.length || include.includes(d.target)) && !exclude?.includes(d.target),
  );
  const targets: string[] = [];
  for (const d of wanted) {
    if (checkpointable(d)) targets.push(d.target);
    else ctx.log.warn(`domain ${domain.name}: disk ${d.target} is ${d.format}, not qcow2: it cannot carry a checkpoint, excluded`);
  }
  if (targets.length === 0) throw new VircptError('DISK_NOT_FOUND', `domain ${domain.name}: no qcow2 disk selected`);
  return { domain, sizes: await sizes, targets };
}

export function printJson(ctx: Pick<Deps, 'stdout'>, value: unknown): void {
  ctx.stdout(`${JSON.stringify(value, null, 2)}\n`);
}
