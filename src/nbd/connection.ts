// One NBD connection: the socket, the parser, the option exchange of the handshake and the
// table of requests in flight. Bulk data lands straight in the caller's buffer: the socket's
// `onread` buffer supplier hands out the parser's current OFFSET_DATA destination.
//
// The contract for a request its caller abandons (its signal aborts): the caller is told at
// once, except when the socket already holds its buffer for the next read (Node picks that
// buffer right after the previous read, so the read lands there whatever JS does meanwhile);
// then the caller is told right after that read. From then on not one byte reaches the
// caller's buffer: the rest of the reply is parsed into the scratch buffer and dropped. The
// request stays in flight, on the wire, until its reply ends (onRetired tells the client, whose
// limiter counts it until then). A request its server does not answer within requestTimeoutMs
// ends the connection: nothing behind a stalled reply can arrive, and an unanswered request
// would hold its place for ever.

import net from 'node:net';
import type tls from 'node:tls';
import { VircptError } from '../errors.js';
import { NBD_CMD_DISC, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_OPT_ABORT, NBD_OPT_STARTTLS, NBD_REP_ACK, NBD_REP_ERR_POLICY, NBD_REP_ERR_UNSUP, NBD_REP_FLAG_ERROR } from './constants.js';
import { encodeClientFlags, encodeOption, encodeRequest } from './codec.js';
import { closedError } from './errors.js';
import { NbdParser, type ParserEvent, type ReplyTarget } from './parser.js';
import { loadCredentials, secureSocket, tlsError, type NbdTlsOptions, type TlsCredentials } from './tls.js';

export interface SocketTarget { socketPath?: string; host?: string; port?: number }

export interface ConnectionOptions extends SocketTarget {
  /** Bound on connecting plus the whole handshake (default 10 s). */
  connectTimeoutMs?: number;
  /** Bound on each request once sent (default 30 s). */
  requestTimeoutMs?: number;
  signal?: AbortSignal;
  /** Read into the destination buffer via `onread` (default); false feeds bytes from 'data'
   *  events (with TLS: 'data' events instead of push(), for the benchmark's comparison). */
  onread?: boolean;
  /** NBD over TLS (TCP only): STARTTLS before any other option; off when absent. */
  tls?: NbdTlsOptions | undefined;
}

export interface OptionReply { reply: number; data: Buffer }
export interface OptionResult { replies: OptionReply[]; final: OptionReply }

interface Request extends ReplyTarget {
  /** The reply ended, or the connection failed: tells the caller (unless told), retires it. */
  finish(error?: VircptError): void;
  /** The socket's pending read (into the caller's buffer) is done: a deferred abandon is told. */
  flush(): void;
  onBlockStatus: ((contextId: number, extents: Uint32Array) => void) | undefined;
}

export interface SubmitOptions {
  signal?: AbortSignal | undefined;
  onBlockStatus?: (contextId: number, extents: Uint32Array) => void;
  /** Called once when the request is off the wire: its reply ended, or it never went out, or the
   *  connection failed. An abandoned request retires only then, after its caller was told. */
  onRetired?: () => void;
}

const SCRATCH_SIZE = 256 * 1024;
/** Below this, one read into the scratch buffer (payload and next headers together) is cheaper. */
const DIRECT_READ_MIN = 16 * 1024;
const CLOSE_WAIT_MS = 5_000;

function timeoutError(what: string, ms: number): VircptError {
  return new VircptError('TIMEOUT', `${what} timed out after ${ms} ms`);
}

function abortedError(signal: AbortSignal, what: string): VircptError {
  return new VircptError('ABORTED', `${what} aborted`, { cause: signal.reason });
}

export class NbdConnection {
  #handshakeFlags = 0;
  #socket: net.Socket;
  /** The TCP socket under TLS (the same as #socket without TLS). */
  readonly #raw: net.Socket;
  #secure = false;
  readonly #dataEvents: boolean;
  #socketError: Error | undefined;
  readonly #onData = (chunk: Buffer): void => this.#parser.push(chunk);
  readonly #parser: NbdParser;
  readonly #requestTimeoutMs: number;
  readonly #inFlight = new Map<number, Request>();
  readonly #scratch = Buffer.allocUnsafe(SCRATCH_SIZE);
  #direct: Buffer | undefined;
  /** The request whose buffer #direct is: the socket reads into it next. */
  #directOwner: Request | undefined;
  #nextCookie = 1;
  #waiter: { replies: OptionReply[]; resolve(r: OptionResult | number): void; reject(e: Error): void } | undefined;
  #failure: VircptError | undefined;
  #closing: Promise<void> | undefined;
  #transmission = false;
  #corked = false;
  #drained: (() => void) | undefined;
  readonly #closed: Promise<void>;
  #onClose: (unused: undefined) => void = () => {};
  readonly #disarm: () => void;

