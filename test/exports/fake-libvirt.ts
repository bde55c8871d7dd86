// A FAKE of libvirt behind the Virsh interface, for the export manager's unit tests only: one
// paused domain with one qcow2 disk and one checkpoint, and its backup job (begun, described,
// aborted). It answers the virsh commands the manager's start and stop paths send, in libvirt
// 9.0's words, and records them. Everything about real jobs is tested against libvirtd (test/cli,
// test/fs); this fake exists so that the manager's own logic (shared starts, reference counts,
// the idle timer, stop chaining) runs in milliseconds without root.
import { VircptError } from '../../src/errors.js';
import { parseBackupXml } from '../../src/libvirt/backup.js';
import type { Virsh } from '../../src/libvirt/virsh.js';

export const DOMAIN = 'vm1';
export const CHECKPOINT = 'c1';
const SIZE = 64 * 1024 * 1024;

/** A promise the test settles by hand: holds a command until the test lets it go. */
export class Gate {
  readonly promise: Promise<void>;
  open!: () => void;
  constructor() {
    this.promise = new Promise((resolve) => { this.open = resolve; });
  }
}

export class FakeLibvirt {
  readonly uri = 'qemu:///system';
  /** The socket of the running backup job, if any. */
  job: string | undefined;
  /** Commands in order: 'backup-begin', 'domjobabort', ... (queries left out). */
  readonly events: string[] = [];
  /** backup-begin calls still to fail (as libvirt refusing the job). */
  failBegins = 0;
  /** When set, backup-begin / domjobabort wait for it before answering. */
  beginGate: Gate | undefined;
  abortGate: Gate | undefined;

  /** The object the manager takes as its Virsh. */
  get virsh(): Virsh {
    return this as unknown as Virsh;
  }

  count(event: string): number {
    return this.events.filter((e) => e === event).length;
  }

  close(): void {}

  async runWithXml(args: string[], xml: string): Promise<string> {
    if (args[0] !== 'backup-begin') throw new Error(`fake libvirt: unexpected ${args.join(' ')}`);
    this.events.push('backup-begin');
    await this.beginGate?.promise;
    if (this.failBegins > 0) {
      this.failBegins--;
      throw new VircptError('LIBVIRT', 'internal error: unable to execute QEMU command (fake)');
    }
    if (this.job) throw new VircptError('JOB_ACTIVE', 'Requested operation is not valid: there is already a job (fake)');
    this.job = parseBackupXml(xml).socket;
    return '';
  }

  async run(args: string[]): Promise<string> {
    const [cmd] = args;
    switch (cmd) {
      case 'domjobinfo':
        return this.job ? 'Job type:         Unbounded\nOperation:        Backup\n' : 'Job type:         None\n';
      case 'domstate':
        return 'paused\n';
      case 'dumpxml':
        return `<domain type='qemu'><name>${DOMAIN}</name><uuid>0</uuid><devices><disk type='file' device='disk'>` +
          `<driver name='qemu' type='qcow2'/><source file='/img/sda.qcow2'/><target dev='sda' bus='sata'/></disk></devices></domain>`;
      case 'domblkinfo':
        return ` Target   Capacity   Allocation   Physical\n-----------------------------\n sda      ${SIZE}   0   0\n`;
      case 'checkpoint-dumpxml':
        return `<domaincheckpoint><name>${CHECKPOINT}</name><creationTime>1</creationTime>` +
          `<disks><disk name='sda' checkpoint='bitmap' bitmap='${CHECKPOINT}'/></disks></domaincheckpoint>`;
      case 'backup-dumpxml':
        if (!this.job) throw new VircptError('NO_EXPORT', 'Requested operation is not valid: no domain backup job present (fake)');
        return `<domainbackup mode='pull'><server transport='unix' socket='${this.job}'/><disks>` +
          `<disk name='sda' backup='yes' type='file' exportname='sda'/></disks></domainbackup>`;
      case 'domjobabort':
        this.events.push('domjobabort');
        await this.abortGate?.promise;
        this.job = undefined;
        return '';
      default:
        throw new Error(`fake libvirt: unexpected ${args.join(' ')}`);
    }
  }
}
