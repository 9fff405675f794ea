import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { dirname, resolve } from 'node:path';

export type Role = 'api' | 'worker' | 'all';

export interface Config {
  production: boolean;
  port: number;
  host: string;
  databaseUrl: string;
  /** DATABASE_QUERY_TIMEOUT_MS: a request's query, or its wait for a connection, fails after this (PoolOptions). */
  databaseQueryTimeoutMs: number;
  redisUrl: string;
  /** Namespaces every Redis key, queue and channel (tests use one per run). */
  redisPrefix: string;
  adminApiKey: string;
  adminKeyGenerated: boolean;
  masterKey: Buffer;
  publicBaseUrl: string;
  role: Role;
  resolutionWindowS?: number;
  rateLimitPerKeyRps: number;
  sandboxLatencyMs: number;
  /** Multiplies the simulators' scripted delays; tests use a fraction. */
  sandboxTimeScale: number;
  /** Overrides for a simulator shared between processes: SANDBOX_SIMULATOR_URL_<PROVIDER>. */
  simulatorUrls: Record<string, string>;
  maxAmountMinor: number;
  sweepIntervalMs: number;
  /** UPLOAD_IDLE_TIMEOUT_MS: a settlement upload that sends nothing for this long is dropped. */
  uploadIdleTimeoutMs: number;
  logLevel: string;
}

export class ConfigError extends Error {}

const DEFAULT_MASTER_KEY_FILE = '.tillbridge/master.key';

function intFrom(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new ConfigError(
      max === Number.MAX_SAFE_INTEGER
        ? `${name} must be an integer ≥ ${min}, got "${raw}"`
        : `${name} must be an integer from ${min} to ${max}, got "${raw}"`,
    );
  return value;
}

/** A connection URL of one of `schemes`, checked at start rather than at the first connection. */
function urlFrom(env: NodeJS.ProcessEnv, name: string, fallback: string, schemes: string[]): string {
  const raw = env[name] ?? fallback;
  let scheme: string | undefined;
  try {
    scheme = new URL(raw).protocol.replace(/:$/, '');
  } catch {
    // reported below
  }
  if (!scheme || !schemes.includes(scheme))
    throw new ConfigError(`${name} must be a ${schemes.join(' or ')} URL, such as ${fallback}`);
  return raw;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function numberFrom(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0)
    throw new ConfigError(`${name} must be a positive number, got "${raw}"`);
  return value;
}

/**
 * Random 32 bytes have about 30 distinct values and are almost never all printable: a key with
 * few distinct bytes (zeros, a repeated pattern) or made of text (a passphrase) was typed, not
 * generated. Odds of refusing a real random key: about 1e-10.
 */
function looksRandom(key: Buffer): boolean {
  const printable = key.every((byte) => byte >= 0x20 && byte < 0x7f);
  // Counting up or down (0x00, 0x01, 0x02, …): 32 random bytes hold about 0.24 neighbours one apart.
  let steps = 0;
  for (let i = 1; i < key.length; i++) if (Math.abs(key[i] - key[i - 1]) === 1) steps++;
  return new Set(key).size >= 20 && !printable && steps < 8;
}

/** Words a generated key (base64 or hex) holds once in tens of thousands, and a typed one often. */
const PLACEHOLDER_WORDS =
  /change.?me|placeholder|example|replace.?me|admin|secret|password|passw0rd|test|qwerty|letmein/i;

/** Eight steps up or down in a row (`012345678`, `abcdefghi`): typed, not generated. */
function countsAlong(key: string): boolean {
  let run = 0;
  for (let i = 1; i < key.length; i++) {
    const step = key.charCodeAt(i) - key.charCodeAt(i - 1);
    run = step === 1 || step === -1 ? run + 1 : 0;
    if (run >= 8) return true;
  }
  return false;
}

/** An admin key copied from a sample or typed as a filler: the only key that can create merchants. */
function placeholderAdminKey(key: string): boolean {
  return PLACEHOLDER_WORDS.test(key) || new Set(key).size < 6 || countsAlong(key);
}

function masterKeyFrom(env: NodeJS.ProcessEnv, production: boolean): Buffer {
  const raw = env.TILLBRIDGE_MASTER_KEY;
  if (raw) {
    const key = Buffer.from(raw, 'base64');
    if (key.length !== 32) throw new ConfigError('TILLBRIDGE_MASTER_KEY must be 32 bytes, base64-encoded');
    if (production && !looksRandom(key))
      throw new ConfigError(
        'TILLBRIDGE_MASTER_KEY looks like a placeholder, not 32 random bytes: make one with `openssl rand -base64 32`',
      );
    return key;
  }
  if (production) throw new ConfigError('TILLBRIDGE_MASTER_KEY is required when NODE_ENV=production');
  // Sandbox: keep a generated key in a local file so encrypted credentials survive restarts.
  const file = resolve(env.TILLBRIDGE_MASTER_KEY_FILE ?? DEFAULT_MASTER_KEY_FILE);
  if (existsSync(file)) {
    const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
    if (key.length !== 32)
      throw new ConfigError(`the master key file ${file} must hold 32 bytes, base64-encoded`);
    return key;
  }
  const key = randomBytes(32);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, key.toString('base64'), { mode: 0o600 });
  return key;
}

const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/tillbridge';

/**
 * DATABASE_URL alone, for the CLI: it touches nothing else, so a production operator need not hand
 * it the admin key, the master key or the public URL, and in sandbox it writes no key file.
 */
export function databaseUrlFrom(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NODE_ENV === 'production' && !env.DATABASE_URL)
    throw new ConfigError('DATABASE_URL is required when NODE_ENV=production');
  return urlFrom(env, 'DATABASE_URL', DEFAULT_DATABASE_URL, ['postgres', 'postgresql']);
}

