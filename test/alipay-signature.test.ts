/**
 * Golden vectors for Antom's signature scheme (alipay.md §3.2–§3.4, §3.9): a fixed key pair,
 * client id, time and body give the exact content string and a signature byte-identical to
 * OpenSSL's; OpenSSL verifies ours and we verify OpenSSL's.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { privateKeyObject, publicKeyObject } from '../adapters/alipay/keys.ts';
import {
  formatSignatureHeader,
  parseAntomTime,
  parseSignatureHeader,
  signBase64,
  signContent,
  verifySignatureHeader,
} from '../adapters/alipay/signature.ts';

/** Generated once with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; test only. */
const GOLDEN_PRIVATE_PKCS8 = `-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCY0GKK+sspmOX5
Y+vIb8gODp0ja8W07dAI8io0sXqfx4Wd9txJD+mLN2vh/c0w8xdU+u0NH4RewLLJ
xs4W8Iu0KTxOJXGdjUjXh+DqnptEydaW+ZN7tL+PeNWJbWiMWoWXPRFU9ka3SL0m
meLzAfSU4iEdP8G9ng3aG9mvpX+GCGUZou7+qCjKDGiB1tt90MQyzgfsH005SAPM
Yca1XkAE5MU33cey2nM17cHxp85hi1OyVede59t5sypskW4Xm3gnhrwJS1h1FS4V
bRxESBv7/nqviIsNeGdyy+BfxlpNlTPB+FAe6akmN/CD8QzyZsbcojB+inn5sz6l
ra9CXqcxAgMBAAECggEADnKrUnkOQs9QNQFPvlplN4EFtd7faTEP2Xyt5V//WEJ4
vVvk7Wp5+f3iLxJ8NzvQkaoMxhAcB4pgDQhFHXGeP8kjSL8tDAia4bfY2c3nn7wW
lB0iJtDKyMGTrOPhfd2kIk21iQsk2fjgW1ky1idx7K6pk1afFnKuXBgEf6Ed2rnk
er9da1R/Ojy0PbQ4BbAr0d9uMz3RlYzoKADeEjPs+6dxWSY0ITHq8zfqLjbms4rH
4vNJ2q/krBxr2Gz3ylyym3ugDU3/WBymsGbuXakGQHMDrjg2cGoSak5uehvK/b1t
eylifI4I8FaWOMnygJ5HqZJX3F1qJPwjnL37lSs5XQKBgQDTmAtFhF/Nv5NvCezw
iBCeVzOqxe8L1pVOEVs8l4JkDqyiZhQqnGLup+nkjM9sJ/xknhCdnSzBXFF+pGej
0BgTvKRtrTfjuGApGRBxB65tJc1bHO5xUdJ3c3vBYjX3YFVUVLRoL0nq02U0lsM3
UFGXRiprrstp70jcVL4DF4/jTQKBgQC44l6hMjtxNQ0CFiHkBdhhBQA77K/oAVlo
m+IWBIhdFunAHQfqebw6v+iu+y2PBfdxpYx43hgL7uCVSB04q6l8eenFu5r0KMxp
g5pKOX7x/EiwN94b+rx4wYrmqm0r3MdDpMxvyISmtOziWtfy1yFaG3t1f4gXnal1
S40Mvu5ZdQKBgA3/0T8YMv553ldKYNLJLdBMFK8HyXkPCXHQ1Ch+HbJhBir4df0b
u6/ujBsC9fZB7wD5NEA5Vey1Hu8yEWlVK0KjCH35J+l5GWOetOfFilTOW3fbwird
Lv+YNGfnB4sGZJ7fu8/o0QsoUVnZX7EZL0zC56uYNP0dR8TMFoY92NdBAoGAHCYK
9kvplPDYzCqGemsRaKQURwtgNNiPvkeNgoCqKlIkwKUq4V4rdF5nlMyVQSNNazYj
TvuxeY+jDddu64PnSBZfq0VG8EmN5bqtsQNT+o/ImVvIK0Zfj5sYBMqJ2JXCmN/s
aFCFMcR2FHh0THrIjymEAH2sQLw2Yq9gCELBk0kCgYEArH/umjLuj2qpq/tdOhaj
xRKszcO5QoWBIGsV6GcpPJB4djvgYGLoM/ZNkClUaqLdvLGOJrv6h0MUqQkKjpyi
awUFUMgJt78oX3qQbAuXWyeBur5Z/d4I9P7znMWwi46iKENffYSeYicSKNmEno0w
6WePim6q8RU0+MBmW1JWMmw=
-----END PRIVATE KEY-----
`;

