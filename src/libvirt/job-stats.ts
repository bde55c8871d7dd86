// A domain job's raw statistics (`virsh domjobinfo --rawstats`): for a pull-mode backup, how
// much scratch space the job has used so far and the most it can use (libvirt 9.0 prints, e.g.
//   Job type: 2
//   operation: 9
//   time_elapsed: 2876
//   disk_temp_used: 4194304
//   disk_temp_total: 67108864
// while the human form says "Temporary disk space use: 4.000 MiB", rounded).
import type { Virsh } from './virsh.js';

/** virDomainJobType: 0 none, 1 bounded, 2 unbounded, 3 completed, 4 failed, 5 cancelled. */
const RUNNING_TYPES = new Set([1, 2]);
/** virDomainJobOperation's VIR_DOMAIN_JOB_OPERATION_BACKUP. */
export const JOB_OPERATION_BACKUP = 9;

export interface JobStats {
  /** A job runs now (bounded or unbounded). */
  running: boolean;
  /** virDomainJobOperation, when libvirt says. */
  operation: number | undefined;
  /** Bytes of scratch (temporary disk) space the backup job has used so far. */
  tempUsed: number | undefined;
  /** The most scratch space it can use: the size of every disk it copies from. */
  tempTotal: number | undefined;
}

export function parseJobStats(text: string): JobStats {
  const field = (name: string): number | undefined => {
    const m = new RegExp(`^${name}:\\s*(\\d+)\\s*$`, 'mi').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  return {
    running: RUNNING_TYPES.has(field('Job type') ?? 0),
    operation: field('operation'),
    tempUsed: field('disk_temp_used'),
    tempTotal: field('disk_temp_total'),
  };
}

export async function jobStats(virsh: Virsh, domain: string, timeoutMs?: number): Promise<JobStats> {
  return parseJobStats(await virsh.run(['domjobinfo', '--rawstats', '--', domain], timeoutMs === undefined ? {} : { timeoutMs }));
}
