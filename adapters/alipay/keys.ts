/**
 * RSA key intake (alipay.md §3.5, §14): merchants paste keys as PEM or bare base64, PKCS#1 or
 * PKCS#8 (Alipay's key tool emits PKCS#8, the Python SDK wraps it in the PKCS#1 label, others the
 * other way round). node-forge parses whatever arrives, by DER structure rather than by the PEM
 * label, and normalises it once, at configure time, to PKCS#8 / SubjectPublicKeyInfo PEM. Signing
 * then runs on node:crypto KeyObjects (about 100× faster than forge).
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject, sign, verify } from 'node:crypto';
import forge from 'node-forge';

export type KeyFormat =
  | 'pkcs8-pem'
  | 'pkcs1-pem'
  | 'pkcs8-base64'
  | 'pkcs1-base64'
  | 'spki-pem'
  | 'spki-base64';

export class KeyFormatError extends Error {
  override name = 'KeyFormatError';
}

export interface NormalisedPrivateKey {
  /** PKCS#8 PEM. */
  pem: string;
  format: KeyFormat;
  /** Modulus in hex, to compare key halves. */
  modulus: string;
  bits: number;
  /** Fingerprint of the matching public key. */
  fingerprint: string;
}

export interface NormalisedPublicKey {
  /** SubjectPublicKeyInfo PEM. */
  pem: string;
  format: KeyFormat;
  modulus: string;
  bits: number;
  fingerprint: string;
}

const MIN_BITS = 2048;

export function normalisePrivateKey(input: string): NormalisedPrivateKey {
  const { der, pem } = readKeyText(input);
  const asn1 = parseDer(der);
  const pkcs8 = isPkcs8PrivateKeyInfo(asn1);
  if (!pkcs8 && !isPkcs1PrivateKey(asn1)) {
    throw new KeyFormatError(
      'not an RSA private key (expected PKCS#8 PrivateKeyInfo or PKCS#1 RSAPrivateKey)',
    );
  }
  let key: forge.pki.rsa.PrivateKey;
  try {
    key = forge.pki.privateKeyFromAsn1(asn1);
  } catch {
    throw new KeyFormatError('not an RSA private key (unsupported algorithm or damaged key)');
  }
  const bits = key.n.bitLength();
  if (bits < MIN_BITS)
    throw new KeyFormatError(`RSA key has ${bits} bits; at least ${MIN_BITS} are required`);
  checkExponent(key.e);
  const publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  const normalised = unixLines(
    forge.pki.privateKeyInfoToPem(forge.pki.wrapRsaPrivateKey(forge.pki.privateKeyToAsn1(key))),
  );
  checkSigns(normalised);
  return {
    pem: normalised,
    format: `${pkcs8 ? 'pkcs8' : 'pkcs1'}-${pem ? 'pem' : 'base64'}`,
    modulus: key.n.toString(16),
    bits,
    fingerprint: fingerprintOf(publicKey),
  };
}

export function normalisePublicKey(input: string): NormalisedPublicKey {
  const { der, pem } = readKeyText(input);
  const asn1 = parseDer(der);
  if (isPkcs8PrivateKeyInfo(asn1) || isPkcs1PrivateKey(asn1)) {
    throw new KeyFormatError('this is a private key; a public key is expected here');
  }
  let key: forge.pki.rsa.PublicKey;
  try {
    key = forge.pki.publicKeyFromAsn1(asn1);
  } catch {
    throw new KeyFormatError('not an RSA public key (expected SubjectPublicKeyInfo or PKCS#1 RSAPublicKey)');
  }
  const bits = key.n.bitLength();
  if (bits < MIN_BITS)
    throw new KeyFormatError(`RSA key has ${bits} bits; at least ${MIN_BITS} are required`);
  checkExponent(key.e);
  return {
    pem: unixLines(forge.pki.publicKeyToPem(key)),
    // A PKCS#1 RSAPublicKey is normalised to SPKI like the rest; report it under the SPKI name.
    format: pem ? 'spki-pem' : 'spki-base64',
    modulus: key.n.toString(16),
    bits,
    fingerprint: fingerprintOf(key),
  };
}