const GOLDEN_PUBLIC_SPKI = `-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmNBiivrLKZjl+WPryG/I
Dg6dI2vFtO3QCPIqNLF6n8eFnfbcSQ/pizdr4f3NMPMXVPrtDR+EXsCyycbOFvCL
tCk8TiVxnY1I14fg6p6bRMnWlvmTe7S/j3jViW1ojFqFlz0RVPZGt0i9Jpni8wH0
lOIhHT/BvZ4N2hvZr6V/hghlGaLu/qgoygxogdbbfdDEMs4H7B9NOUgDzGHGtV5A
BOTFN93HstpzNe3B8afOYYtTslXnXufbebMqbJFuF5t4J4a8CUtYdRUuFW0cREgb
+/56r4iLDXhncsvgX8ZaTZUzwfhQHumpJjfwg/EM8mbG3KIwfop5+bM+pa2vQl6n
MQIDAQAB
-----END PUBLIC KEY-----
`;

const CLIENT_ID = 'SANDBOX_5X00000000000000';
const REQUEST_TIME = '2024-05-01T10:00:00+02:00';
const PATH = '/ams/api/v1/payments/pay';
/** Alipay's UPM fixture (`alipay/ams-java-sdk` api_mocks/requests/upcp.json), compact. */
const BODY =
  '{"productCode":"IN_STORE_PAYMENT","paymentRequestId":"PR20190000000001_","paymentMethod":{"paymentMethodId":"288888888888888888","paymentMethodType":"CONNECT_WALLET"},"paymentFactor":{"inStorePaymentScenario":"PaymentCode"},"paymentAmount":{"currency":"JPY","value":"1000"},"order":{"referenceOrderId":"0000000001","orderDescription":"New White Lace Sleeveless","orderAmount":{"currency":"JPY","value":"1000"},"merchant":{"referenceMerchantId":"seller231117459","merchantName":"Some_Mer","merchantMCC":"7011","store":{"referenceStoreId":"store231117459","storeName":"Some_store","storeMCC":"7011"}},"env":{"storeTerminalId":"some_setStoreTerminalId","storeTerminalRequestTime":"2020-06-11T13:35:02+08:00"}}}';
/** `printf '%s' "$content" | openssl dgst -sha256 -sign golden_pkcs8.pem | base64 -w0`, run once. */
const GOLDEN_SIGNATURE =
  'eyIEiiliqX/+ogUeTuBbnyTNRMbsihTqcC4bh/2dLDin5TOdDxPBFYY9OBzDCllxUh0FKgWzi9QpOodPJrVkez3d+5YgQudFokrIoz2B4yUvMjV76xiFXxcH63dWJl3tn+mYHg6QYaKW1eNCI59mcYY6Kblp1I2wr2BN2OKMdk2Z1IlSDRF8nx7WFU2j7YvfNpK9uKg9zELRtrBOQSGjZvk6zOCRb5+5s1D9WDw7JnYP2bNCSAFO6e/ezqhJSF7c9J3vfhTXgZNisllcKoO4dmeSMmDbPHwP33agsa4HwngSZL/o4cdA/H2u0A37ZRjytrFU/yQ5TMmpUp5MurPtTg==';

const privateKey = privateKeyObject(GOLDEN_PRIVATE_PKCS8);
const publicKey = publicKeyObject(GOLDEN_PUBLIC_SPKI);
const parts = { path: PATH, clientId: CLIENT_ID, time: REQUEST_TIME, body: BODY };

const workdirs: string[] = [];
after(() => {
  for (const dir of workdirs) rmSync(dir, { recursive: true, force: true });
});

function workdir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'alipay-golden-'));
  workdirs.push(dir);
  writeFileSync(join(dir, 'private.pem'), GOLDEN_PRIVATE_PKCS8);
  writeFileSync(join(dir, 'public.pem'), GOLDEN_PUBLIC_SPKI);
  return dir;
}

function openssl(args: string[], input?: Buffer): { status: number | null; stdout: Buffer; stderr: string } {
  const result = spawnSync('openssl', args, { input });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr.toString() };
}

