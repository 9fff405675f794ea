/**
 * Account credentials: validated and normalised once, when the merchant configures the account
 * (`PUT /v1/providers/alipay`), so a bad key is a 400 then and not a failed payment later.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { isCurrency } from '../../src/payments/money.ts';
import { CredentialError, type NetworkPolicy, type SandboxEnvironment } from '../contract.ts';
import {
  fingerprintOfPem,
  KeyFormatError,
  normalisePrivateKey,
  normalisePublicKey,
  privateKeyObject,
  publicKeyObject,
} from './keys.ts';
import { sandboxKeys } from './sandbox-keys.ts';
import type { KeyRing } from './signature.ts';

/** What is stored (encrypted at rest). Plain JSON: keys as normalised PEM. */
export interface AlipayCredentials {
  sandbox: boolean;
  client_id: string;
  /** PKCS#8 PEM. */
  private_key: string;
  /** SubjectPublicKeyInfo PEM. */
  alipay_public_key: string;
  /** More Alipay public keys (SPKI PEM) by the keyVersion Antom signs with, kept for a rotation. */
  alipay_public_keys?: Record<string, string>;
  key_version: string;
  /** Base URL; absent for sandbox accounts, whose simulator URL is looked up at call time. */
  endpoint?: string;
  /** `/ams/api`, or `/ams/sandbox/api` as the Python SDK rewrites it for SANDBOX_ client ids. */
  path_prefix: string;
  reference_merchant_id?: string;
  merchant_name?: string;
  mcc: string;
  settlement_currency?: string;
}

/** Antom Europe (alipay.md §2). */
export const DEFAULT_ENDPOINT = 'https://open-de-global.alipay.com';
export const PATH_PREFIXES = ['/ams/api', '/ams/sandbox/api'] as const;

/** What `load` hands the adapter: the stored fields, key objects, and where to send. */
export interface AlipayAccount {
  stored: AlipayCredentials;
  privateKey: KeyObject;
  alipayPublicKeys: KeyRing;
  /** Real accounts: the endpoint. Sandbox accounts: the simulator's URL, looked up at call time. */
  baseUrl(): Promise<string>;
  /** Requests go to public addresses only (NetworkPolicy). */
  publicOnly: boolean;
}

export function loadAccount(
  stored: unknown,
  sandbox: SandboxEnvironment,
  network: NetworkPolicy,
): AlipayAccount {
  const credentials = parseStored(stored);
  const endpoint = credentials.endpoint ?? DEFAULT_ENDPOINT;
  return {
    stored: credentials,
    privateKey: privateKeyObject(credentials.private_key),
    alipayPublicKeys: {
      current: publicKeyObject(credentials.alipay_public_key),
      byVersion: new Map(
        Object.entries(credentials.alipay_public_keys ?? {}).map(([version, pem]) => [
          version,
          publicKeyObject(pem),
        ]),
      ),
    },
    baseUrl: credentials.sandbox ? () => sandbox.simulatorUrl() : async () => endpoint,
    publicOnly: network.publicOnly,
  };
}

const COMMON_FIELDS = ['sandbox', 'reference_merchant_id', 'merchant_name', 'mcc', 'settlement_currency'];
const SANDBOX_FIELDS = new Set(COMMON_FIELDS);
const REAL_FIELDS = new Set([
  ...COMMON_FIELDS,
  'client_id',
  'private_key',
  'alipay_public_key',
  'alipay_public_keys',
  'key_version',
  'endpoint',
  'path_prefix',
]);

export async function configureCredentials(
  input: Record<string, unknown>,
  sandbox: SandboxEnvironment,
  accountId: string,
): Promise<{ credentials: AlipayCredentials; public_view: Record<string, unknown> }> {
  const known = input.sandbox === true ? SANDBOX_FIELDS : REAL_FIELDS;
  const unknown = Object.keys(input).find((key) => !known.has(key));
  if (unknown !== undefined)
    throw new CredentialError(
      unknown,
      `unknown field ${unknown}${input.sandbox === true && REAL_FIELDS.has(unknown) ? ' (a sandbox account has no credentials)' : ''}`,
    );
  const credentials =
    input.sandbox === true ? await sandboxCredentials(input, sandbox, accountId) : realCredentials(input);
  return { credentials, public_view: publicView(credentials) };
}

/** Stored credentials back from JSON; throws on anything that is not what configure stored. */
function parseStored(stored: unknown): AlipayCredentials {
  if (!isRecord(stored))
    throw new CredentialError('credentials', 'stored alipay credentials are not an object');
  const text = (name: string): string => {
    const value = stored[name];
    if (typeof value !== 'string' || value.length === 0) {
      throw new CredentialError(name, `stored alipay credentials lack ${name}`);
    }
    return value;
  };
  const optional = (name: string): string | undefined =>
    typeof stored[name] === 'string' ? (stored[name] as string) : undefined;
  const credentials: AlipayCredentials = {
    sandbox: stored.sandbox === true,
    client_id: text('client_id'),
    private_key: text('private_key'),
    alipay_public_key: text('alipay_public_key'),
    alipay_public_keys: storedKeys(stored.alipay_public_keys),
    key_version: optional('key_version') ?? '1',
    endpoint: optional('endpoint'),
    path_prefix: optional('path_prefix') ?? '/ams/api',
    reference_merchant_id: optional('reference_merchant_id'),
    merchant_name: optional('merchant_name'),
    mcc: optional('mcc') ?? '5999',
    settlement_currency: optional('settlement_currency'),
  };
  return credentials;
}