/** An RSA public exponent is odd and at least 3; 0 or 1 parse, but nothing verifies with them. */
function checkExponent(e: forge.jsbn.BigInteger): void {
  if (e.bitLength() < 2 || !e.testBit(0))
    throw new KeyFormatError(`the RSA public exponent ${e.toString(10)} is not usable (odd, at least 3)`);
}

/**
 * A private key whose numbers do not fit together (n ≠ p·q, a wrong d) parses, then signs what
 * nothing verifies: found now, with one signature checked against its own public half.
 */
function checkSigns(pkcs8Pem: string): void {
  const probe = Buffer.from('tillbridge key check');
  let verified = false;
  try {
    const key = createPrivateKey({ key: pkcs8Pem, format: 'pem' });
    verified = verify('sha256', probe, createPublicKey(key), sign('sha256', probe, key));
  } catch {
    verified = false;
  }
  if (!verified)
    throw new KeyFormatError(
      'the RSA private key is damaged: what it signs does not verify with its public half',
    );
}

/** `sha256:<hex>` of the SubjectPublicKeyInfo DER: safe to show, identifies the key. */
function fingerprintOf(key: forge.pki.rsa.PublicKey): string {
  const der = forge.asn1.toDer(forge.pki.publicKeyToAsn1(key)).getBytes();
  return `sha256:${createHash('sha256').update(Buffer.from(der, 'binary')).digest('hex')}`;
}

export function fingerprintOfPem(publicPem: string): string {
  return fingerprintOf(forge.pki.publicKeyFromPem(publicPem));
}

/** node:crypto objects from normalised PEM (the hot path never touches forge). */
export function privateKeyObject(pkcs8Pem: string): KeyObject {
  return createPrivateKey({ key: pkcs8Pem, format: 'pem' });
}

export function publicKeyObject(spkiPem: string): KeyObject {
  return createPublicKey({ key: spkiPem, format: 'pem' });
}

/** forge writes CRLF; the stored PEM uses plain newlines like every other PEM we handle. */
function unixLines(pem: string): string {
  return pem.replace(/\r\n/g, '\n');
}

function readKeyText(input: string): { der: string; pem: boolean } {
  const text = input.trim();
  if (text.length === 0) throw new KeyFormatError('key is empty');
  const pem = text.includes('-----BEGIN');
  if (pem && /ENCRYPTED/.test(text))
    throw new KeyFormatError('encrypted keys are not supported; paste the key without a passphrase');
  // The label is ignored: the Python SDK wraps PKCS#8 bytes in an "RSA PRIVATE KEY" label.
  const body = pem
    ? text
        .replace(/-----BEGIN [^-]+-----/, '')
        .replace(/-----END [^-]+-----[\s\S]*$/, '')
        .split(/\r?\n/)
        .filter((line) => !/^[A-Za-z-]+:/.test(line))
        .join('')
    : text;
  const compact = body.replace(/\s+/g, '').replace(/\\n/g, '');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(compact)) throw new KeyFormatError('key is neither PEM nor base64');
  const der = Buffer.from(compact, 'base64');
  if (der.length < 64) throw new KeyFormatError('key is too short to be an RSA key');
  return { der: der.toString('binary'), pem };
}

function parseDer(der: string): forge.asn1.Asn1 {
  try {
    return forge.asn1.fromDer(der, true);
  } catch {
    throw new KeyFormatError('key is not valid DER (damaged or truncated base64)');
  }
}

function children(node: forge.asn1.Asn1): forge.asn1.Asn1[] {
  return Array.isArray(node.value) ? node.value : [];
}

/** PrivateKeyInfo ::= SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING key } */
function isPkcs8PrivateKeyInfo(node: forge.asn1.Asn1): boolean {
  const [version, algorithm, key] = children(node);
  return (
    version?.type === forge.asn1.Type.INTEGER &&
    algorithm?.type === forge.asn1.Type.SEQUENCE &&
    key?.type === forge.asn1.Type.OCTETSTRING
  );
}

/** RSAPrivateKey ::= SEQUENCE { version, n, e, d, p, q, dp, dq, qi } — nine INTEGERs. */
function isPkcs1PrivateKey(node: forge.asn1.Asn1): boolean {
  const items = children(node);
  return items.length >= 9 && items.every((item) => item.type === forge.asn1.Type.INTEGER);
}