describe('Antom signature golden vectors', () => {
  it('builds the exact content string of alipay.md §3.2', () => {
    const expected = `POST /ams/api/v1/payments/pay\nSANDBOX_5X00000000000000.2024-05-01T10:00:00+02:00.${BODY}`;
    assert.equal(signContent(parts).toString('utf8'), expected);
    assert.equal(signContent(parts).length, 788);
  });

  it('signs byte-identically to OpenSSL (RSASSA-PKCS1-v1_5 is deterministic)', () => {
    assert.equal(signBase64(parts, privateKey), GOLDEN_SIGNATURE);
    const dir = workdir();
    const live = openssl(['dgst', '-sha256', '-sign', join(dir, 'private.pem')], signContent(parts));
    assert.equal(live.status, 0, live.stderr);
    assert.equal(live.stdout.toString('base64'), GOLDEN_SIGNATURE);
  });

  it('produces a signature that `openssl dgst -sha256 -verify` accepts, and OpenSSL rejects a changed body', () => {
    const dir = workdir();
    writeFileSync(join(dir, 'content.txt'), signContent(parts));
    writeFileSync(join(dir, 'sig.bin'), Buffer.from(signBase64(parts, privateKey), 'base64'));
    const ok = openssl([
      'dgst',
      '-sha256',
      '-verify',
      join(dir, 'public.pem'),
      '-signature',
      join(dir, 'sig.bin'),
      join(dir, 'content.txt'),
    ]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout.toString(), /Verified OK/);
    writeFileSync(join(dir, 'content.txt'), signContent({ ...parts, body: BODY.replace('1000', '1001') }));
    const bad = openssl([
      'dgst',
      '-sha256',
      '-verify',
      join(dir, 'public.pem'),
      '-signature',
      join(dir, 'sig.bin'),
      join(dir, 'content.txt'),
    ]);
    assert.notEqual(bad.status, 0);
  });

  it('verifies what OpenSSL signs, in URL-encoded, raw and spaced header forms', () => {
    const dir = workdir();
    const responseParts = {
      path: PATH,
      clientId: CLIENT_ID,
      time: '1685599933871',
      body: '{"result":{"resultStatus":"S"}}',
    };
    const signed = openssl(
      ['dgst', '-sha256', '-sign', join(dir, 'private.pem')],
      signContent(responseParts),
    );
    assert.equal(signed.status, 0, signed.stderr);
    const base64 = signed.stdout.toString('base64');
    assert.match(base64, /[+/=]/, 'the vector must exercise URL-encoding');
    const encoded = formatSignatureHeader(base64);
    assert.equal(encoded, `algorithm=RSA256,keyVersion=1,signature=${encodeURIComponent(base64)}`);
    assert.ok(verifySignatureHeader(responseParts, encoded, publicKey));
    assert.ok(verifySignatureHeader(responseParts, formatSignatureHeader(base64, '1', true), publicKey));
    assert.ok(
      verifySignatureHeader(
        responseParts,
        `algorithm=RSA256, keyVersion=1, signature=${encodeURIComponent(base64)}`,
        publicKey,
      ),
    );
    // The time is opaque: an ISO rendering of the same instant is different content.
    assert.equal(
      verifySignatureHeader({ ...responseParts, time: '2023-06-01T06:12:13+00:00' }, encoded, publicKey),
      false,
    );
    assert.equal(
      verifySignatureHeader({ ...responseParts, time: `${responseParts.time} ` }, encoded, publicKey),
      false,
    );
    assert.equal(
      verifySignatureHeader(
        { ...responseParts, path: '/ams/sandbox/api/v1/payments/pay' },
        encoded,
        publicKey,
      ),
      false,
    );
  });

  it('parses the header: value after "signature=", keyVersion, unknown algorithms refused', () => {
    const parsed = parseSignatureHeader('algorithm=RSA256, keyVersion=2, signature=ab%2Bc%2Fd%3D%3D');
    assert.deepEqual(parsed, { algorithm: 'RSA256', keyVersion: '2', signature: 'ab+c/d==' });
    assert.equal(parseSignatureHeader('algorithm=RSA256,keyVersion=1'), undefined);
    assert.equal(parseSignatureHeader('signature=%E0%A4%A'), undefined);
    assert.equal(parseSignatureHeader(undefined), undefined);
    const header = `algorithm=MD5,keyVersion=1,signature=${encodeURIComponent(GOLDEN_SIGNATURE)}`;
    assert.equal(verifySignatureHeader(parts, header, publicKey), false);
  });

  it('reads request-time as ISO-8601 with offset or as epoch milliseconds', () => {
    assert.equal(parseAntomTime('2024-05-01T10:00:00+02:00')?.toISOString(), '2024-05-01T08:00:00.000Z');
    assert.equal(parseAntomTime('2024-05-01T10:00:00+0200')?.toISOString(), '2024-05-01T08:00:00.000Z');
    assert.equal(parseAntomTime('1685599933871')?.toISOString(), '2023-06-01T06:12:13.871Z');
    assert.equal(parseAntomTime('yesterday'), undefined);
    assert.equal(parseAntomTime('2024-05-01T10:00:00+02:00 '), undefined);
  });
});
