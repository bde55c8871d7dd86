// Waiting with a caller's signal on work that others share (docs/read-path.md, "Cancelling"):
// the caller stops waiting at once, the shared work goes on for the others.
import { VircptError } from '../errors.js';

/** The error a reader gets when its signal fires: TIMEOUT for AbortSignal.timeout(), else ABORTED. */
export function abortError(signal: AbortSignal): VircptError {
  const reason: unknown = signal.reason;
  const timedOut = reason instanceof Error && reason.name === 'TimeoutError';
  return timedOut
    ? new VircptError('TIMEOUT', 'read timed out', { cause: reason })
    : new VircptError('ABORTED', 'read aborted', { cause: reason });
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Settles like `work`, or rejects as soon as `signal` fires; `work` itself is not cancelled. */
export function raceAbort<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.catch(() => {}); // its failure, if any, has nobody left to report to
    return Promise.reject(abortError(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
