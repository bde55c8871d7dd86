// The one place that knows errno numbers: typed errors from every layer become errno here, at
// the FUSE edge. One table, one row per error code, each with what the reader should make of it;
// docs/errors.md is the same table for users (test/fs/errno.unit.test.ts keeps the two in step).
// Anything that is not one of our errors is EIO (as nbdfuse does).
import { VircptError, type ErrorCode } from '../errors.js';

export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const EIO = 5;
export const ENXIO = 6;
export const EBADF = 9;
export const ENOMEM = 12;
export const EACCES = 13;
export const EBUSY = 16;
export const EEXIST = 17;
export const EISDIR = 21;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EROFS = 30;
export const ENAMETOOLONG = 36;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;

export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [EPERM]: 'EPERM', [ENOENT]: 'ENOENT', [EINTR]: 'EINTR', [EIO]: 'EIO', [ENXIO]: 'ENXIO', [EBADF]: 'EBADF',
  [ENOMEM]: 'ENOMEM', [EACCES]: 'EACCES', [EBUSY]: 'EBUSY', [EEXIST]: 'EEXIST', [EISDIR]: 'EISDIR',
  [EINVAL]: 'EINVAL', [ENOSPC]: 'ENOSPC', [EROFS]: 'EROFS', [ENAMETOOLONG]: 'ENAMETOOLONG', [EOVERFLOW]: 'EOVERFLOW', [ENOTSUP]: 'ENOTSUP',
};

/** What a reader gets for an error code: `errno`, or `'server'` for the NBD server's own errno. */
export interface ErrnoRow {
  errno: number | 'server';
  /** When it happens and what to do, in the reader's terms (docs/errors.md says the same). */
  meaning: string;
}

const EXPORT_GONE = 'the export went away or its connection closed (VM destroyed, job aborted, released): open the file again';

export const ERRNO_TABLE: Readonly<Record<ErrorCode, ErrnoRow>> = {
  NOT_FOUND: { errno: ENOENT, meaning: 'no such path in the tree' },
  DOMAIN_NOT_FOUND: { errno: ENOENT, meaning: 'the domain is gone (undefined, or filtered out by domain=)' },
  CHECKPOINT_NOT_FOUND: { errno: ENOENT, meaning: 'the checkpoint is gone (deleted)' },
  DISK_NOT_FOUND: { errno: ENOENT, meaning: 'the disk is not in this checkpoint' },
  READ_ONLY: { errno: EROFS, meaning: 'an open for writing: everything is read-only' },
  INVALID: { errno: EINVAL, meaning: 'a request the filesystem does not take (lseek whence, readdir of a file)' },
  NAME_TOO_LONG: { errno: ENAMETOOLONG, meaning: 'a path component longer than 255 bytes' },
  USAGE: { errno: EINVAL, meaning: 'bad input' },
  NO_DATA: { errno: ENXIO, meaning: 'lseek SEEK_DATA/SEEK_HOLE: nothing of that kind after the offset' },
  BUSY: { errno: EBUSY, meaning: 'the running export of the domain cannot serve this file (another checkpoint\'s dirty map, a disk it lacks): close the domain\'s files and retry once it is released' },
  JOB_ACTIVE: { errno: EBUSY, meaning: 'the domain has a job of another vircptfs instance that cannot be read through' },
  FOREIGN_JOB: { errno: EBUSY, meaning: 'the domain has a libvirt job vircptfs did not start (a backup tool, a migration): it is left alone; retry when it ends' },
  NO_SPACE: { errno: ENOSPC, meaning: 'at open: the scratch filesystem has less free space than the reserve (scratch_reserve), so no export is started; free space and retry' },
  NBD_CLOSED: { errno: EIO, meaning: EXPORT_GONE },
  NO_EXPORT: { errno: EIO, meaning: EXPORT_GONE },
  DOMAIN_NOT_RUNNING: { errno: EIO, meaning: EXPORT_GONE },
  NBD_SERVER_ERROR: { errno: 'server', meaning: 'the NBD server failed the request: its own errno (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP) is passed through; ESHUTDOWN (the server is going away) and anything else is EIO' },
  NBD_PROTOCOL: { errno: EIO, meaning: 'the NBD server broke the protocol: that connection is dropped' },
  NBD_UNSUPPORTED: { errno: EIO, meaning: 'the NBD server lacks something reading needs (a dirty bitmap context)' },
  NBD_TLS: { errno: EACCES, meaning: 'at open: NBD over TLS to a remote hypervisor could not be set up (a certificate not trusted or missing, the dialled name not in the server\'s certificate, a host without backup TLS): the log says which; fix nbd_certs=, nbd_host= or the host\'s qemu.conf' },
  TIMEOUT: { errno: EIO, meaning: 'an internal deadline passed (an NBD request or libvirt call that did not answer)' },
  ABORTED: { errno: EINTR, meaning: 'the reader interrupted the read (a signal): retry it' },
  LIBVIRT: { errno: EIO, meaning: 'libvirt refused or failed (its words are in the log)' },
  AGENT_UNAVAILABLE: { errno: EIO, meaning: 'the guest agent did not answer' },
  CHECKPOINT_EXISTS: { errno: EEXIST, meaning: 'a checkpoint of that name exists (vircpt only)' },
  UNSUPPORTED: { errno: ENOTSUP, meaning: 'not possible on this connection (a shut-off domain of a remote hypervisor: its disks would need qemu-nbd on that host)' },
  IO: { errno: EIO, meaning: 'an input/output failure' },
};

/** The NBD errnos (proto.md "Error values") a reader gets as they are: they mean the same to it. */
const SERVER_PASSED = new Set([EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP]);

/** A positive errno for any rejection. */
export function toErrno(err: unknown): number {
  if (!(err instanceof VircptError)) return EIO;
  const row = ERRNO_TABLE[err.code];
  if (row === undefined) return EIO;
  if (row.errno !== 'server') return row.errno;
  return err.errno !== undefined && SERVER_PASSED.has(err.errno) ? err.errno : EIO;
}
