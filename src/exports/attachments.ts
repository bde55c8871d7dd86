// An export's disks hot-plugged read-only into other running domains (`vircpt hotadd`), kept in
// the export's record. The record is written before each attach call and after each detach, so
// whatever a crashed vircpt leaves is found by the next run, which reconciles the record with each
// scanner's live XML: an attachment the scanner no longer has (detached, scanner destroyed or
// restarted, attach never completed) is forgotten; one it still has is kept and reported, never
// detached behind the scanner's back (its guest may be reading it): `hotremove` does that.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError, messageOf } from '../errors.js';
import { attachDisk, freeDriveAddress, freeTarget, hotplugView, requestDetach, type HotplugBus, type HotplugView, type LiveDisk } from '../libvirt/hotplug.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { readRecord, writeRecord, type Attachment, type DiskExport, type ExportRecord } from './export.js';

const POLL_MS = 100;

/** The scanner's live view, or undefined when it is gone or shut off (it then holds nothing of ours). */
async function liveView(virsh: Virsh, scanner: string): Promise<HotplugView | undefined> {
  try {
    const view = await hotplugView(virsh, scanner);
    return view.details.active ? view : undefined;
  } catch (err) {
    if (err instanceof VircptError && err.code === 'DOMAIN_NOT_FOUND') return undefined;
    throw err;
  }
}

/** The scanner's disk that is this attachment: our alias, reading from our export. */
function findLive(view: HotplugView | undefined, a: Attachment, rec: ExportRecord): LiveDisk | undefined {
  const socket = rec.disks.find((d) => d.target === a.target)?.socket;
  return view?.disks.find((d) => d.alias === a.alias && d.socket === socket);
}

/**
 * How long an attach may still be under way: its virsh call's deadline, and some. A vircpt killed
 * during an attach leaves its virsh child running, which may still plug the disk in.
 */
const IN_FLIGHT_MS = 45_000;

/** Under way: written before an attach call that has not been seen to end, and young enough. */
function inFlight(a: Attachment, ended: Set<string>): boolean {
  return a.state === 'attaching' && !ended.has(a.alias) && Date.now() - Date.parse(a.since) < IN_FLIGHT_MS;
}

/**
 * The record with only the attachments the scanners still have (written back when it changed),
 * and those whose attach may still be under way (`ended`: the aliases whose call is known over).
 */
export async function reconcile(virsh: Virsh, domainDir: string, rec: ExportRecord, log: Logger, ended = new Set<string>()): Promise<ExportRecord> {
  const list = rec.attachments ?? [];
  if (list.length === 0) return rec;
  const views = new Map<string, HotplugView | undefined>();
  for (const s of new Set(list.map((a) => a.scanner))) views.set(s, await liveView(virsh, s));
  const kept: Attachment[] = [];
  for (const a of list) {
    const live = findLive(views.get(a.scanner), a, rec);
    if (live) kept.push({ ...a, state: 'attached', address: live.address ?? a.address });
    else if (inFlight(a, ended)) kept.push(a);
    else log.info({ domain: rec.domain }, `${a.scanner} no longer has ${rec.domain}/${a.target} (${a.scannerTarget}): forgotten`);
  }
  if (kept.length === list.length && kept.every((a, i) => a.state === list[i]!.state && a.address === list[i]!.address)) return rec;
  return saveAttachments(domainDir, rec, kept);
}

/** Rewrites the attachments of the record as it is on disk now (the scratch guard writes it too). */
async function saveAttachments(domainDir: string, rec: ExportRecord, attachments: Attachment[]): Promise<ExportRecord> {
  const now = (await readRecord(domainDir)) ?? rec;
  const next = { ...now, attachments };
  await writeRecord(domainDir, next);
  return next;
}

/** A serial short enough for virtio-blk (20 bytes), unique per attachment. */
function serialFor(target: string): string {
  return `vcpt-${target.replace(/[^A-Za-z0-9]/g, '').slice(0, 8)}-${randomBytes(3).toString('hex')}`;
}

