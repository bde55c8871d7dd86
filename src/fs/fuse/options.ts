// The -o options of libfuse 3's low-level session, checked before mounting: libfuse refuses an
// unknown one only after printing to stderr, so a check here gives one line naming it.
import { VircptError } from '../../errors.js';
import type { FuseMountOptions } from './types.js';

/** libfuse 3.14: mount.c's mount options and fuse_lowlevel.c's session options, then
 *  helper.c's connection options (fuse_parse_conn_info_opts). The high-level API's options
 *  (attr_timeout, kernel_cache, uid=, umask=, ...) are not libfuse's business here: the mount
 *  implements what it needs itself. Left out: blkdev (the kernel refuses it for fuse), user=,
 *  context= and friends (SELinux), auto_unmount (needs fusermount3 as a second process). */
const FLAGS = new Set(('allow_other allow_root default_permissions ro rw suid nosuid dev nodev ' +
  'exec noexec async sync atime noatime dirsync debug async_read sync_read atomic_o_trunc ' +
  'no_remote_lock no_remote_flock no_remote_posix_lock splice_move splice_read splice_write ' +
  'no_splice_move no_splice_read no_splice_write auto_inval_data no_auto_inval_data async_dio ' +
  'no_async_dio writeback_cache no_writeback_cache').split(' '));
const UINT = /^\d{1,10}$/;
/** Printable ASCII but ',' (the separator) and '\\' (libfuse's escape). */
const NAME = /^(?:(?![,\\])[!-~]){1,255}$/;
const VALUED: Readonly<Record<string, RegExp>> = {
  max_read: UINT, max_write: UINT, max_readahead: UINT, max_background: UINT, congestion_threshold: UINT,
  time_gran: UINT, readdirplus: /^(yes|no|auto)$/, fsname: NAME, subtype: NAME,
};
/** The addon copies each argument into 4 KiB. */
const ARG_MAX = 4000;

function checkOption(option: string): void {
  const [name = '', value] = option.split(/=(.*)/s);
  const pattern = Object.hasOwn(VALUED, name) ? VALUED[name] : undefined;
  const ok = value === undefined ? FLAGS.has(name)
    : pattern !== undefined && pattern.test(value) && (pattern !== UINT || Number(value) <= 0xffffffff);
  if (!ok) throw new VircptError('INVALID', `FUSE option not accepted by libfuse 3: ${option}`);
}

/** The -o list the options give, each checked against what libfuse 3 accepts. */
export function fuseOptionList(o: FuseMountOptions): string[] {
  const named: Array<[unknown, string]> = [
    [o.allowOther, 'allow_other'], [o.defaultPermissions, 'default_permissions'], [o.readOnly, 'ro'],
  ];
  const list = named.filter(([on]) => on === true).map(([, name]) => name);
  if (o.fsname !== undefined) list.push(`fsname=${o.fsname}`);
  if (o.subtype !== undefined) list.push(`subtype=${o.subtype}`);
  list.push(...(o.extraOptions ?? []));
  list.forEach(checkOption);
  if (list.join(',').length > ARG_MAX) throw new VircptError('INVALID', 'FUSE options longer than the addon accepts');
  return list;
}