export function publicView(credentials: AlipayCredentials): Record<string, unknown> {
  return {
    sandbox: credentials.sandbox,
    client_id: credentials.client_id,
    key_version: credentials.key_version,
    endpoint: credentials.endpoint ?? 'sandbox simulator',
    path_prefix: credentials.path_prefix,
    reference_merchant_id: credentials.reference_merchant_id ?? null,
    merchant_name: credentials.merchant_name ?? null,
    mcc: credentials.mcc,
    settlement_currency: credentials.settlement_currency ?? null,
    private_key_fingerprint: fingerprintOfPem(publicPemOf(credentials)),
    alipay_public_key_fingerprint: fingerprintOfPem(credentials.alipay_public_key),
    ...(credentials.alipay_public_keys
      ? {
          alipay_public_key_fingerprints: Object.fromEntries(
            Object.entries(credentials.alipay_public_keys).map(([version, pem]) => [
              version,
              fingerprintOfPem(pem),
            ]),
          ),
        }
      : {}),
  };
}

function publicPemOf(credentials: AlipayCredentials): string {
  return createPublicKey(privateKeyObject(credentials.private_key))
    .export({ type: 'spki', format: 'pem' })
    .toString();
}

function realCredentials(input: Record<string, unknown>): AlipayCredentials {
  const clientId = requiredText(input, 'client_id', 64);
  // It travels as an HTTP header and in the signed content: visible ASCII only.
  if (!/^[\x21-\x7e]+$/.test(clientId))
    throw new CredentialError(
      'client_id',
      'client_id must be visible ASCII characters, as the Antom Dashboard shows it',
    );
  const privateKey = parseKey('private_key', () =>
    normalisePrivateKey(requiredText(input, 'private_key', 20_000)),
  );
  const publicKey = parseKey('alipay_public_key', () =>
    normalisePublicKey(requiredText(input, 'alipay_public_key', 20_000)),
  );
  notSwapped('alipay_public_key', privateKey.modulus, publicKey.modulus);
  const more = morePublicKeys(input, privateKey.modulus);
  return {
    sandbox: false,
    client_id: clientId,
    private_key: privateKey.pem,
    alipay_public_key: publicKey.pem,
    ...(more ? { alipay_public_keys: more } : {}),
    key_version: keyVersion(input),
    endpoint: endpoint(input),
    path_prefix: pathPrefix(input, clientId),
    ...commonOptions(input),
  };
}

async function sandboxCredentials(
  input: Record<string, unknown>,
  sandbox: SandboxEnvironment,
  accountId: string,
): Promise<AlipayCredentials> {
  const keys = await sandboxKeys(sandbox.seed);
  // One client id per sandbox account, so the simulator's settlement files stay per merchant, and
  // the same one each time the account is configured: the simulator's notifications and refunds
  // for payments made before still reach it.
  const clientId = createHash('sha256').update(`${sandbox.seed}:${accountId}`).digest('hex').slice(0, 14);
  return {
    sandbox: true,
    client_id: `SANDBOX_5X${clientId.toUpperCase()}`,
    private_key: keys.merchant.privatePem,
    alipay_public_key: keys.antom.publicPem,
    key_version: '1',
    path_prefix: '/ams/api',
    ...commonOptions(input),
  };
}

function commonOptions(
  input: Record<string, unknown>,
): Pick<AlipayCredentials, 'reference_merchant_id' | 'merchant_name' | 'mcc' | 'settlement_currency'> {
  const mcc = optionalText(input, 'mcc', 4) ?? '5999';
  if (!/^\d{4}$/.test(mcc))
    throw new CredentialError('mcc', 'mcc must be a four-digit merchant category code');
  const currency = optionalText(input, 'settlement_currency', 3);
  if (currency !== undefined && !isCurrency(currency)) {
    throw new CredentialError('settlement_currency', `${currency} is not an ISO 4217 currency`);
  }
  return {
    reference_merchant_id: lineText(input, 'reference_merchant_id', 64),
    merchant_name: lineText(input, 'merchant_name', 256),
    mcc,
    settlement_currency: currency,
  };
}

/**
 * alipay.md §14: the merchant's own public key pasted as an Alipay public key makes every response
 * fail verification. Caught here, where the merchant can still fix it.
 */
function notSwapped(param: string, privateModulus: string, publicModulus: string): void {
  if (privateModulus === publicModulus)
    throw new CredentialError(
      param,
      `${param} is the public half of your own private_key (keys swapped?): paste the Alipay public key shown in the Antom Dashboard`,
    );
}

