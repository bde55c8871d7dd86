// A CPU profile of the vircptfs process under the benchmark. Node 20 refuses --cpu-prof in
// NODE_OPTIONS, so the bench preloads this module instead (NODE_OPTIONS=--import ...): it starts
// V8's sampling profiler through node:inspector and writes DIR/vircptfs-PID.cpuprofile (open it
// in Chrome DevTools or speedscope) when the process exits.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

/** Microseconds between samples: fine enough for 128 KiB FUSE reads (~0.1 ms each). */
const SAMPLING_INTERVAL_US = 200;

const dir = process.env.BENCH_CPU_PROFILE_DIR; // set by bench/fs.ts
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: SAMPLING_INTERVAL_US });
  session.post('Profiler.start');
  // A same-thread inspector session answers synchronously, so this works inside 'exit'.
  process.once('exit', () => {
    session.post('Profiler.stop', (err, result) => {
      if (err) return;
      writeFileSync(path.join(dir, `vircptfs-${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
