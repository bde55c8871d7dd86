// Typed NBD errors on top of the project's VircptError. Codes: NBD_SERVER_ERROR (the server
// said no; errno kept), NBD_PROTOCOL (the stream cannot be trusted; the connection is dead),
// NBD_CLOSED, NBD_UNSUPPORTED (the server lacks something this client needs).

import { VircptError } from '../errors.js';
import {
  NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM,
  NBD_ESHUTDOWN, NBD_REP_ERR_BLOCK_SIZE_REQD, NBD_REP_ERR_INVALID, NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY, NBD_REP_ERR_SHUTDOWN, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, EPROTO,
} from './constants.js';

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: 'EPERM', [NBD_EIO]: 'EIO', [NBD_ENOMEM]: 'ENOMEM', [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC', [NBD_EOVERFLOW]: 'EOVERFLOW', [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN', [EPROTO]: 'EPROTO',
};

const REP_ERR_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP', [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID', [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD', [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN', [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `error ${errno}`;
}

/** A request the server failed: errno as sent (proto.md "Error values"), its message kept. */
export function serverError(errno: number, serverMessage: string, what: string): VircptError {
  const detail = serverMessage ? `: ${serverMessage}` : '';
  return new VircptError('NBD_SERVER_ERROR', `NBD server failed ${what} with ${errnoName(errno)}${detail}`, { errno });
}

export function protocolError(message: string, cause?: unknown): VircptError {
  return new VircptError('NBD_PROTOCOL', `NBD protocol error: ${message}`, cause === undefined ? {} : { cause });
}

export function closedError(message = 'NBD connection closed', cause?: unknown): VircptError {
  return new VircptError('NBD_CLOSED', message, cause === undefined ? {} : { cause });
}

/** An option the server answered with an error reply (bit 31 set) during the handshake. */
export class NbdOptionError extends VircptError {
  readonly option: number;
  readonly reply: number;
  readonly serverMessage: string;

  constructor(option: number, reply: number, serverMessage: string, what: string) {
    const name = REP_ERR_NAMES[reply] ?? `error reply 0x${reply.toString(16)}`;
    const code = reply === NBD_REP_ERR_UNSUP ? 'NBD_UNSUPPORTED' : 'NBD_SERVER_ERROR';
    super(code, `NBD server refused ${what}: ${name}${serverMessage ? `: ${serverMessage}` : ''}`);
    this.option = option;
    this.reply = reply;
    this.serverMessage = serverMessage;
  }
}

/** Asked meta contexts the server did not select (QEMU drops an unknown bitmap silently). */
export class NbdMetaContextError extends VircptError {
  readonly missing: readonly string[];

  constructor(exportName: string, missing: readonly string[]) {
    super('NBD_UNSUPPORTED',
      `NBD export '${exportName}' has no meta context ${missing.map((m) => `'${m}'`).join(', ')}`);
    this.missing = missing;
  }
}
