import { randomBytes } from 'node:crypto';

export type IdPrefix =
  | 'mer'
  | 'trm'
  | 'pva'
  | 'pay'
  | 're'
  | 'stl'
  | 'whe'
  | 'evt'
  | 'job'
  | 'key'
  | 'dsc'
  | 'del';

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** Random base62 token; 22 characters carry about 131 bits. */
export function randomToken(length = 22): string {
  const bytes = randomBytes(length * 2);
  let out = '';
  for (let i = 0; i < bytes.length && out.length < length; i++) {
    // Reject bytes ≥ 248 so every symbol is equally likely.
    if (bytes[i] < 248) out += ALPHABET[bytes[i] % 62];
  }
  return out.length === length ? out : out + randomToken(length - out.length);
}

export function newId(prefix: IdPrefix): string {
  return `${prefix}_${randomToken(22)}`;
}

export function hasPrefix(id: string, prefix: IdPrefix): boolean {
  return id.startsWith(`${prefix}_`) && id.length > prefix.length + 1;
}
