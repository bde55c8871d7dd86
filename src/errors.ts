// The project's one error type. Every layer throws VircptError with a code; only the FUSE edge
// (src/fs/errno.ts) turns codes into errno numbers, and only bin/ turns them into exit codes.

export type ErrorCode =
  // usage and input
  | 'USAGE'
  // libvirt
  | 'DOMAIN_NOT_FOUND'
  | 'DOMAIN_NOT_RUNNING'
  | 'CHECKPOINT_NOT_FOUND'
  | 'CHECKPOINT_EXISTS'
  | 'DISK_NOT_FOUND'
  | 'JOB_ACTIVE'
  | 'FOREIGN_JOB'
  | 'NO_EXPORT'
  | 'AGENT_UNAVAILABLE'
  | 'LIBVIRT'
  | 'UNSUPPORTED'
  // NBD
  | 'NBD_SERVER_ERROR'
  | 'NBD_PROTOCOL'
  | 'NBD_CLOSED'
  | 'NBD_UNSUPPORTED'
  /** NBD over TLS could not be set up: certificates, names, or a server without TLS. */
  | 'NBD_TLS'
  | 'TIMEOUT'
  | 'ABORTED'
  // filesystem edge
  | 'NOT_FOUND'
  | 'BUSY'
  | 'READ_ONLY'
  | 'INVALID'
  /** A path component longer than NAME_MAX. */
  | 'NAME_TOO_LONG'
  /** lseek SEEK_DATA/SEEK_HOLE: no data after the offset, or the offset is past the end. */
  | 'NO_DATA'
  /** Not enough free space for an export's scratch images (below the scratch reserve). */
  | 'NO_SPACE'
  | 'IO';

export class VircptError extends Error {
  readonly code: ErrorCode;
  /** errno from the far side (an NBD server error), when there is one. */
  readonly errno: number | undefined;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions & { errno?: number }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.errno = options?.errno;
  }
}

export function isVircptError(err: unknown, code?: ErrorCode): err is VircptError {
  return err instanceof VircptError && (code === undefined || err.code === code);
}

/** The message of anything thrown, for one-line reports. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
