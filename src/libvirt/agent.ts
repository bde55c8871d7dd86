// Guest-agent filesystem freeze around checkpoint creation and export start, when the agent answers.
import type { Logger } from '../log.js';
import { messageOf } from '../errors.js';
import type { DomainDetails } from './domain.js';
import type { Virsh } from './virsh.js';

/** What is needed of a domain to know whether its agent can answer. */
export type AgentDomain = Pick<DomainDetails, 'name' | 'state' | 'agentChannel'>;

const AGENT_TIMEOUT_S = 3;

/**
 * True when the domain's guest agent answers a ping within a few seconds. A domain without an
 * agent channel, or a paused one (its guest cannot answer), is not asked: no round trip.
 */
export async function agentAvailable(virsh: Virsh, domain: AgentDomain): Promise<boolean> {
  if (!domain.agentChannel || domain.state === 'paused') return false;
  try {
    await virsh.run(
      ['qemu-agent-command', '--timeout', String(AGENT_TIMEOUT_S), '--', domain.name, '{"execute":"guest-ping"}'],
      { timeoutMs: (AGENT_TIMEOUT_S + 2) * 1000 },
    );
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs fn with the guest's filesystems frozen when its agent answers; otherwise runs it anyway and
 * warns that the data will be crash-consistent. Thaw always runs.
 */
export async function withFrozenGuest<T>(
  virsh: Virsh,
  dom: AgentDomain,
  log: Logger,
  fn: () => Promise<T>,
): Promise<T> {
  const domain = dom.name;
  if (!(await agentAvailable(virsh, dom))) {
    // fn first: a short-lived vircpt loads its logger for this first line (tens of milliseconds
    // of CPU), which then overlaps the virsh process fn starts instead of delaying it.
    const result = fn();
    log.warn({ domain }, `domain ${domain}: guest agent not reachable, no filesystem freeze (crash-consistent)`);
    return result;
  }
  try {
    await virsh.run(['domfsfreeze', '--', domain], { timeoutMs: 30_000 });
  } catch (err) {
    log.warn({ domain }, `domain ${domain}: fsfreeze failed (${messageOf(err)}), continuing crash-consistent`);
    return fn();
  }
  try {
    return await fn();
  } finally {
    await virsh.run(['domfsthaw', '--', domain], { timeoutMs: 30_000 }).catch((err: unknown) => {
      log.error({ domain }, `domain ${domain}: fsthaw failed: ${messageOf(err)}`);
    });
  }
}