/** The host a URL of this gateway names for a listen address (a URL writes IPv6 in brackets). */
export function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return isIPv6(host) ? `[${host}]` : host;
}

/** An http(s) URL with a host and no query or fragment, as `new URL` reads it (as every caller will). */
function httpBaseUrl(text: string): boolean {
  if (!/^https?:\/\/[^/?#\s]+(\/[^?#\s]*)?$/.test(text)) return false;
  try {
    return new URL(text).hostname !== '';
  } catch {
    return false;
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const production = env.NODE_ENV === 'production';
  const port = intFrom(env, 'PORT', 3000, 0, 65535);
  // Blank, as unset (as a blank PORT is): not every address of the machine.
  const host = env.HOST || '127.0.0.1';
  const role = (env.TILLBRIDGE_ROLE ?? 'all') as Role;
  if (!['api', 'worker', 'all'].includes(role))
    throw new ConfigError(`TILLBRIDGE_ROLE must be api, worker or all`);
  // All that production lacks, said at once rather than one per attempt.
  const missing = ['ADMIN_API_KEY', 'TILLBRIDGE_MASTER_KEY', 'DATABASE_URL', 'PUBLIC_BASE_URL'].filter(
    (name) => !env[name],
  );
  if (production && missing.length)
    throw new ConfigError(
      `${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} required when NODE_ENV=production`,
    );
  if (env.ADMIN_API_KEY !== undefined && env.ADMIN_API_KEY.length < 16) {
    throw new ConfigError('ADMIN_API_KEY must be at least 16 characters');
  }
  // A Bearer token is one word of header bytes: a key with a space or a character outside ASCII
  // could never be sent so as to match, and would lock the operator out unsaid.
  if (env.ADMIN_API_KEY !== undefined && !/^[\x21-\x7e]+$/.test(env.ADMIN_API_KEY))
    throw new ConfigError('ADMIN_API_KEY must be printable ASCII without spaces');
  if (production && env.ADMIN_API_KEY && placeholderAdminKey(env.ADMIN_API_KEY))
    throw new ConfigError('ADMIN_API_KEY looks like a placeholder: make one with `openssl rand -base64 32`');
  if (env.LOG_LEVEL !== undefined && !LOG_LEVELS.includes(env.LOG_LEVEL))
    throw new ConfigError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got "${env.LOG_LEVEL}"`);
  // Providers are handed `${PUBLIC_BASE_URL}/webhooks/...` as their notify URL.
  if (env.PUBLIC_BASE_URL && !httpBaseUrl(env.PUBLIC_BASE_URL))
    throw new ConfigError('PUBLIC_BASE_URL must be an http(s) URL such as https://pay.example.com');
  // The sample host of this very check's message: providers would send notifications there.
  if (
    production &&
    env.PUBLIC_BASE_URL &&
    /^https?:\/\/([^/:]*\.)?example\.(com|net|org)\.?([/:]|$)/i.test(env.PUBLIC_BASE_URL)
  )
    throw new ConfigError(
      'PUBLIC_BASE_URL is a placeholder (example.com): set the address providers reach this gateway at',
    );
  // It names the Redis connections too (CLIENT SETNAME), which take no spaces or other bytes.
  if (env.REDIS_PREFIX !== undefined && !/^[\x21-\x7e]{1,64}$/.test(env.REDIS_PREFIX))
    throw new ConfigError('REDIS_PREFIX must be 1 to 64 printable ASCII characters without spaces');
  const window = env.PAYMENT_RESOLUTION_WINDOW_S;
  const simulatorUrls: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    const match = /^SANDBOX_SIMULATOR_URL_([A-Z0-9]+)$/.exec(name);
    if (match && value) simulatorUrls[match[1].toLowerCase()] = value;
  }
  return {
    production,
    port,
    host,
    databaseUrl: databaseUrlFrom(env),
    databaseQueryTimeoutMs: intFrom(env, 'DATABASE_QUERY_TIMEOUT_MS', 10_000, 100),
    redisUrl: urlFrom(env, 'REDIS_URL', 'redis://127.0.0.1:6379', ['redis', 'rediss']),
    redisPrefix: env.REDIS_PREFIX ?? 'tb',
    adminApiKey: env.ADMIN_API_KEY ?? `adm_${randomBytes(24).toString('base64url')}`,
    adminKeyGenerated: env.ADMIN_API_KEY === undefined,
    masterKey: masterKeyFrom(env, production),
    publicBaseUrl: (env.PUBLIC_BASE_URL || `http://${urlHost(host)}:${port}`).replace(/\/$/, ''),
    role,
    resolutionWindowS: window ? intFrom(env, 'PAYMENT_RESOLUTION_WINDOW_S', 0, 1) : undefined,
    rateLimitPerKeyRps: intFrom(env, 'RATE_LIMIT_PER_KEY_RPS', 200, 1),
    sandboxLatencyMs: intFrom(env, 'SANDBOX_LATENCY_MS', 0),
    sandboxTimeScale: numberFrom(env, 'SANDBOX_TIME_SCALE', 1),
    simulatorUrls,
    maxAmountMinor: intFrom(env, 'MAX_AMOUNT_MINOR', 100_000_000, 1),
    sweepIntervalMs: intFrom(env, 'SWEEP_INTERVAL_MS', 10_000, 100),
    uploadIdleTimeoutMs: intFrom(env, 'UPLOAD_IDLE_TIMEOUT_MS', 30_000, 100),
    logLevel: env.LOG_LEVEL ?? (env.NODE_ENV === 'test' ? 'silent' : 'info'),
  };
}

/** The URL with any password masked, for messages. */
export function withoutPassword(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = '***';
  return parsed.toString();
}
