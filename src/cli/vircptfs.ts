// The vircptfs program: parse, validate, mount, and stay until unmounted or signalled.
import { VircptError, messageOf } from '../errors.js';
import { DEFAULT_NBD_PORTS, DEFAULT_REMOTE_SCRATCH } from '../exports/remote.js';
import { defaultRuntimeDirs } from '../exports/runtime.js';
import { DEFAULT_NBD_CERTS } from '../nbd/tls.js';
import { DEFAULT_SCRATCH_RESERVE, formatReserve, GUARD_POLL_MS } from '../exports/scratch-guard.js';
import type { RunningFs } from '../fs/mount.js';
import { DEFAULTS, MOUNT8_OPTIONS, parseFsArgs, sourceUri, type FsOptions } from '../fs/options.js';
import type { Logger } from '../log.js';
import { DEFAULT_DAEMON_LOG } from './daemon.js';
import { defaultUri, EXIT_FAILED, EXIT_OK, EXIT_USAGE } from './exit.js';
import { startFilesystem } from './vircptfs-start.js';

export const FS_USAGE = `Usage: vircptfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT

libvirt checkpoints as read-only files: /<domain>/<checkpoint>/<disk>.raw and dirty-map.json.

  SOURCE        a libvirt URI (qemu:///system, qemu+ssh://host/system) or 'default'
  MOUNTPOINT    an existing directory
  -f            stay in the foreground
  -d            debug log (implies -f)
  -h, --help    this help;  -V, --version  the version

Options (-o, comma-separated, repeatable):
  domain=NAME          only this domain (repeat for more); default: all
  cache=SIZE           block cache size (default ${DEFAULTS.cacheBytes / 2 ** 20}M; e.g. 512M, 1G)
  idle=SECONDS         release an export this long after its last file closed (default ${DEFAULTS.idleSeconds})
  scratch=DIR          where backup scratch images go (default /var/tmp/vircptfs); each can grow
                       up to its disk's size while an export is open and the guest writes; DIR
                       must exist and be writable (it is never created)
  scratch_reserve=SIZE|N%  free space kept on the scratch filesystem (default ${formatReserve(DEFAULT_SCRATCH_RESERVE)}): below it an
                       export is given up (its readers get EIO) before the guest's writes could
                       fail, and opens get ENOSPC; checked every ${GUARD_POLL_MS / 1000} s; 0 turns it off
                       (docs/scratch-guard.md)
  freeze | nofreeze    guest-agent fsfreeze around export start (default freeze, when the agent answers)
  readahead=KB         kernel read-ahead of the mount (default ${DEFAULTS.readaheadKb})
  page_cache=auto|always|never  when disk files use the kernel's page cache (default auto:
                       a file's first reader in an export goes past it, which makes single
                       passes faster, and a reader that comes back uses it; a shared mmap of a
                       first open fails with ENODEV: use always for such readers)
  direct_io            the same as page_cache=never
  log=FILE             log to FILE; default: standard error with -f or -d, else syslog when
                       /dev/log exists (journalctl -t vircptfs), else ${DEFAULT_DAEMON_LOG}
  allow_other          let other users reach the mount; what they may read, uid/gid/umask say
                       (default: only the mounting user)
  uid=USER, gid=GROUP  owner and group of every file and directory, a name or a number
                       (default: the mounting user and its group)
  umask=MODE           octal, taken from 0444 (files) and 0555 (directories) (default 0077:
                       0400 and 0500, the owner only); the kernel checks these modes
  Accepted and ignored (mount(8)/fstab):
${wrap(`${MOUNT8_OPTIONS.join(' ')} x-* X-*`, '    ', 92)}
  (default_permissions is always on)

Remote hypervisors (qemu+ssh://, qemu+tls://; docs/remote.md):
  nbd_bind=ADDR        the address QEMU's NBD server binds on the hypervisor (default: the URI's host)
  nbd_host=ADDR        the address dialled and checked in the server's certificate (default: the URI's host)
  nbd_ports=FROM-TO    ports the exports take, the next when one is busy (default ${DEFAULT_NBD_PORTS.from}-${DEFAULT_NBD_PORTS.to})
  nbd_tls=MODE         require, prefer or off (default require; prefer when nbd_host is loopback)
  nbd_certs=DIR        ca-cert.pem client-cert.pem client-key.pem (default ${DEFAULT_NBD_CERTS})
  scratch_budget=SIZE  scratch the mount's exports may use on the hypervisor together, by libvirt's
                       figures: over it the export using the most is given up (EIO); default: unguarded
  scratch=DIR          there: a folder that exists on the hypervisor (default ${DEFAULT_REMOTE_SCRATCH})

Only root can mount (exports need root). allow_other,gid=vmscan,umask=0027 lets the members of
group vmscan read, and no one else.

Unmount with: umount MOUNTPOINT (or fusermount3 -u MOUNTPOINT); every export is released.
`;

/** Words laid out in lines of at most `width` characters, each line indented. */
function wrap(words: string, indent: string, width: number): string {
  const lines: string[] = [];
  for (const word of words.split(' ')) {
    const last = lines.length - 1;
    if (last >= 0 && lines[last]!.length + 1 + word.length <= width) lines[last] += ` ${word}`;
    else lines.push(indent + word);
  }
  return lines.join('\n');
}

export interface FsDeps {
  version: string;
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  makeLogger: (o: FsOptions) => Logger;
}

/** Parses argv; a usage error or --help/--version ends here with an exit code. */
export function parseOrExit(argv: string[], deps: FsDeps): FsOptions | number {
  if (argv.includes('-h') || argv.includes('--help')) return deps.stdout(FS_USAGE), EXIT_OK;
  if (argv.includes('-V') || argv.includes('--version')) return deps.stdout(`vircptfs ${deps.version}\n`), EXIT_OK;
  try {
    const o = parseFsArgs(argv);
    sourceUri(o.source, defaultUri());
    // Exports need root: their sockets and scratch folders belong to QEMU's user and /run/vircptfs
    // is root's. Refused before anything is mounted, rather than failing at the first open.
    if (process.getuid?.() !== 0) throw new VircptError('USAGE', 'only root can mount vircptfs (exports need root)');
    return o;
  } catch (err) {
    deps.stderr(`vircptfs: ${messageOf(err)}\n(vircptfs --help for usage)\n`);
    return EXIT_USAGE;
  }
}

/** Mounts; resolves to the running filesystem, or an exit code after one clear line. */
export async function mountOrExit(o: FsOptions, log: Logger, deps: FsDeps): Promise<RunningFs | number> {
  try {
    return await startFilesystem({ ...o, uri: sourceUri(o.source, defaultUri()) }, defaultRuntimeDirs(), log);
  } catch (err) {
    deps.stderr(`vircptfs: ${messageOf(err)}\n`);
    if (o.debug && err instanceof Error && err.stack) deps.stderr(`${err.stack}\n`);
    return err instanceof VircptError && err.code === 'USAGE' ? EXIT_USAGE : EXIT_FAILED;
  }
}
