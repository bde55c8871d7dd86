// Checkpoints: a persistent dirty bitmap per qcow2 disk, and libvirt's metadata about them.
import { VircptError } from '../errors.js';
import type { Disk } from './domain.js';
import { lines } from './domain.js';
import type { Virsh } from './virsh.js';
import { attr, buildXml, child, children, parseXml, text } from './xml.js';

export interface CheckpointDisk {
  target: string;
  /** 'bitmap' when the disk carries one, 'no' when excluded. */
  checkpoint: string;
  bitmap: string | undefined;
}

export interface Checkpoint {
  name: string;
  parent: string | undefined;
  /** Creation time, in seconds since the epoch. */
  creationTime: number;
  disks: CheckpointDisk[];
}

export function parseCheckpointXml(xml: string): Checkpoint {
  const cp = child(parseXml(xml), 'domaincheckpoint');
  if (!cp) throw new VircptError('LIBVIRT', 'libvirt returned a checkpoint description without <domaincheckpoint>');
  return {
    name: text(cp, 'name') ?? '',
    parent: text(child(cp, 'parent'), 'name'),
    creationTime: Number(text(cp, 'creationTime') ?? 0),
    disks: children(child(cp, 'disks'), 'disk').map((d) => ({
      target: attr(d, 'name') ?? '',
      checkpoint: attr(d, 'checkpoint') ?? 'no',
      bitmap: attr(d, 'bitmap'),
    })),
  };
}

/** Every checkpoint of a domain, parents before children. */
export async function listCheckpoints(virsh: Virsh, domain: string): Promise<Checkpoint[]> {
  const names = lines(await virsh.run(['checkpoint-list', '--name', '--topological', '--', domain]));
  return Promise.all(names.map((n) => getCheckpoint(virsh, domain, n)));
}

export async function getCheckpoint(virsh: Virsh, domain: string, name: string): Promise<Checkpoint> {
  try {
    return parseCheckpointXml(await virsh.run(['checkpoint-dumpxml', '--no-domain', '--', domain, name]));
  } catch (err) {
    if (err instanceof VircptError && err.code === 'CHECKPOINT_NOT_FOUND') {
      throw new VircptError('CHECKPOINT_NOT_FOUND', `domain ${domain} has no checkpoint ${name}`, { cause: err });
    }
    throw err;
  }
}

/** The <domaincheckpoint> document: a bitmap on each chosen disk, 'no' on the others. */
export function checkpointXml(name: string, disks: Disk[], chosen: Set<string>): string {
  return buildXml({
    domaincheckpoint: {
      name,
      disks: {
        disk: disks.map((d) => ({
          '@name': d.target,
          '@checkpoint': chosen.has(d.target) ? 'bitmap' : 'no',
        })),
      },
    },
  });
}

export async function createCheckpoint(
  virsh: Virsh,
  domain: string,
  xml: string,
  opts: { quiesce?: boolean } = {},
): Promise<void> {
  const args = ['checkpoint-create', '--', domain, '{xml}'];
  if (opts.quiesce) args.splice(1, 0, '--quiesce');
  await virsh.runWithXml(args, xml);
}

/**
 * Deletes a checkpoint. With metadataOnly, the bitmaps stay in the images and only libvirt forgets
 * it; otherwise libvirt merges the bitmap into its parent's (which needs a running domain).
 */
export async function deleteCheckpoint(
  virsh: Virsh,
  domain: string,
  name: string,
  opts: { metadataOnly?: boolean } = {},
): Promise<void> {
  const args = ['checkpoint-delete', '--', domain, name];
  if (opts.metadataOnly) args.splice(1, 0, '--metadata');
  await virsh.run(args);
}

