// The one place that knows errno numbers: typed errors from every layer become -errno here,
// at the FUSE edge; anything unknown is EIO (as nbdfuse does).
import { VircptError, type ErrorCode } from '../errors.js';

export const ENOENT = 2;
export const EIO = 5;
export const ENXIO = 6;
export const EBADF = 9;
export const EACCES = 13;
export const EBUSY = 16;
export const EISDIR = 21;
export const EINVAL = 22;
export const EROFS = 30;
export const ENOTSUP = 95;

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  NOT_FOUND: ENOENT,
  DOMAIN_NOT_FOUND: ENOENT,
  CHECKPOINT_NOT_FOUND: ENOENT,
  DISK_NOT_FOUND: ENOENT,
  BUSY: EBUSY,
  JOB_ACTIVE: EBUSY,
  FOREIGN_JOB: EBUSY,
  READ_ONLY: EROFS,
  INVALID: EINVAL,
  NO_DATA: ENXIO,
};

/** A positive errno for any rejection. */
export function toErrno(err: unknown): number {
  if (err instanceof VircptError) return BY_CODE[err.code] ?? EIO;
  return EIO;
}
