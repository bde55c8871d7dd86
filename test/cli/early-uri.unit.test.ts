// bin/vircpt.ts starts the virsh shell for the URI it reads from argv before commander loads:
// the same URI commander will parse, or none when the command will not ask libvirt.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { earlyUri } from '../../src/cli/early-uri.js';

const DEFAULT = 'qemu:///system';
const uri = (...argv: string[]) => earlyUri(argv, DEFAULT);

describe('earlyUri', () => {
  it('reads -U and --uri in each of the forms commander takes', () => {
    assert.equal(uri('-U', 'qemu:///session', '-d', 'vm1', 'list'), 'qemu:///session');
    assert.equal(uri('--uri', 'qemu+ssh://h/system', '-d', 'vm1', 'copy', '--name', 'c0', '--out', 'x'), 'qemu+ssh://h/system');
    assert.equal(uri('--uri=qemu:///session', '--domain', 'vm1', 'map', '--name', 'c0'), 'qemu:///session');
    assert.equal(uri('-Uqemu:///session', '-dvm1', 'list'), 'qemu:///session');
    assert.equal(uri('-d', 'vm1', 'list', '-U', 'test:///default'), 'test:///default', 'after the command too');
  });

  it('falls back to the default URI when none is given', () => {
    assert.equal(uri('-d', 'vm1', 'list'), DEFAULT);
    assert.equal(uri('--domain=vm1', 'info', '--name', 'c0'), DEFAULT);
  });

  it('a domain named like an option is a value, not an option', () => {
    assert.equal(uri('-d', '-U', 'list'), DEFAULT);
  });

  it('none when the command will not ask libvirt: no domain, help, or a -d without its value', () => {
    assert.equal(uri('list'), undefined);
    assert.equal(uri('-U', 'qemu:///session', 'list'), undefined);
    assert.equal(uri('-d', 'vm1', 'list', '--help'), undefined);
    assert.equal(uri('-d', 'vm1', 'help', 'list'), undefined);
    assert.equal(uri('-h'), undefined);
    assert.equal(uri('list', '-d'), undefined);
    assert.equal(uri(), undefined);
  });

  it('stops at --: what follows is not read', () => {
    assert.equal(uri('-d', 'vm1', '--', '-U', 'qemu:///session'), DEFAULT);
  });
});
