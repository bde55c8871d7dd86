// The remote-hypervisor lab that scripts/lab-remote.sh prepares on this machine: the qemu+ssh
// and qemu+tls URIs of the local libvirtd, the lab CA's NBD client certificates, and helpers
// for certificates that must fail (another CA, a folder without a client certificate).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './tools.js';

export interface RemoteLab {
  sshUri: string;
  tlsUri: string;
  /** ca-cert.pem client-cert.pem client-key.pem from the lab CA (libnbd's layout). */
  nbdCerts: string;
  /** The lab CA's folder: QEMU's server certificates are in backup/. */
  pki: string;
}

/** The lab's settings; fails loudly when scripts/setup.sh has not prepared it. */
export function remoteLab(): RemoteLab {
  const script = path.resolve(import.meta.dirname, '../../../scripts/lab-remote.sh');
  const out = spawnSync('bash', [script, 'env'], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`scripts/lab-remote.sh env failed: ${out.stderr}`);
  const env = Object.fromEntries(out.stdout.trim().split('\n').map((l) => {
    const at = l.indexOf('=');
    return [l.slice(0, at), l.slice(at + 1).replace(/^'|'$/g, '')];
  }));
  const lab = { sshUri: env.LAB_SSH_URI!, tlsUri: env.LAB_TLS_URI!, nbdCerts: env.LAB_NBD_CERTS!, pki: env.LAB_PKI! };
  if (!existsSync(path.join(lab.nbdCerts, 'client-key.pem'))) {
    throw new Error(`the remote lab is not prepared (${lab.nbdCerts} is empty): run scripts/setup.sh as root`);
  }
  return lab;
}

/** The folder QEMU's NBD server reads (ca-cert.pem server-cert.pem server-key.pem). */
export function serverCerts(lab: RemoteLab): string {
  return path.join(lab.pki, 'backup');
}

/** In `dir`: a CA of its own (not the lab's) beside the lab's client certificate and key. */
export async function wrongCaCerts(lab: RemoteLab, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'ca.info'), 'cn = some other CA\nca\ncert_signing_key\nexpiration_days = 2\n');
  await run('certtool', ['--generate-privkey', '--outfile', path.join(dir, 'ca-key.pem')]);
  await run('certtool', ['--generate-self-signed', '--load-privkey', path.join(dir, 'ca-key.pem'),
    '--template', path.join(dir, 'ca.info'), '--outfile', path.join(dir, 'ca-cert.pem')]);
  await copyFile(path.join(lab.nbdCerts, 'client-cert.pem'), path.join(dir, 'client-cert.pem'));
  await copyFile(path.join(lab.nbdCerts, 'client-key.pem'), path.join(dir, 'client-key.pem'));
  return dir;
}

/** In `dir`: the lab's CA, but no client certificate. */
export async function noClientCerts(lab: RemoteLab, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await copyFile(path.join(lab.nbdCerts, 'ca-cert.pem'), path.join(dir, 'ca-cert.pem'));
  return dir;
}