  /** Connects and completes the greeting; the connection is then in the option phase. */
  static async open(options: ConnectionOptions): Promise<NbdConnection> {
    const tlsWanted = options.tls !== undefined && options.tls.mode !== 'off';
    if (tlsWanted && options.socketPath !== undefined) throw tlsError('TLS is for TCP connections (host and port), not Unix sockets');
    // Before connecting: a missing certificate is a configuration error, not a server's.
    const credentials = tlsWanted ? loadCredentials(options.tls!.certs) : undefined;
    const conn = new NbdConnection(options);
    const handshakeFlags = await conn.#expect<number>();
    if (!(handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE)) {
      conn.destroy();
      throw new VircptError('NBD_UNSUPPORTED', 'NBD server does not speak fixed newstyle negotiation');
    }
    conn.#handshakeFlags = handshakeFlags;
    // proto.md "Client flags": set only what the server offered (same bit positions).
    const offered = handshakeFlags & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    conn.#socket.write(encodeClientFlags(offered & (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)));
    if (credentials !== undefined) {
      try {
        await conn.#startTls(options.tls!, options.host ?? 'localhost', credentials);
      } catch (err) {
        conn.destroy(err instanceof VircptError ? err : undefined);
        throw err;
      }
    }
    return conn;
  }

  /** Whether the connection runs over TLS. */
  get secure(): boolean { return this.#secure; }

  /** The TLS version and cipher suite negotiated (`TLSv1.3 TLS_AES_256_GCM_SHA384`), if secure. */
  get tlsCipher(): string | undefined {
    if (!this.#secure) return undefined;
    const s = this.#socket as tls.TLSSocket;
    return `${s.getProtocol() ?? '?'} ${s.getCipher().standardName}`;
  }

  /** NBD_OPT_STARTTLS, then the TLS handshake on the same socket. Under `prefer`, a server without
   *  TLS (NBD_REP_ERR_UNSUP or _POLICY, QEMU's "TLS not configured") leaves plaintext. */
  async #startTls(o: NbdTlsOptions, host: string, credentials: TlsCredentials): Promise<void> {
    const result = await this.option(NBD_OPT_STARTTLS);
    const reply = result.final.reply;
    if (reply !== NBD_REP_ACK) {
      if (o.mode === 'prefer' && (reply === NBD_REP_ERR_UNSUP || reply === NBD_REP_ERR_POLICY)) return;
      const said = result.final.data.toString('utf8');
      throw tlsError(`the NBD server at ${host} does not offer TLS (reply 0x${reply.toString(16)}${said ? `: ${said}` : ''}) and nbd_tls=require`);
    }
    // The TLS socket takes the TCP socket's handle; bytes read from then on are TLS records.
    this.#raw.removeListener('data', this.#onData);
    const { secure, handshake } = secureSocket({ socket: this.#raw, host, credentials });
    secure.on('error', (err) => { this.#socketError = err; }); // the close handler reports it
    secure.once('close', () => this.#onClose(undefined));
    this.#socket = secure;
    await Promise.race([handshake, this.#closed.then(() => { throw this.#failure; })]).catch((err: unknown) => {
      secure.destroy();
      throw err;
    });
    if (this.#dataEvents) secure.on('data', this.#onData);
    else this.#feedFrom(secure);
    this.#secure = true;
  }

  /**
   * The TLS socket's plaintext goes to the parser from its push(). A TLS socket wrapping a socket
   * ignores `onread` (Node 20), so every TLS record (16 KiB at most) comes as a fresh Buffer; a
   * 'data' listener would take each one through Readable's buffering and events first, about a
   * tenth of the CPU of a TLS read (docs/benchmarks.md). Node hands a socket every chunk it reads
   * through push(); the end (null) goes on to Readable, which ends and closes the socket as usual.
   */
  #feedFrom(secure: tls.TLSSocket): void {
    const push = secure.push.bind(secure);
    secure.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (!Buffer.isBuffer(chunk)) return push(chunk, encoding);
      this.#parser.push(chunk);
      return true;
    };
    secure.resume();
  }

  private constructor(options: ConnectionOptions) {
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.#dataEvents = options.onread === false;
    this.#parser = new NbdParser({ lookup: (cookie) => this.#inFlight.get(cookie), onEvent: (e) => this.#onEvent(e) });
    // A TLS socket over this one ignores `onread`: with TLS, bytes come from push() (#feedFrom).
    const plain = options.onread === false || (options.tls !== undefined && options.tls.mode !== 'off');
    const onread = plain ? undefined : {
      buffer: () => this.#nextBuffer(),
      callback: (n: number, buf: Uint8Array) => this.#onRead(n, buf),
    };
    const where = options.socketPath !== undefined
      ? { path: options.socketPath } : { host: options.host ?? 'localhost', port: options.port ?? 10809 };
    this.#socket = net.connect({ ...where, onread });
    this.#raw = this.#socket;
    if (onread === undefined) this.#socket.on('data', this.#onData);
    this.#socket.on('error', (err) => { this.#socketError = err; });
    this.#closed = new Promise((resolve) => {
      this.#onClose = () => {
        const socketError = this.#socketError;
        const detail = socketError ? `: ${socketError.message}` : '';
        // TLS 1.3: the server judges our certificate after the handshake, and says no by closing.
        this.#fail(this.#secure && !this.#transmission
          ? tlsError(`the server closed the connection right after the TLS handshake${detail}; it may not trust the client certificate in ${options.tls?.certs}`, socketError)
          : closedError(`NBD connection closed${detail}`, socketError));
        resolve();
      };
      this.#socket.once('close', () => this.#onClose(undefined));
    });
    this.#disarm = this.#armHandshake(options);
  }

  get handshakeFlags(): number { return this.#handshakeFlags; }
  get failure(): VircptError | undefined { return this.#failure; }

  /** Bounds the handshake in time and by the caller's signal; returns the disarming function. */
  #armHandshake(options: ConnectionOptions): () => void {
    const ms = options.connectTimeoutMs ?? 10_000;
    const timer = setTimeout(() => this.destroy(timeoutError('NBD connect and handshake', ms)), ms);
    const signal = options.signal;
    const onAbort = () => this.destroy(abortedError(signal!, 'NBD connect'));
    if (signal?.aborted) queueMicrotask(onAbort);
    signal?.addEventListener('abort', onAbort, { once: true });
    return () => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort); };
  }

