/**
 * Test harness: every test file gets its own PostgreSQL database and its own Redis key prefix,
 * against the real services; only wallet providers are simulated (over real HTTP).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import supertest from 'supertest';
import { type Config, loadConfig } from '../src/config.ts';
import { type Gateway, startGateway } from '../src/runtime.ts';
import { databaseOn, dropRedisKeys, freePort } from './services.ts';

export const PG_BASE = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export { freePort };

export const databaseUrl = (name: string): string => databaseOn(PG_BASE, name);

const TEST_DB = 'tb_test_';
const redisPrefixOf = (dbName: string) => `tbtest:${dbName.slice(TEST_DB.length)}`;

/** Drops a test environment's database and its Redis keys (testEnvironment names both by one id). */
/** The environment's own files (its master key file, the Antom simulator's orders and ports). */
const filesOf = (dbName: string) => join(tmpdir(), `tb-${dbName}`);

export async function discardEnvironment(dbName: string): Promise<void> {
  rmSync(filesOf(dbName), { recursive: true, force: true });
  const client = new pg.Client({ connectionString: PG_BASE });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
  await dropRedisKeys(REDIS_URL, redisPrefixOf(dbName));
}

/** One isolated environment: a database, a Redis prefix, a master key, a folder of files. */
export function testEnvironment(overrides: Record<string, string> = {}): {
  env: NodeJS.ProcessEnv;
  dbName: string;
} {
  const dbName = `${TEST_DB}${randomBytes(5).toString('hex')}`;
  // Made by whatever writes there first (the master key file, the simulator's journal).
  const files = filesOf(dbName);
  return {
    dbName,
    env: {
      NODE_ENV: 'test',
      DATABASE_URL: databaseUrl(dbName),
      REDIS_URL,
      REDIS_PREFIX: redisPrefixOf(dbName),
      // Random, as in production (which refuses one that says "test").
      ADMIN_API_KEY: `adm_${randomBytes(16).toString('hex')}`,
      TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
      TILLBRIDGE_MASTER_KEY_FILE: join(files, 'master.key'),
      ALIPAY_SIMULATOR_STATE_DIR: join(files, 'alipay-simulator'),
      SANDBOX_TIME_SCALE: '0.3',
      SWEEP_INTERVAL_MS: '1000',
      RATE_LIMIT_PER_KEY_RPS: '10000',
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
      ...overrides,
    },
  };
}

export interface TestGateway {
  gateway: Gateway;
  config: Config;
  url: string;
  http: ReturnType<typeof supertest>;
  adminKey: string;
  dbName: string;
  env: NodeJS.ProcessEnv;
  stop(options?: { keepDatabase?: boolean }): Promise<void>;
}

/**
 * Starts a gateway; given `previous`, a new process on the same database, Redis prefix and keys (a
 * restart), with `overrides` changed.
 */
export async function startTestGateway(
  overrides: Record<string, string> = {},
  previous?: TestGateway,
): Promise<TestGateway> {
  const { env, dbName } = previous
    ? { env: { ...previous.env, ...overrides }, dbName: previous.dbName }
    : testEnvironment({ PORT: String(await freePort()), ...overrides });
  const config = loadConfig(env);
  const gateway = await startGateway(config);
  const url = gateway.url;
  return {
    gateway,
    config,
    url,
    http: supertest(url),
    adminKey: config.adminApiKey,
    dbName,
    env,
    async stop({ keepDatabase = false } = {}) {
      await gateway.stop();
      if (!keepDatabase) await discardEnvironment(dbName);
    },
  };
}

export interface Merchant {
  id: string;
  secretKey: string;
  terminalKey: string;
  refundTerminalKey: string;
  accountId: string;
  /** The provider account as `PUT /v1/providers/...` answered it. */
  account: Record<string, unknown>;
}