export interface AttachRequest {
  virsh: Virsh;
  log: Logger;
  domainDir: string;
  rec: ExportRecord;
  scanner: string;
  view: HotplugView;
  disks: DiskExport[];
  bus: HotplugBus;
}

/**
 * Plugs each disk into the scanner. On a failure, what this call plugged is unplugged again (SCSI
 * goes at once; a virtio disk the guest holds stays recorded) and the error is thrown.
 */
export async function attachAll(r: AttachRequest): Promise<Attachment[]> {
  let rec = r.rec;
  const done: Attachment[] = [];
  const ended = new Set<string>();
  const names = new Set<string>();
  const drives = new Set<string>();
  try {
    for (const d of r.disks) {
      const scannerTarget = freeTarget(r.view, r.bus === 'scsi' ? 'sd' : 'vd', names);
      const drive = r.bus === 'scsi' ? freeDriveAddress(r.view, drives) : undefined;
      names.add(scannerTarget);
      if (drive) drives.add(`${drive.controller}:0:0:${drive.unit}`);
      const serial = serialFor(d.target);
      const a: Attachment = {
        scanner: r.scanner, target: d.target, scannerTarget, bus: r.bus, serial, alias: `ua-${serial}`, state: 'attaching',
        address: drive && `scsi ${drive.controller}:0:0:${drive.unit}`, since: new Date().toISOString(),
      };
      rec = await saveAttachments(r.domainDir, rec, [...(rec.attachments ?? []), a]);
      await attachDisk(r.virsh, r.scanner, {
        source: { socket: d.socket, exportName: d.exportName }, target: scannerTarget, bus: r.bus, serial, alias: a.alias, ...(drive && { drive }),
      }).finally(() => ended.add(a.alias)).catch((err: unknown) => {
        throw new VircptError(err instanceof VircptError ? err.code : 'LIBVIRT',
          `attaching ${rec.domain}/${d.target} to ${r.scanner} as ${scannerTarget} failed: ${messageOf(err)}`, { cause: err });
      });
      done.push(a);
    }
  } catch (err) {
    await detachAll(r.virsh, r.log, r.domainDir, await reconcile(r.virsh, r.domainDir, rec, r.log, ended), (a) => done.some((x) => x.alias === a.alias), 10_000)
      .catch((e: unknown) => r.log.warn({ domain: rec.domain }, `undoing the attachments to ${r.scanner}: ${messageOf(e)}`));
    throw err;
  }
  rec = await reconcile(r.virsh, r.domainDir, rec, r.log, ended);
  return (rec.attachments ?? []).filter((a) => done.some((x) => x.alias === a.alias));
}

export interface DetachOutcome {
  /** Gone from their scanners (and from the record). */
  detached: Attachment[];
  /** Still in their scanner's live XML at the deadline (kept in the record). */
  stuck: { a: Attachment; why: string | undefined }[];
}

/** Asks each chosen attachment's scanner to let go, and waits until it has or `waitMs` passed. */
export async function detachAll(
  virsh: Virsh, log: Logger, domainDir: string, rec: ExportRecord, chosen: (a: Attachment) => boolean, waitMs: number,
): Promise<DetachOutcome> {
  const mine = (rec.attachments ?? []).filter(chosen);
  const why = new Map<string, string>();
  for (const a of mine) {
    // Asked only of a scanner that has it: a stale record must not unplug anyone else's disk.
    if (!findLive(await liveView(virsh, a.scanner), a, rec)) {
      if (a.state === 'attaching') why.set(a.alias, 'its attach may still be under way');
      continue;
    }
    await requestDetach(virsh, a.scanner, a.alias).catch((err: unknown) => why.set(a.alias, messageOf(err)));
  }
  const deadline = Date.now() + waitMs;
  let now = rec;
  for (;;) {
    now = await reconcile(virsh, domainDir, now, log);
    const left = (now.attachments ?? []).filter((a) => mine.some((m) => m.alias === a.alias));
    if (left.length === 0 || Date.now() >= deadline) {
      return {
        detached: mine.filter((m) => !left.some((a) => a.alias === m.alias)),
        stuck: left.map((a) => ({ a, why: why.get(a.alias) })),
      };
    }
    await sleep(POLL_MS);
  }
}