  #nextBuffer(): Buffer {
    const target = this.#parser.readTarget();
    this.#direct = target !== undefined && target.length >= DIRECT_READ_MIN ? target : undefined;
    this.#directOwner = this.#direct && (this.#parser.readOwner() as Request | undefined);
    return this.#direct ?? this.#scratch;
  }

  #onRead(n: number, buf: Uint8Array): boolean {
    const owner = this.#directOwner;
    this.#directOwner = undefined;
    if (!this.#parser.dead) {
      if (buf === this.#direct) this.#parser.advanceDirect(n);
      else this.#parser.push(this.#scratch.subarray(0, n));
    }
    owner?.flush();
    return true;
  }

  #expect<T extends number | OptionResult>(): Promise<T> {
    return new Promise((resolve, reject) => {
      if (this.#failure) return reject(this.#failure);
      this.#waiter = { replies: [], resolve: resolve as (r: OptionResult | number) => void, reject };
    });
  }

  #onEvent(event: ParserEvent): void {
    switch (event.type) {
      case 'greeting': return this.#resolveWaiter(event.handshakeFlags);
      case 'optionReply': return this.#onOptionReply(event.reply, event.data);
      case 'blockStatus': return this.#inFlight.get(event.cookie)?.onBlockStatus?.(event.contextId, event.extents);
      case 'done': return this.#onDone(event.cookie, event.error);
      case 'protocolError': return this.destroy(event.error);
      default: return undefined; // data and holes are already in the sink
    }
  }

  #resolveWaiter(value: OptionResult | number): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.resolve(value);
  }

  #onOptionReply(reply: number, data: Buffer): void {
    if (this.#waiter === undefined) return this.destroy(new VircptError('NBD_PROTOCOL', 'NBD protocol error: unsolicited option reply'));
    const entry = { reply, data };
    // An option ends with NBD_REP_ACK or an error; INFO, SERVER, META_CONTEXT come before.
    if (reply === NBD_REP_ACK || (reply & NBD_REP_FLAG_ERROR) !== 0) {
      this.#resolveWaiter({ replies: this.#waiter.replies, final: entry });
    } else {
      this.#waiter.replies.push(entry);
    }
  }

  /** Sends one option and gathers its replies up to the final one (proto.md: one at a time). */
  option(option: number, data?: Buffer): Promise<OptionResult> {
    if (this.#transmission || this.#waiter) throw new Error('option outside the option phase');
    const result = this.#expect<OptionResult>();
    if (!this.#failure) this.#socket.write(encodeOption(option, data));
    return result;
  }

  /** Called after NBD_OPT_GO was acknowledged (the parser has switched already). */
  enterTransmission(contextIds: Iterable<number>): void {
    this.#parser.setMetaContexts(contextIds);
    this.#transmission = true;
    this.#disarm();
  }

  /** Sends one request; resolves when its reply is complete. */
  submit(command: number, offset: number, length: number, sink: Buffer | undefined, options: SubmitOptions = {}): Promise<void> {
    const early = this.#closing ? closedError('NBD connection is closed') : this.#failure;
    if (early) {
      options.onRetired?.();
      return Promise.reject(early);
    }
    const cookie = this.#nextCookie++;
    return new Promise<void>((resolve, reject) => {
      const { signal } = options;
      // Unanswered in time: the connection is not to be trusted (see the top of this file).
      const timer = setTimeout(() => this.destroy(timeoutError(`NBD request ${cookie}`, this.#requestTimeoutMs)), this.#requestTimeoutMs);
      let told = false;
      let deferred: VircptError | undefined;
      const tell = (error: VircptError | undefined) => {
        if (told) return;
        told = true;
        signal?.removeEventListener('abort', onAbort);
        if (error) reject(error); else resolve();
      };
      const onAbort = () => {
        // No byte of this request may reach the caller's buffer any more.
        request.sink = undefined;
        request.onBlockStatus = undefined;
        const error = abortedError(signal!, `NBD request ${cookie}`);
        if (this.#directOwner === request) deferred = error;
        else tell(error);
      };
      const request: Request = {
        command, offset, length, sink, onBlockStatus: options.onBlockStatus,
        finish: (error) => {
          clearTimeout(timer);
          tell(deferred ?? error);
          options.onRetired?.();
        },
        flush: () => { if (deferred) tell(deferred); },
      };
      this.#inFlight.set(cookie, request);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#send(encodeRequest(0, command, cookie, offset, length));
      if (signal?.aborted) onAbort();
    });
  }

  /** Requests issued in one tick leave in one write. */
  #send(request: Buffer): void {
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(() => { this.#corked = false; this.#socket.uncork(); });
    }
    this.#socket.write(request);
  }

  #onDone(cookie: number, error: VircptError | undefined): void {
    const request = this.#inFlight.get(cookie);
    this.#inFlight.delete(cookie);
    request?.finish(error);
    if (this.#inFlight.size === 0) this.#drained?.();
  }

  #fail(error: VircptError): void {
    this.#failure ??= error;
    this.#disarm();
    this.#waiter?.reject(this.#failure);
    this.#waiter = undefined;
    const requests = [...this.#inFlight.values()];
    this.#inFlight.clear();
    this.#directOwner = undefined; // the socket is closed or about to be, in this same tick
    for (const request of requests) request.finish(this.#failure);
    this.#drained?.();
  }

  /** Fails everything now and drops the socket. Idempotent. */
  destroy(error?: VircptError): void {
    this.#fail(error ?? closedError('NBD connection destroyed'));
    this.#socket.destroy();
    this.#raw.destroy();
  }

  /** Waits for requests in flight, then disconnects softly (NBD_CMD_DISC / NBD_OPT_ABORT). */
  close(): Promise<void> {
    return (this.#closing ??= this.#doClose());
  }

  async #doClose(): Promise<void> {
    if (!this.#failure) {
      if (this.#transmission) {
        await this.#drain();
        // proto.md: "The values of the length and offset fields in a disconnect request MUST be zero."
        if (!this.#failure) this.#socket.write(encodeRequest(0, NBD_CMD_DISC, this.#nextCookie++, 0, 0));
      } else if (this.#waiter === undefined) {
        this.#socket.write(encodeOption(NBD_OPT_ABORT));
      }
      this.#socket.end();
    }
    const timer = setTimeout(() => this.destroy(), CLOSE_WAIT_MS);
    await this.#closed;
    clearTimeout(timer);
  }

  #drain(): Promise<void> {
    if (this.#inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.destroy(timeoutError('NBD close', this.#requestTimeoutMs)), this.#requestTimeoutMs);
      this.#drained = () => { clearTimeout(timer); this.#drained = undefined; resolve(); };
    });
  }
}
