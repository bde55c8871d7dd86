// A mount's life: mounting (resolved once the kernel sent INIT), the end of its session however
// it comes (unmount here, umount from outside, the connection aborted), and a mount that left
// this mount namespace while a copy in another one (libvirt gives each QEMU one) still holds it.
import { realpath, stat } from 'node:fs/promises';
import { VircptError, messageOf } from '../../errors.js';
import { runProgram } from '../../run.js';
import { fuseMountEntry, readMountinfo } from './mountinfo.js';
import { loadAddon, type Addon, type Session } from './native.js';
import { fuseOptionList } from './options.js';
import { Server } from './server.js';
import type { FuseLoopExit, FuseMount, FuseMountOptions, FuseOperations } from './types.js';

const MOUNTINFO_POLL_MS = 500;
const DEADLOCK_GUARD_MS = 5000;
/** Linux's PATH_MAX, less the terminating NUL. */
const PATH_MAX = 4095;
const FUSERMOUNT_TIMEOUT_MS = 15_000;

/**
 * Detaches the FUSE mount at `mountpoint` lazily (like umount -l) with fusermount3 -uz: the way
 * without a session of ours (a dead mount left by a killed daemon), and for a user who may not
 * umount2(2) (fusermount3 is setuid root). The one way this program unmounts besides the
 * addon's umount2(MNT_DETACH) on its own session (Mount.unmount).
 */
export async function lazyUnmount(mountpoint: string): Promise<void> {
  const r = await runProgram('fusermount3', ['-u', '-z', '--', mountpoint], { timeoutMs: FUSERMOUNT_TIMEOUT_MS });
  if (r.exitCode === 0) return;
  const why = r.error?.code === 'ENOENT' ? 'not installed (Debian: fuse3)'
    : r.stderr || r.error?.message || (r.timedOut ? `no answer within ${FUSERMOUNT_TIMEOUT_MS / 1000} s` : `exit code ${r.exitCode}`);
  throw new VircptError('IO', `fusermount3 -uz ${mountpoint}: ${why}`);
}

class Mount implements FuseMount {
  readonly exited: Promise<FuseLoopExit>;
  devId = '';
  #open = 0;
  #absentPolls = 0;
  #ended = false;
  #leftNamespace = false;
  #deadlocksAvoided = 0;
  #requested = false;
  #unmounting: Promise<void> | undefined;
  #settleExit!: (exit: FuseLoopExit) => void;
  #initialized!: () => void;
  #failedEarly!: (err: Error) => void;
  readonly initialized: Promise<void>;
  readonly server: Server;

  constructor(readonly mountpoint: string, readonly addon: Addon, ops: FuseOperations, options: FuseMountOptions) {
    this.exited = new Promise((resolve) => { this.#settleExit = resolve; });
    this.initialized = new Promise((resolve, reject) => { this.#initialized = resolve; this.#failedEarly = reject; });
    this.server = new Server(addon, ops, options, {
      initialized: () => this.#initialized(),
      opened: () => { this.#open++; },
      released: () => { this.#open--; },
    });
  }

  get #session(): Session {
    return this.server.session!;
  }

  get pending(): number {
    return this.#ended ? 0 : this.addon.pending(this.#session);
  }

  get deadlocksAvoided(): number {
    return this.#ended ? this.#deadlocksAvoided : this.addon.deadlocksAvoided(this.#session);
  }

  /** The addon's onEnd: the session's poll handle is closed; free it and report. */
  sessionEnded(status: number): void {
    if (this.#ended) return;
    this.#deadlocksAvoided = this.addon.deadlocksAvoided(this.#session);
    this.#ended = true;
    // Not from inside the addon's callback, whose async context destroy() releases.
    const session = this.#session;
    setImmediate(() => this.addon.destroy(session));
    this.#failedEarly(new VircptError('IO', `the FUSE session at ${this.mountpoint} ended before the kernel's INIT (status ${status})`));
    this.#settleExit({ status: this.#leftNamespace ? undefined : status, external: !this.#requested });
  }

  watch(): void {
    const timer = setInterval(() => this.#check(), MOUNTINFO_POLL_MS).unref();
    void this.exited.then(() => clearInterval(timer));
  }

  /** Gone from this namespace with no file open, on two polls in a row (the session's own
   *  end, when it comes, is reported first), counts as ended: stop serving the copy. */
  #check(): void {
    readMountinfo().then((all) => {
      const gone = this.#open === 0 && !all.some((m) => m.devId === this.devId);
      this.#absentPolls = gone ? this.#absentPolls + 1 : 0;
      if (this.#absentPolls < 2 || this.#ended) return;
      this.#leftNamespace = true;
      this.addon.stop(this.#session);
    }, () => {});
  }

  onExit(cb: (exit: FuseLoopExit) => void): void { void this.exited.then(cb); }

  unmount(): Promise<void> {
    this.#unmounting ??= this.#detach().catch((err: unknown) => {
      this.#unmounting = undefined;
      throw err;
    });
    return this.#unmounting;
  }

  async #detach(): Promise<void> {
    this.#requested = true;
    if (!this.#ended) {
      try {
        this.addon.detach(this.#session); // umount2(MNT_DETACH): root only
      } catch (err) {
        if ((err as { code?: string }).code !== 'EPERM') {
          if (!(await this.#stillMounted())) return this.exited.then(() => {});
          throw new VircptError('IO', `cannot unmount ${this.mountpoint}: ${messageOf(err)}`, { cause: err });
        }
        await lazyUnmount(this.mountpoint).catch(async (e: unknown) => {
          if (await this.#stillMounted()) throw e;
        });
      }
    }
    await this.exited;
  }

  async #stillMounted(): Promise<boolean> {
    return !this.#ended && (await readMountinfo()).some((m) => m.devId === this.devId);
  }

  [Symbol.asyncDispose](): Promise<void> { return this.unmount(); }
}

/** Mounts ops at mountpoint (an existing directory); resolves once the kernel has sent INIT. */
export async function mountFuse(mountpoint: string, ops: FuseOperations, options: FuseMountOptions = {}): Promise<FuseMount> {
  const list = fuseOptionList(options);
  const addon = loadAddon();
  const dir = await realpath(mountpoint).catch((err: unknown) => {
    throw new VircptError('NOT_FOUND', `mountpoint ${mountpoint}: ${messageOf(err)}`, { cause: err });
  });
  if (Buffer.byteLength(dir) > PATH_MAX || !(await stat(dir)).isDirectory()) {
    throw new VircptError('INVALID', `mountpoint ${mountpoint} is not a directory or too long`);
  }
  const mount = new Mount(dir, addon, ops, options);
  try {
    mount.server.session = addon.mount(dir, list.length ? ['-o', list.join(',')] : [], mount.server.dispatch,
      (status) => mount.sessionEnded(status), options.deadlockGuardMs ?? DEADLOCK_GUARD_MS);
  } catch (err) {
    throw new VircptError('IO', `cannot mount FUSE at ${dir}: ${messageOf(err)}`, { cause: err });
  }
  await mount.initialized.catch(async (err: unknown) => {
    await mount.exited;
    throw err;
  });
  mount.devId = (await fuseMountEntry(dir))?.devId ?? '';
  mount.watch();
  return mount;
}
