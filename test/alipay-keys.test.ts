/**
 * Key intake (alipay.md §3.5, §14): PEM or bare base64, PKCS#1 or PKCS#8, normalised at configure
 * time; swapped keys and wrong key types refused with a CredentialError naming the field; each
 * format then signs requests the simulator accepts.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import forge from 'node-forge';
import { alipayAdapter } from '../adapters/alipay/adapter.ts';
import { paymentRequest, TEST_SEED } from '../adapters/alipay/simulator/harness.ts';
import { type AlipaySimulatorHandle, startAlipaySimulator } from '../adapters/alipay/simulator/index.ts';
import { type AccountContext, CredentialError, type SandboxEnvironment } from '../adapters/contract.ts';

function pair(bits = 2048): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('rsa', { modulusLength: bits });
}

function bare(pem: string): string {
  return pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
}

function formats(privateKey: KeyObject): Record<string, string> {
  const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const pkcs1 = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  return {
    'PKCS#8 PEM': pkcs8,
    'PKCS#1 PEM': pkcs1,
    'PKCS#8 base64': bare(pkcs8),
    'PKCS#1 base64': bare(pkcs1),
    // The Python SDK wraps PKCS#8 bytes in the PKCS#1 label (alipay.md §3.5).
    'PKCS#8 in an RSA PRIVATE KEY label': `-----BEGIN RSA PRIVATE KEY-----\n${bare(pkcs8)}\n-----END RSA PRIVATE KEY-----`,
  };
}

function publicFormats(publicKey: KeyObject): Record<string, string> {
  const spki = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const pkcs1 = publicKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  return { 'SPKI PEM': spki, 'SPKI base64': bare(spki), 'PKCS#1 PEM': pkcs1, 'PKCS#1 base64': bare(pkcs1) };
}

const unusedSandbox: SandboxEnvironment = {
  seed: TEST_SEED,
  latency_ms: 0,
  simulatorUrl: async () => {
    throw new Error('not a sandbox account');
  },
};

describe('alipay keys', () => {
  const merchant = pair();
  const antom = pair();
  const antomPem = antom.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  let sim: AlipaySimulatorHandle;

  before(async () => {
    sim = await startAlipaySimulator({ seed: TEST_SEED, latency_ms: 0, time_scale: 0.01 });
  });

  /** A payment through an account of these stored credentials, our key registered at the simulator. */
  async function payAgainstSimulator(clientId: string, credentials: unknown): Promise<string> {
    sim.registerClient(clientId, merchant.publicKey.export({ type: 'spki', format: 'pem' }).toString());
    const account: AccountContext<ReturnType<typeof alipayAdapter.load>> = {
      account_id: 'pva_keys',
      merchant_id: 'mer_keys',
      credentials: alipayAdapter.load(JSON.parse(JSON.stringify(credentials)), unusedSandbox, {
        publicOnly: false,
      }),
      sandbox: false,
      notify_url: 'http://127.0.0.1:9/webhooks/alipay/pva_keys',
      notify_path: '/webhooks/alipay/pva_keys',
    };
    return (await alipayAdapter.pay(account, paymentRequest({ merchant_id: 'mer_keys' }))).kind;
  }
  after(() => sim.close());

  for (const [name, text] of Object.entries(formats(merchant.privateKey))) {
    it(`accepts a private key as ${name} and pays with it against the simulator`, async () => {
      const clientId = `TEST_${name.replace(/\W+/g, '_')}`;
      const { credentials, public_view } = await alipayAdapter.configure(
        {
          client_id: clientId,
          private_key: text,
          alipay_public_key: sim.antomPublicKeyPem,
          endpoint: sim.url,
        },
        unusedSandbox,
        'pva_test',
      );
      assert.match(String(public_view.private_key_fingerprint), /^sha256:[0-9a-f]{64}$/);
      assert.equal(await payAgainstSimulator(clientId, credentials), 'succeeded');
    });
  }

  for (const [name, text] of Object.entries(publicFormats(antom.publicKey))) {
    it(`accepts the Alipay public key as ${name}, normalised to the same SPKI key`, async () => {
      const { credentials, public_view } = await alipayAdapter.configure(
        { client_id: 'C1', private_key: formats(merchant.privateKey)['PKCS#8 PEM'], alipay_public_key: text },
        unusedSandbox,
        'pva_test',
      );
      assert.equal((credentials as { alipay_public_key: string }).alipay_public_key.trim(), antomPem.trim());
      assert.equal(public_view.endpoint, 'https://open-de-global.alipay.com');
      assert.equal(public_view.key_version, '1');
      assert.equal(public_view.mcc, '5999');
    });
  }

  // PROVIDERS.md rule 8: during a rotation Antom's responses may come signed with either key.
  for (const [name, keys] of [
    [
      'the new key kept by version, the old one current',
      (simKey: string) => ({ alipay_public_key: antomPem, alipay_public_keys: { '2': simKey } }),
    ],
    [
      'the old key kept by version, the new one current',
      (simKey: string) => ({ alipay_public_key: simKey, alipay_public_keys: { '1': antomPem } }),
    ],
  ] as const) {
    it(`verifies Antom's answers with any of several Alipay public keys (${name})`, async () => {
      const clientId = `TEST_ROTATION_${name.length}`;
      const { credentials, public_view } = await alipayAdapter.configure(
        {
          client_id: clientId,
          private_key: formats(merchant.privateKey)['PKCS#8 PEM'],
          endpoint: sim.url,
          ...keys(sim.antomPublicKeyPem),
        },
        unusedSandbox,
        'pva_test',
      );
      const fingerprints = public_view.alipay_public_key_fingerprints as Record<string, string>;
      assert.equal(Object.keys(fingerprints).length, 1);
      assert.match(Object.values(fingerprints)[0], /^sha256:[0-9a-f]{64}$/);
      assert.equal(await payAgainstSimulator(clientId, credentials), 'succeeded');
    });
  }

  it('refuses bad entries of alipay_public_keys, naming the entry', async () => {
    const pkcs8 = formats(merchant.privateKey)['PKCS#8 PEM'];
    const own = merchant.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const base = { client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem };
    const cases: [unknown, string][] = [
      [[antomPem], 'alipay_public_keys'],
      [{ '2': own }, 'alipay_public_keys.2'],
      [{ '2': 'not a key' }, 'alipay_public_keys.2'],
      [{ v2: antomPem }, 'alipay_public_keys.v2'],
      [Object.fromEntries(['2', '3', '4', '5', '6', '7'].map((v) => [v, antomPem])), 'alipay_public_keys'],
    ];
    for (const [keys, param] of cases) {
      await assert.rejects(
        alipayAdapter.configure({ ...base, alipay_public_keys: keys }, unusedSandbox, 'pva_test'),
        (error: unknown) => error instanceof CredentialError && error.param === param,
        `expected CredentialError on ${param}`,
      );
    }
  });

  it('refuses swapped keys: an "Alipay public key" that pairs with our private key', async () => {
    const own = merchant.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    await assert.rejects(
      alipayAdapter.configure(
        {
          client_id: 'C1',
          private_key: formats(merchant.privateKey)['PKCS#1 base64'],
          alipay_public_key: bare(own),
        },
        unusedSandbox,
        'pva_test',
      ),
      (error: unknown) =>
        error instanceof CredentialError &&
        error.param === 'alipay_public_key' &&
        /swapped/.test(error.message),
    );
  });

  it('refuses a public key in the private_key field and a private key in the public field', async () => {
    const pkcs8 = formats(merchant.privateKey)['PKCS#8 PEM'];
    await assert.rejects(
      alipayAdapter.configure(
        { client_id: 'C1', private_key: antomPem, alipay_public_key: antomPem },
        unusedSandbox,
        'pva_test',
      ),
      (error: unknown) => error instanceof CredentialError && error.param === 'private_key',
    );
    await assert.rejects(
      alipayAdapter.configure(
        { client_id: 'C1', private_key: pkcs8, alipay_public_key: pkcs8 },
        unusedSandbox,
        'pva_test',
      ),
      (error: unknown) => error instanceof CredentialError && error.param === 'alipay_public_key',
    );
  });

  it('refuses garbage, short keys, missing fields and bad options with the field named', async () => {
    const pkcs8 = formats(merchant.privateKey)['PKCS#8 PEM'];
    const cases: [Record<string, unknown>, string][] = [
      [{ client_id: 'C1', private_key: 'not a key', alipay_public_key: antomPem }, 'private_key'],
      [
        { client_id: 'C1', private_key: bare(pkcs8).slice(0, 200), alipay_public_key: antomPem },
        'private_key',
      ],
      [
        {
          client_id: 'C1',
          private_key: formats(pair(1024).privateKey)['PKCS#8 PEM'],
          alipay_public_key: antomPem,
        },
        'private_key',
      ],
      [{ private_key: pkcs8, alipay_public_key: antomPem }, 'client_id'],
      [{ client_id: 'C1', private_key: pkcs8 }, 'alipay_public_key'],
      [{ client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, endpoint: 'ftp://x' }, 'endpoint'],
      // Antom's paths are added to the endpoint: pasted into it, every call would go to a doubled path.
      ...[
        'https://open-de-global.alipay.com/ams/api',
        'https://open-de-global.alipay.com/ams/api/v1/payments/pay',
      ].map((endpoint): [Record<string, unknown>, string] => [
        { client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, endpoint },
        'endpoint',
      ]),
      [{ client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, mcc: '59' }, 'mcc'],
      [
        { client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, key_version: 'v1' },
        'key_version',
      ],
    ];
    for (const [input, param] of cases) {
      await assert.rejects(
        alipayAdapter.configure(input, unusedSandbox, 'pva_test'),
        (error: unknown) => error instanceof CredentialError && error.param === param,
        `expected CredentialError on ${param}`,
      );
    }
  });

  it('refuses keys that parse but cannot work, and a client_id that cannot travel as a header', async () => {
    const pkcs8 = formats(merchant.privateKey)['PKCS#8 PEM'];
    const parts = forge.pki.privateKeyFromPem(
      merchant.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    );
    const other = forge.pki.privateKeyFromPem(
      pair().privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    );
    // Another key's modulus with this key's primes: n ≠ p·q.
    const mismatched = forge.pki.privateKeyToPem(
      forge.pki.setRsaPrivateKey(other.n, parts.e, parts.d, parts.p, parts.q, parts.dP, parts.dQ, parts.qInv),
    );
    const antomKey = forge.pki.publicKeyFromPem(antomPem);
    const exponentOne = forge.pki.publicKeyToPem(
      forge.pki.setRsaPublicKey(antomKey.n, new forge.jsbn.BigInteger('1', 10)),
    );
    const cases: [Record<string, unknown>, string][] = [
      [{ client_id: 'C1', private_key: mismatched, alipay_public_key: antomPem }, 'private_key'],
      [{ client_id: 'C1', private_key: pkcs8, alipay_public_key: exponentOne }, 'alipay_public_key'],
      [{ client_id: 'C\n1', private_key: pkcs8, alipay_public_key: antomPem }, 'client_id'],
      [{ client_id: 'ID\u00e9', private_key: pkcs8, alipay_public_key: antomPem }, 'client_id'],
      // Sent in every order; the name is shown on the customer's phone.
      [
        { client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, merchant_name: 'Shop\u0007' },
        'merchant_name',
      ],
      [
        { client_id: 'C1', private_key: pkcs8, alipay_public_key: antomPem, reference_merchant_id: 'a\tb' },
        'reference_merchant_id',
      ],
    ];
    for (const [input, param] of cases) {
      await assert.rejects(
        alipayAdapter.configure(input, unusedSandbox, 'pva_test'),
        (error: unknown) => error instanceof CredentialError && error.param === param,
        `expected CredentialError on ${param}`,
      );
    }
  });

  it('never shows secrets in public_view', async () => {
    const text = formats(merchant.privateKey)['PKCS#1 PEM'];
    const { public_view } = await alipayAdapter.configure(
      {
        client_id: 'C1',
        private_key: text,
        alipay_public_key: antomPem,
        reference_merchant_id: 'shop-9',
        mcc: '5912',
      },
      unusedSandbox,
      'pva_test',
    );
    const shown = JSON.stringify(public_view);
    const secretBody = bare(formats(merchant.privateKey)['PKCS#8 PEM']);
    for (let i = 0; i + 40 <= secretBody.length; i += 40)
      assert.ok(!shown.includes(secretBody.slice(i, i + 40)));
    assert.ok(!shown.includes('PRIVATE'));
    assert.equal(public_view.reference_merchant_id, 'shop-9');
    assert.equal(public_view.mcc, '5912');
    assert.notEqual(public_view.private_key_fingerprint, public_view.alipay_public_key_fingerprint);
  });
});