/** At most this many more Alipay public keys: a rotation needs two at a time. */
const MAX_MORE_KEYS = 5;

/** `alipay_public_keys`: `{ "<keyVersion>": "<key>" }`, each normalised and checked like the current one. */
function morePublicKeys(
  input: Record<string, unknown>,
  privateModulus: string,
): Record<string, string> | undefined {
  const value = input.alipay_public_keys;
  if (value === undefined || value === null) return undefined;
  if (!isRecord(value))
    throw new CredentialError(
      'alipay_public_keys',
      'alipay_public_keys must be an object of key versions to Alipay public keys, such as {"2": "MIIB..."}',
    );
  const entries = Object.entries(value);
  if (entries.length > MAX_MORE_KEYS)
    throw new CredentialError('alipay_public_keys', `alipay_public_keys holds at most ${MAX_MORE_KEYS} keys`);
  const keys: Record<string, string> = {};
  for (const [version, text] of entries) {
    const param = `alipay_public_keys.${version}`;
    if (!/^\d{1,4}$/.test(version))
      throw new CredentialError(
        param,
        'each key of alipay_public_keys is a key version, a small integer such as "2"',
      );
    if (typeof text !== 'string' || text.trim().length === 0 || text.length > 20_000)
      throw new CredentialError(param, `${param} must be an Alipay public key (PEM or base64)`);
    const key = parseKey(param, () => normalisePublicKey(text.trim()));
    notSwapped(param, privateModulus, key.modulus);
    keys[version] = key.pem;
  }
  return entries.length ? keys : undefined;
}

/** Stored `alipay_public_keys`, as configure wrote them (or absent). */
function storedKeys(value: unknown): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isRecord(value) || !Object.values(value).every((pem) => typeof pem === 'string'))
    throw new CredentialError(
      'alipay_public_keys',
      'stored alipay_public_keys are not an object of PEM keys',
    );
  return value as Record<string, string>;
}

function keyVersion(input: Record<string, unknown>): string {
  const value = input.key_version;
  if (value === undefined || value === null) return '1';
  const text = typeof value === 'number' ? String(value) : value;
  if (typeof text !== 'string' || !/^\d{1,4}$/.test(text)) {
    throw new CredentialError('key_version', 'key_version must be a small integer such as "1"');
  }
  return text;
}

function endpoint(input: Record<string, unknown>): string {
  const value = optionalText(input, 'endpoint', 2048) ?? DEFAULT_ENDPOINT;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new CredentialError(
      'endpoint',
      'endpoint must be an absolute URL such as https://open-de-global.alipay.com',
    );
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new CredentialError('endpoint', 'endpoint must be an http(s) URL');
  }
  if (url.search || url.hash)
    throw new CredentialError('endpoint', 'endpoint must not carry a query or fragment');
  // Antom's own paths follow the endpoint (path_prefix, then /v1/payments/…): pasted into it as
  // well, every call would go to a doubled path and fail only at the first sale.
  if (/\/ams(\/|$)|\/v1(\/|$)/i.test(url.pathname))
    throw new CredentialError(
      'endpoint',
      `endpoint is the domain alone, such as ${DEFAULT_ENDPOINT}: /ams/api (path_prefix) and /v1/payments/… are added to it`,
    );
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
}

/**
 * Antom's sandbox client ids start with `SANDBOX_`, and its SDKs then call `/ams/sandbox/api`
 * (alipay.md §2, `adjust_sandbox_url`): that is the default for them, `/ams/api` for the rest.
 */
function pathPrefix(input: Record<string, unknown>, clientId: string): string {
  const value =
    optionalText(input, 'path_prefix', 32) ??
    (clientId.startsWith('SANDBOX_') ? '/ams/sandbox/api' : '/ams/api');
  if (!(PATH_PREFIXES as readonly string[]).includes(value)) {
    throw new CredentialError('path_prefix', `path_prefix must be one of ${PATH_PREFIXES.join(', ')}`);
  }
  return value;
}

function parseKey<T>(param: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    if (error instanceof KeyFormatError) throw new CredentialError(param, `${param}: ${error.message}`);
    throw error;
  }
}

function requiredText(input: Record<string, unknown>, name: string, max: number): string {
  const value = optionalText(input, name, max);
  if (value === undefined) throw new CredentialError(name, `${name} is required`);
  return value;
}

function optionalText(input: Record<string, unknown>, name: string, max: number): string | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value.trim().length === 0) {
    throw new CredentialError(name, `${name} must be a non-empty string`);
  }
  if (value.length > max) throw new CredentialError(name, `${name} is longer than ${max} characters`);
  return value.trim();
}

/** optionalText on one line: sent to Antom in every order, and (a name) shown on the customer's phone. */
function lineText(input: Record<string, unknown>, name: string, max: number): string | undefined {
  const value = optionalText(input, name, max);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point.
  if (value !== undefined && /[\u0000-\u001f\u007f]/.test(value))
    throw new CredentialError(name, `${name} must not contain control characters`);
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
