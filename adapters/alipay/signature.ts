/**
 * Antom AMS message signatures (alipay.md §3): SHA256withRSA over
 * `<METHOD> <request-URI>\n<client-id>.<time>.<exact body>`, carried in the `signature` header as
 * `algorithm=RSA256,keyVersion=1,signature=<URL-encoded base64>`.
 *
 * The same content string serves requests (request-time), responses (the request's path with the
 * response's client-id and response-time) and notifications (our notify path). The time is an opaque
 * string: ISO-8601 or epoch milliseconds, used exactly as received, never trimmed or reformatted.
 */
import { type KeyObject, sign, verify } from 'node:crypto';

export interface SignedParts {
  method?: string;
  /** Path plus any query string, without scheme or host. */
  path: string;
  clientId: string;
  time: string;
  /** The exact bytes sent or received. */
  body: string | Buffer;
}

export function signContent(parts: SignedParts): Buffer {
  const head = `${parts.method ?? 'POST'} ${parts.path}\n${parts.clientId}.${parts.time}.`;
  return Buffer.concat([Buffer.from(head, 'utf8'), toBuffer(parts.body)]);
}

export function signBase64(parts: SignedParts, privateKey: KeyObject): string {
  return sign('sha256', signContent(parts), privateKey).toString('base64');
}

export function verifyBase64(parts: SignedParts, signatureBase64: string, publicKey: KeyObject): boolean {
  const signature = Buffer.from(signatureBase64, 'base64');
  if (signature.length === 0) return false;
  try {
    return verify('sha256', signContent(parts), publicKey, signature);
  } catch {
    return false;
  }
}

export interface SignatureHeader {
  algorithm: string;
  keyVersion: string;
  /** Standard base64, already URL-decoded. */
  signature: string;
}

/** Build the header value; `raw: true` emits un-encoded base64 (a variant some peers send). */
export function formatSignatureHeader(signatureBase64: string, keyVersion = '1', raw = false): string {
  const value = raw ? signatureBase64 : encodeURIComponent(signatureBase64);
  return `algorithm=RSA256,keyVersion=${keyVersion},signature=${value}`;
}

/**
 * Parse `algorithm=RSA256, keyVersion=1, signature=...`. Everything after `signature=` is the value,
 * because base64 itself contains `=` (the SDKs split on "signature="). `decodeURIComponent` accepts
 * both encoded and raw base64: it leaves a literal `+` alone, unlike the SDKs' form decoders.
 */
export function parseSignatureHeader(value: string | undefined): SignatureHeader | undefined {
  if (!value) return undefined;
  const at = value.indexOf('signature=');
  if (at < 0) return undefined;
  let signature: string;
  try {
    signature = decodeURIComponent(value.slice(at + 'signature='.length).trim());
  } catch {
    return undefined;
  }
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(signature)) return undefined;
  const fields = new Map<string, string>();
  for (const token of value.slice(0, at).split(',')) {
    const eq = token.indexOf('=');
    if (eq > 0) fields.set(token.slice(0, eq).trim(), token.slice(eq + 1).trim());
  }
  return {
    algorithm: fields.get('algorithm') ?? 'RSA256',
    keyVersion: fields.get('keyVersion') ?? '1',
    signature,
  };
}

/**
 * Alipay's public keys (PROVIDERS.md rule 8: several, for rotation): `current`, and others by the
 * `keyVersion` Antom names in its signature header.
 */
export interface KeyRing {
  current: KeyObject;
  byVersion: ReadonlyMap<string, KeyObject>;
}

/**
 * The keys to try for a header's keyVersion: the one kept for that version first, then the current
 * one, then the rest. Every key of the ring is Alipay's, so any that verifies is proof; trying them
 * all keeps a rotation working even where Antom's keyVersion does not change with its key.
 */
function keysToTry(keys: KeyObject | KeyRing, keyVersion: string): KeyObject[] {
  if (!('byVersion' in keys)) return [keys];
  const named = keys.byVersion.get(keyVersion);
  const all = [named, keys.current, ...keys.byVersion.values()].filter((key) => key !== undefined);
  return [...new Set(all)];
}

/** Verify a complete header value over the given parts. Unknown algorithms never verify. */
export function verifySignatureHeader(
  parts: SignedParts,
  header: string | undefined,
  keys: KeyObject | KeyRing,
): boolean {
  const parsed = parseSignatureHeader(header);
  if (parsed?.algorithm !== 'RSA256') return false;
  return keysToTry(keys, parsed.keyVersion).some((key) => verifyBase64(parts, parsed.signature, key));
}

/** ISO-8601 with offset, to the second, as the Java and Python SDKs send it. */
export function isoTime(date: Date): string {
  return `${date.toISOString().slice(0, 19)}+00:00`;
}

/** Read a request-time/response-time in either documented form; undefined when it is neither. */
export function parseAntomTime(value: string): Date | undefined {
  // Epoch milliseconds, as Antom's header table shows; ten digits would be seconds.
  if (/^\d{13}$/.test(value)) return new Date(Number(value));
  if (/^\d{10}$/.test(value)) return new Date(Number(value) * 1000);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$/.test(value)) return undefined;
  const normalised = value.replace(/([+-]\d{2})(\d{2})$/, '$1:$2');
  const date = new Date(normalised);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

function toBuffer(body: string | Buffer): Buffer {
  return typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
}
