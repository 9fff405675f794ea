import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';

const VERSION = 1;

/** AES-256-GCM: version byte ‖ 12-byte IV ‖ 16-byte tag ‖ ciphertext. `context` is bound as AAD. */
export function seal(masterKey: Buffer, plaintext: string, context: string): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', masterKey, iv);
  cipher.setAAD(Buffer.from(context));
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), body]);
}

export function open(masterKey: Buffer, sealed: Buffer, context: string): string {
  if (sealed[0] !== VERSION) throw new Error('unknown sealed-secret version');
  const decipher = createDecipheriv('aes-256-gcm', masterKey, sealed.subarray(1, 13));
  decipher.setAAD(Buffer.from(context));
  decipher.setAuthTag(sealed.subarray(13, 29));
  return Buffer.concat([decipher.update(sealed.subarray(29)), decipher.final()]).toString('utf8');
}

/** What `open` gives, or undefined when the master key is not the one it was sealed with. */
export function tryOpen(masterKey: Buffer, sealed: Buffer, context: string): string | undefined {
  try {
    return open(masterKey, sealed, context);
  } catch {
    return undefined;
  }
}

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

export function hmacSha256Hex(secret: string | Buffer, data: string | Buffer): string {
  return createHmac('sha256', secret).update(data).digest('hex');
}

export function safeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/** Stable, purpose-bound secret material derived from the master key. */
export function deriveSecret(masterKey: Buffer, purpose: string): Buffer {
  return createHmac('sha256', masterKey).update(`tillbridge:${purpose}`).digest();
}

/**
 * '286714335246118790' → '2867**********8790' for logs and responses. At most a quarter of the
 * digits show at each end, so that at least half stay hidden: a short code ('9123456789' →
 * '91******89') is not left to a hundred guesses.
 */
export function maskPaymentCode(code: string): string {
  const shown = Math.min(4, Math.floor(code.length / 4));
  if (code.length <= 8 || shown === 0) return '*'.repeat(code.length);
  return code.slice(0, shown) + '*'.repeat(code.length - 2 * shown) + code.slice(-shown);
}

/**
 * A row number shown as an opaque id: one AES block (the number and eight zero bytes, which a
 * made-up id fails) under `key` (deriveSecret's, for ids of one kind), so that ids tell nobody how
 * many rows there are.
 */
export function opaqueNumber(key: Buffer, n: bigint): string {
  const block = Buffer.alloc(16);
  block.writeBigUInt64BE(n);
  const cipher = createCipheriv('aes-256-ecb', key, null).setAutoPadding(false);
  return Buffer.concat([cipher.update(block), cipher.final()]).toString('base64url');
}

/** The number behind an id of opaqueNumber under the same key, or undefined for anything that is not one. */
export function numberOfOpaque(key: Buffer, id: string): bigint | undefined {
  if (!/^[A-Za-z0-9_-]{22}$/.test(id)) return undefined;
  const bytes = Buffer.from(id, 'base64url');
  if (bytes.length !== 16) return undefined;
  const decipher = createDecipheriv('aes-256-ecb', key, null).setAutoPadding(false);
  const block = Buffer.concat([decipher.update(bytes), decipher.final()]);
  return block.readBigUInt64BE(8) === 0n ? block.readBigUInt64BE(0) : undefined;
}
