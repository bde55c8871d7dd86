// runProgram against real programs: exit codes, output, input, deadline, cancellation, absence.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runProgram } from '../src/run.js';

describe('runProgram', () => {
  it('keeps stdout and stderr (final newline stripped) and the exit code; the env is added to', async () => {
    const r = await runProgram('sh', ['-c', 'printf "a\\nb\\n"; echo "$LC_ALL $HOME" >&2; exit 3'], { env: { LC_ALL: 'C' } });
    assert.deepEqual([r.exitCode, r.stdout, r.stderr, r.timedOut, r.aborted], [3, 'a\nb', `C ${process.env.HOME}`, false, false]);
  });

  it('writes input to stdin; without it, stdin is empty', async () => {
    assert.equal((await runProgram('cat', [], { input: 'hello\n' })).stdout, 'hello');
    assert.equal((await runProgram('cat', [])).stdout, '');
  });

  it('kills a program past its deadline, and one whose signal aborts', async () => {
    const started = Date.now();
    const slow = await runProgram('sleep', ['30'], { timeoutMs: 200 });
    assert.deepEqual([slow.timedOut, slow.killedBy, slow.exitCode], [true, 'SIGTERM', null]);
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('stop')), 100);
    const cut = await runProgram('sleep', ['30'], { signal: ac.signal });
    assert.deepEqual([cut.aborted, cut.killedBy], [true, 'SIGTERM']);
    assert.ok(Date.now() - started < 5000);
    assert.equal((await runProgram('sleep', ['30'], { signal: AbortSignal.abort() })).aborted, true);
  });

  it('does not wait for a killed program\'s descendants that hold its output open', async () => {
    const started = Date.now();
    const r = await runProgram('sh', ['-c', 'sleep 2 & exec sleep 30'], { timeoutMs: 200 });
    assert.equal(r.timedOut, true);
    assert.ok(Date.now() - started < 3000, `returned after ${Date.now() - started} ms`);
  });

  it('says ENOENT for a program that is not installed', async () => {
    const r = await runProgram('vircpt-no-such-program', []);
    assert.deepEqual([r.exitCode, r.error?.code], [null, 'ENOENT']);
  });
});