/** A merchant with one provider account (the sandbox provider unless told) and two terminals (one allowed to refund). */
export async function setupMerchant(
  tg: Pick<TestGateway, 'http' | 'adminKey'>,
  name = 'Test Drugstore',
  provider: { name: string; body: Record<string, unknown> } = {
    name: 'sandbox',
    body: { wallets: ['alipay', 'wechatpay', 'alipayplus'] },
  },
): Promise<Merchant> {
  const merchant = await tg.http
    .post('/v1/admin/merchants')
    .set('Authorization', `Bearer ${tg.adminKey}`)
    .send({ name, settlement_currency: 'EUR', country: 'DE' })
    .expect(201);
  const sk = merchant.body.secret_key as string;
  const account = await tg.http
    .put(`/v1/providers/${provider.name}`)
    .set('Authorization', `Bearer ${sk}`)
    .send(provider.body)
    .expect(201);
  const terminal = await tg.http
    .post('/v1/terminals')
    .set('Authorization', `Bearer ${sk}`)
    .send({ store_id: 'berlin-01', terminal_id: 'till-1' })
    .expect(201);
  const refundTerminal = await tg.http
    .post('/v1/terminals')
    .set('Authorization', `Bearer ${sk}`)
    .send({ store_id: 'berlin-01', terminal_id: 'till-2', can_refund: true })
    .expect(201);
  return {
    id: merchant.body.id,
    secretKey: sk,
    terminalKey: terminal.body.terminal_key,
    refundTerminalKey: refundTerminal.body.terminal_key,
    accountId: account.body.id,
    account: account.body,
  };
}

export const ALIPAY_CODE = '286714335246118790';
export const WECHAT_CODE = '134567890123456789';

let counter = 0;
export function idempotencyKey(): string {
  counter += 1;
  return `test-${Date.now()}-${counter}-${randomBytes(4).toString('hex')}`;
}

export function scanPayment(value: number, extra: Record<string, unknown> = {}) {
  return {
    amount: { value, currency: 'EUR' },
    reference: `R-${value}-${counter}`,
    mode: 'scan',
    payment_code: ALIPAY_CODE,
    ...extra,
  };
}

export function qrPayment(value: number, wallet = 'alipay', extra: Record<string, unknown> = {}) {
  return {
    amount: { value, currency: 'EUR' },
    reference: `R-QR-${value}-${counter}`,
    mode: 'qr',
    wallet,
    ...extra,
  };
}

/** How often the gateway called each endpoint of the sandbox simulator for one request id. */
export async function simulatorCalls(tg: TestGateway, requestId: string): Promise<Record<string, number>> {
  const simulator = await tg.gateway.ctx.sandbox.simulatorUrl('sandbox');
  return (await (await fetch(`${simulator}/_sim/calls/${requestId}`)).json()) as Record<string, number>;
}

export function createPayment(
  tg: Pick<TestGateway, 'http'>,
  key: string,
  body: unknown,
  idem = idempotencyKey(),
) {
  return tg.http
    .post('/v1/payments')
    .set('Authorization', `Bearer ${key}`)
    .set('Idempotency-Key', idem)
    .send(body as object);
}

/** `POST /v1/payments/{id}/refunds` as a till or back office sends it (the rest, unless `body` says). */
export function createRefund(
  tg: Pick<TestGateway, 'http'>,
  key: string,
  paymentId: string,
  body: object = {},
  idem = idempotencyKey(),
) {
  return tg.http
    .post(`/v1/payments/${paymentId}/refunds`)
    .set('Authorization', `Bearer ${key}`)
    .set('Idempotency-Key', idem)
    .send(body);
}

/** A promise a test settles by hand: `await x.settled` waits until `x.settle()` is called. */
export function signal(): { settled: Promise<void>; settle: () => void } {
  let settle = () => {};
  const settled = new Promise<void>((resolve) => {
    settle = resolve;
  });
  return { settled, settle };
}

