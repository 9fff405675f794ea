/**
 * Till wake-up (DESIGN.md): from a provider's notification arriving to the long-polling till's
 * answer, target p99 under 20 ms. Measured against a real gateway process (api + worker) with
 * its own database and Redis prefix, one payment at a time; in the same run, a bare Redis
 * PUBLISH → subscriber round trip as the floor.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { Redis } from 'ioredis';
import { sandboxSecret, signSandbox } from '../adapters/sandbox/protocol.ts';
import { loadConfig } from '../src/config.ts';
import { startGateway } from '../src/runtime.ts';
import { adminQuery, databaseUrl, dropRedisKeys, REDIS_URL } from './db.ts';

const ROUNDS = Number(process.env.BENCH_WAKEUP_ROUNDS ?? 200);
const agent = new http.Agent({ keepAlive: true });

function request(url: string, method: string, headers: Record<string, string>, body?: string) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function redisFloor(prefix: string): Promise<number[]> {
  const publisher = new Redis(REDIS_URL);
  const subscriber = new Redis(REDIS_URL);
  const channel = `${prefix}:floor`;
  await subscriber.subscribe(channel);
  const samples: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = process.hrtime.bigint();
    const got = new Promise<void>((resolve) => subscriber.once('message', () => resolve()));
    await publisher.publish(channel, 'x');
    await got;
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  publisher.disconnect();
  subscriber.disconnect();
  return samples.sort((a, b) => a - b);
}

export async function run(): Promise<void> {
  const id = randomBytes(5).toString('hex');
  const dbName = `tb_bench_${id}`;
  const adminKey = `adm_bench_${randomBytes(12).toString('hex')}`;
  const config = loadConfig({
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl(dbName),
    REDIS_URL,
    REDIS_PREFIX: `tbbench:${id}`,
    ADMIN_API_KEY: adminKey,
    TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
    PORT: '0',
    RATE_LIMIT_PER_KEY_RPS: '100000',
    LOG_LEVEL: 'silent',
  });
  const gateway = await startGateway(config, 0);
  const base = gateway.url;
  config.publicBaseUrl = base;
  try {
    const json = { 'content-type': 'application/json' };
    const merchant = JSON.parse(
      (
        await request(
          `${base}/v1/admin/merchants`,
          'POST',
          { ...json, authorization: `Bearer ${adminKey}` },
          JSON.stringify({ name: 'Bench', settlement_currency: 'EUR', country: 'DE' }),
        )
      ).body,
    );
    const auth = { ...json, authorization: `Bearer ${merchant.secret_key}` };
    const account = JSON.parse(
      (await request(`${base}/v1/providers/sandbox`, 'PUT', auth, JSON.stringify({ wallets: ['alipay'] })))
        .body,
    );
    const secret = sandboxSecret(gateway.ctx.sandbox.seed);
    const samples: number[] = [];
    const ackSamples: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const created = JSON.parse(
        (
          await request(
            `${base}/v1/payments`,
            'POST',
            { ...auth, 'idempotency-key': `wake-${id}-${i}` },
            JSON.stringify({
              amount: { value: 1000 + (i % 50), currency: 'EUR' },
              reference: `W-${i}`,
              mode: 'qr',
              wallet: 'alipay',
            }),
          )
        ).body,
      );
      const polled = request(`${base}/v1/payments/${created.id}?wait=30`, 'GET', auth);
      await new Promise((r) => setTimeout(r, 20)); // the till is waiting
      const body = JSON.stringify({
        notification_id: `ntf_${created.id}`,
        type: 'payment',
        payment: { request_id: created.id, status: 'succeeded', transaction_id: `sbx_${i}` },
      });
      const t0 = process.hrtime.bigint();
      const acked = request(
        `${base}/webhooks/sandbox/${account.id}`,
        'POST',
        { ...json, 'sandbox-signature': signSandbox(secret, body) },
        body,
      ).then(() => ackSamples.push(Number(process.hrtime.bigint() - t0) / 1e6));
      const answer = JSON.parse((await polled).body);
      samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await acked;
      if (answer.status !== 'succeeded') throw new Error(`long-poll answered ${answer.status}`);
    }
    samples.sort((a, b) => a - b);
    const floor = await redisFloor(config.redisPrefix);
    const row = (name: string, s: number[]) =>
      `| ${name} | ${percentile(s, 50).toFixed(2)} ms | ${percentile(s, 99).toFixed(2)} ms | ${s[s.length - 1].toFixed(2)} ms |`;
    console.log(`wake-up: notification in → long-polling till answered, ${ROUNDS} payments one at a time\n`);
    console.log('| measured | p50 | p99 | max |\n| --- | ---: | ---: | ---: |');
    console.log(row('notification → till answer', samples));
    console.log(
      row(
        'notification → provider acknowledged',
        ackSamples.sort((a, b) => a - b),
      ),
    );
    console.log(row('floor: Redis PUBLISH → subscriber', floor));
    console.log(`\ntarget: p99 < 20 ms — ${percentile(samples, 99) < 20 ? 'met ✓' : 'missed ✗'}`);
  } finally {
    await gateway.stop();
    await adminQuery(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
    await dropRedisKeys(`tbbench:${id}`);
    agent.destroy();
  }
}
