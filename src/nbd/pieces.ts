// A read made of several requests: they share one abort signal, linked to the caller's, so one
// failed piece withdraws the others (or lets them be abandoned) instead of leaving them running.
import { setMaxListeners } from 'node:events';

export async function allPieces(
  signal: AbortSignal | undefined,
  start: (group: AbortSignal) => Promise<unknown>[],
): Promise<void> {
  const group = new AbortController();
  setMaxListeners(0, group.signal); // one listener per piece
  const onAbort = () => group.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) onAbort();
  try {
    await Promise.all(start(group.signal));
  } catch (err) {
    group.abort(err);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
