// NBD over TLS against QEMU's own server (qemu-nbd with tls-creds-x509), using the lab CA's
// certificates (scripts/lab-remote.sh): bytes read back exactly, and each way a TLS setup can
// be wrong fails with one line and never falls back to plaintext.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdConnection } from '../../src/nbd/connection.js';
import type { NbdTlsMode } from '../../src/nbd/tls.js';
import { noClientCerts, remoteLab, serverCerts, wrongCaCerts } from '../lab/remote.js';
import { execFileP, makeTempDir, startQemuNbdTcp } from './servers.js';

const lab = remoteLab();
const SIZE = 4 << 20;

interface Server { host: string; port: number; stop(): Promise<void> }

/** qemu-nbd serving `image` on HOST:PORT, with TLS (the lab's server certificate) or without. */
function qemuNbd(image: string, host: string, tls: boolean): Promise<Server> {
  return startQemuNbdTcp({ image, host, ...(tls ? { tlsDir: serverCerts(lab) } : {}) });
}

async function fixture(t: import('node:test').TestContext) {
  const dir = await makeTempDir('vircpt-tls');
  t.after(() => dir.remove());
  const data = randomBytes(SIZE);
  const image = path.join(dir.path, 'disk.raw');
  await writeFile(image, data);
  return { dir: dir.path, data, image };
}

function connect(s: Server, mode: NbdTlsMode, certs = lab.nbdCerts, host = s.host) {
  return NbdClient.connect({ host, port: s.port, exportName: 'disk', tls: { mode, certs }, connectTimeoutMs: 10_000 });
}

/** One line, code NBD_TLS, and the words a user needs. */
async function rejectsTls(p: Promise<unknown>, words: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isVircptError(err, 'NBD_TLS'), `expected NBD_TLS, got ${String(err)}`);
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    assert.match(err.message, words);
    return true;
  });
}

test('reads over TLS are byte-exact, at 127.0.0.1 and at another SAN address', async (t) => {
  const f = await fixture(t);
  for (const host of ['127.0.0.1', '127.0.0.3']) {
    const s = await qemuNbd(f.image, host, true);
    t.after(() => s.stop());
    const c = await connect(s, 'require');
    try {
      const got = await c.read(0, SIZE);
      assert.ok(got.equals(f.data), `bytes over TLS from ${host}`);
    } finally {
      await c.close();
    }
  }
});

test('under prefer, a plaintext server is read in plaintext; under require it is refused', async (t) => {
  const f = await fixture(t);
  const s = await qemuNbd(f.image, '127.0.0.1', false);
  t.after(() => s.stop());
  const c = await connect(s, 'prefer');
  assert.ok((await c.read(0, 65536)).equals(f.data.subarray(0, 65536)));
  await c.close();
  await rejectsTls(connect(s, 'require'), /does not offer TLS .*nbd_tls=require/);
});

test('a server demanding TLS with nbd_tls=off says so', async (t) => {
  const f = await fixture(t);
  const s = await qemuNbd(f.image, '127.0.0.1', true);
  t.after(() => s.stop());
  await rejectsTls(connect(s, 'off'), /demands TLS/);
});

test('wrong CA, missing client certificate, a dialled name not in the certificate: one line each', async (t) => {
  const f = await fixture(t);
  const s = await qemuNbd(f.image, '127.0.0.1', true);
  t.after(() => s.stop());
  const wrong = await wrongCaCerts(lab, path.join(f.dir, 'wrong-ca'));
  await rejectsTls(connect(s, 'require', wrong), /not trusted by .*wrong-ca\/ca-cert\.pem/);
  await rejectsTls(connect(s, 'prefer', wrong), /not trusted/); // prefer never means "unverified"
  const noClient = await noClientCerts(lab, path.join(f.dir, 'no-client'));
  await rejectsTls(connect(s, 'require', noClient), /client-cert\.pem is missing/);
  // 127.0.0.9 is not among the lab certificate's addresses.
  const stranger = await qemuNbd(f.image, '127.0.0.9', true);
  t.after(() => stranger.stop());
  await rejectsTls(connect(stranger, 'require'), /does not name 127\.0\.0\.9/);
});

test('a client certificate from another CA is refused by the server, in one line', async (t) => {
  const f = await fixture(t);
  const s = await qemuNbd(f.image, '127.0.0.1', true);
  t.after(() => s.stop());
  // The lab CA verifies the server, but the client certificate is signed by another CA.
  const other = await wrongCaCerts(lab, path.join(f.dir, 'other'));
  const mixed = await noClientCerts(lab, path.join(f.dir, 'mixed'));
  await execFileP('bash', ['-c', `set -e; cd ${other}; printf 'cn = stranger\\ntls_www_client\\n' > c.info
    certtool --generate-privkey --outfile ${mixed}/client-key.pem 2>/dev/null
    certtool --generate-certificate --load-privkey ${mixed}/client-key.pem --load-ca-certificate ca-cert.pem \\
      --load-ca-privkey ca-key.pem --template c.info --outfile ${mixed}/client-cert.pem 2>/dev/null`]);
  await assert.rejects(NbdClient.connect({ host: s.host, port: s.port, exportName: 'disk', tls: { mode: 'require', certs: mixed } }).then(async (c) => {
    await c.read(0, 4096); // TLS 1.3: the server's verdict on our certificate comes after the handshake
  }), (err: unknown) => {
    assert.ok(isVircptError(err), String(err));
    assert.ok(!err.message.includes('\n'), err.message);
    assert.match(err.message, /NBD TLS: the server closed the connection right after the TLS handshake.*client certificate/);
    return true;
  });
});

test('the connection reports TLS, its version and cipher', async (t) => {
  const f = await fixture(t);
  const s = await qemuNbd(f.image, '127.0.0.1', true);
  t.after(() => s.stop());
  const conn = await NbdConnection.open({ host: s.host, port: s.port, tls: { mode: 'require', certs: lab.nbdCerts } });
  assert.equal(conn.secure, true);
  assert.match(conn.tlsCipher ?? '', /^TLSv1\.[23] TLS_\w+$/, 'version and cipher suite');
  await conn.close();
});