/** Polls until `check` returns a value, or fails after `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T | undefined | false>,
  timeoutMs = 15_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The statuses a sale ends in. */
export const FINAL = ['succeeded', 'failed', 'canceled'];

export async function waitForStatus(
  tg: TestGateway,
  key: string,
  id: string,
  statuses: string[],
  timeoutMs = 20_000,
) {
  return eventually(
    async () => {
      const res = await tg.http.get(`/v1/payments/${id}`).set('Authorization', `Bearer ${key}`);
      return statuses.includes(res.body.status) ? res.body : undefined;
    },
    timeoutMs,
    `payment ${id} to reach ${statuses.join('|')}`,
  );
}

/** A payment's history as "to_status (cause)", oldest first. */
export async function paymentHistory(tg: TestGateway, id: string): Promise<string[]> {
  const { rows } = await tg.gateway.ctx.db.query<{ to_status: string; cause: string }>(
    'SELECT to_status, cause FROM payment_events WHERE payment_id = $1 ORDER BY id',
    [id],
  );
  return rows.map((r) => `${r.to_status} (${r.cause})`);
}

/**
 * The customer scans a QR payment's code (a POST to the simulator's wallet page) while the till
 * long-polls it: the till's answer, woken by whatever the scan changed.
 */
export async function scanWhileTillWaits(
  tg: TestGateway,
  key: string,
  payment: { id: string; qr_code: { data: string } },
) {
  const waiting = tg.http
    .get(`/v1/payments/${payment.id}?wait=30`)
    .set('Authorization', `Bearer ${key}`)
    .then((r) => r);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal((await fetch(payment.qr_code.data, { method: 'POST' })).status, 200);
  return waiting;
}

/** A gateway that reaches its PostgreSQL through a TcpRelay, for outages (its own environment). */
export async function gatewayBehindPostgresRelay(overrides: Record<string, string> = {}): Promise<{
  gateway: Gateway;
  relay: TcpRelay;
  dbName: string;
}> {
  const relay = new TcpRelay(await freePort(), new URL(PG_BASE));
  await relay.open();
  const { env, dbName } = testEnvironment({ PORT: String(await freePort()), ...overrides });
  const url = new URL(env.DATABASE_URL as string);
  url.host = `127.0.0.1:${relay.port}`;
  const gateway = await startGateway(loadConfig({ ...env, DATABASE_URL: url.toString() }));
  return { gateway, relay, dbName };
}

/**
 * A TCP relay in front of one of the real services (`target`, a URL with its host and port), for
 * outages: `cut` drops its connections and refuses new ones, `stall` stops forwarding while the
 * connections stay open (a hung server, a black-holed network). `open` again after a cut.
 */
export class TcpRelay {
  private server?: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private stalled = false;

  constructor(
    readonly port: number,
    private readonly target: URL,
  ) {}

  async open(): Promise<void> {
    this.stalled = false;
    this.server = net.createServer((client) => {
      const port = Number(this.target.port) || (this.target.protocol.startsWith('redis') ? 6379 : 5432);
      const upstream = net.connect(port, this.target.hostname);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.pairs.add(pair);
      const forward = (from: net.Socket, to: net.Socket) =>
        from.on('data', (chunk) => {
          if (!this.stalled) to.write(chunk);
        });
      forward(client, upstream);
      forward(upstream, client);
      const close = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', close).on('error', close);
      upstream.on('close', close).on('error', close);
    });
    await new Promise<void>((resolve) => this.server?.listen(this.port, '127.0.0.1', resolve));
  }

  async cut(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server?.close(() => resolve()));
    for (const [client, upstream] of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
    await closed;
  }

  stall(): void {
    this.stalled = true;
  }

  /** How many connections pass through it now. */
  get connections(): number {
    return this.pairs.size;
  }

  /** Forwards again after a stall (what was sent meanwhile is lost, as on a black-holed link). */
  resume(): void {
    this.stalled = false;
  }
}
