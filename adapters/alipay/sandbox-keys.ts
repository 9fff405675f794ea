/**
 * Deterministic sandbox keys. The sandbox must survive a gateway restart: the simulator comes back
 * on a new port with the same seed, and accounts configured earlier must still verify both ways.
 * Both key pairs (the sandbox merchant's, and the simulated Antom's) are therefore derived from the
 * seed, once per process.
 *
 * Why hand-rolled: neither node:crypto nor forge offers seeded RSA generation at a usable speed
 * (forge with a seeded PRNG takes ~2.5 s per key, blocking). Here a SHA-256 counter stream picks the
 * starting points, node:crypto's native Miller–Rabin (`checkPrime`) finds the primes, and the key
 * is assembled as a JWK. Sandbox only: these keys protect nothing real.
 */
import { checkPrime, createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';

export interface SandboxKeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
  privatePem: string;
  publicPem: string;
}

export interface SandboxKeys {
  /** The sandbox merchant's key pair: the adapter signs with it, the simulator verifies. */
  merchant: SandboxKeyPair;
  /** The simulated Antom's key pair: the simulator signs, the adapter verifies. */
  antom: SandboxKeyPair;
}

const cache = new Map<string, Promise<SandboxKeys>>();

export function sandboxKeys(seed: Buffer): Promise<SandboxKeys> {
  const id = createHash('sha256').update(seed).digest('hex');
  let keys = cache.get(id);
  if (!keys) {
    keys = (async () => ({
      merchant: await derivePair(seed, 'tillbridge/alipay/sandbox/merchant'),
      antom: await derivePair(seed, 'tillbridge/alipay/sandbox/antom'),
    }))();
    cache.set(id, keys);
  }
  return keys;
}

async function derivePair(seed: Buffer, label: string): Promise<SandboxKeyPair> {
  const next = byteStream(seed, label);
  const e = 65537n;
  const p = await primeFrom(next);
  let q = await primeFrom(next);
  while (q === p) q = await primeFrom(next);
  const n = p * q;
  const d = modInverse(e, (p - 1n) * (q - 1n));
  const jwk = {
    kty: 'RSA',
    n: b64u(n),
    e: b64u(e),
    d: b64u(d),
    p: b64u(p),
    q: b64u(q),
    dp: b64u(d % (p - 1n)),
    dq: b64u(d % (q - 1n)),
    qi: b64u(modInverse(q, p)),
  };
  const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
  const publicKey = createPublicKey(privateKey);
  return {
    privateKey,
    publicKey,
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

function byteStream(seed: Buffer, label: string): (length: number) => Buffer {
  let counter = 0;
  return (length) => {
    const blocks: Buffer[] = [];
    let total = 0;
    while (total < length) {
      const block = createHash('sha256').update(seed).update(label).update(String(counter++)).digest();
      blocks.push(block);
      total += block.length;
    }
    return Buffer.concat(blocks).subarray(0, length);
  };
}

/** A 1024-bit prime p with gcd(p − 1, 65537) = 1, searched upwards from a seeded odd start. */
async function primeFrom(next: (length: number) => Buffer): Promise<bigint> {
  const start = next(128);
  start[0] |= 0xc0; // top two bits set, so p·q has exactly 2048 bits
  start[start.length - 1] |= 1;
  let candidate = BigInt(`0x${start.toString('hex')}`);
  for (;;) {
    if (candidate % 65537n !== 1n && (await isPrime(candidate))) return candidate;
    candidate += 2n;
  }
}

function isPrime(candidate: bigint): Promise<boolean> {
  return new Promise((resolve, reject) => {
    checkPrime(candidate, (error, result) => (error ? reject(error) : resolve(result)));
  });
}

function modInverse(a: bigint, m: bigint): bigint {
  let [r0, r1] = [a % m, m];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return ((s0 % m) + m) % m;
}

function b64u(value: bigint): string {
  let hex = value.toString(16);
  if (hex.length % 2) hex = `0${hex}`;
  return Buffer.from(hex, 'hex').toString('base64url');
}
