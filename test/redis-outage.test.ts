/**
 * Redis outages. PostgreSQL is the system of record, so losing Redis must never leave a till
 * without an answer: a new sale is refused at once (nothing stored, nothing sent to a provider),
 * a sale already under way still gets its answer, the gateway shuts down, and everything works
 * again when Redis is back. Redis sits behind a TCP relay the test can cut, stall and restore.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.ts';
import { startGateway } from '../src/runtime.ts';
import {
  createPayment,
  discardEnvironment,
  freePort,
  type Merchant,
  REDIS_URL,
  scanPayment,
  setupMerchant,
  startTestGateway,
  TcpRelay,
  type TestGateway,
  testEnvironment,
  waitForStatus,
} from './helpers.ts';
import { lineFor, pay, sandboxCsv } from './settlement-helpers.ts';

const elapsedOf = async <T>(work: () => Promise<T>): Promise<{ result: T; ms: number }> => {
  const started = Date.now();
  const result = await work();
  return { result, ms: Date.now() - started };
};

describe('Redis outages', () => {
  let link: TcpRelay;
  let tg: TestGateway;
  let m: Merchant;

  before(async () => {
    link = new TcpRelay(await freePort(), new URL(REDIS_URL));
    await link.open();
    tg = await startTestGateway({ REDIS_URL: `redis://127.0.0.1:${link.port}` });
    m = await setupMerchant(tg);
  });

  after(async () => {
    await link.cut().catch(() => {});
    await tg?.stop().catch(() => {});
  });

  const ready = async () => {
    for (let i = 0; i < 100; i += 1) {
      const res = await tg.http.get('/readyz');
      if (res.status === 200) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('gateway did not become ready again');
  };

  test('a sale while Redis is down is refused at once with 503, and nothing is stored', async () => {
    const taken = await createPayment(tg, m.terminalKey, scanPayment(1150), 'taken-before-the-outage');
    assert.equal(taken.body.status, 'succeeded');
    await link.cut();
    // A till retrying a sale taken before the outage still learns its outcome.
    const retried = await createPayment(tg, m.terminalKey, scanPayment(1150), 'taken-before-the-outage');
    assert.equal(retried.status, 200);
    assert.equal(retried.headers['idempotent-replayed'], 'true');
    assert.equal(retried.body.id, taken.body.id);
    const { result: res, ms } = await elapsedOf(() => createPayment(tg, m.terminalKey, scanPayment(1200)));
    assert.equal(res.status, 503);
    assert.equal(res.body.error.type, 'unavailable');
    assert.equal(res.headers['retry-after'], '5');
    assert.ok(ms < 5_000, `answered after ${ms} ms`);
    const { rows } = await tg.gateway.ctx.db.query(
      'SELECT count(*)::int AS n FROM payments WHERE amount_value = 1200',
    );
    assert.equal(rows[0].n, 0);
    await link.open();
    await ready();
  });

  test('a settlement file sent while Redis is down is refused with 503, and nothing is stored', async () => {
    const paid = await pay(tg, m, 1400);
    await link.cut();
    const res = await tg.http
      .post('/v1/settlements/imports?provider=sandbox')
      .set('Authorization', `Bearer ${m.secretKey}`)
      .set('Content-Type', 'text/csv')
      .send(sandboxCsv([lineFor(paid)]));
    assert.equal(res.status, 503);
    assert.equal(res.body.error.type, 'unavailable');
    const { rows } = await tg.gateway.ctx.db.query('SELECT count(*)::int AS n FROM settlement_imports');
    assert.equal(rows[0].n, 0);
    await link.open();
    await ready();
  });

  test('a till long-polling while Redis is down gets the payment as it stands when its wait ends', async () => {
    const paid = await createPayment(tg, m.terminalKey, scanPayment(1100));
    await link.cut();
    // The process's first long-poll, so it has to subscribe while Redis is away.
    const { result: res, ms } = await elapsedOf(() =>
      tg.http.get(`/v1/payments/${paid.body.id}?wait=2`).set('Authorization', `Bearer ${m.terminalKey}`),
    );
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'succeeded');
    assert.ok(ms < 5_000, `answered after ${ms} ms`);
    await link.open();
    await ready();
  });

  test('after an outage a long-polling till is woken again as soon as its payment resolves', async () => {
    // Customer confirms on the phone: processing, then succeeded after about a second here.
    const created = await createPayment(tg, m.terminalKey, scanPayment(1252));
    assert.equal(created.body.status, 'processing');
    const { result: waited, ms } = await elapsedOf(() =>
      tg.http.get(`/v1/payments/${created.body.id}?wait=20`).set('Authorization', `Bearer ${m.terminalKey}`),
    );
    assert.equal(waited.body.status, 'succeeded');
    assert.ok(ms < 15_000, `woken after ${ms} ms`);
  });

  test('a sale under way when Redis stops answering still gets its answer, and resolves once Redis is back', async () => {
    link.stall();
    const { result: res, ms } = await elapsedOf(() => createPayment(tg, m.terminalKey, scanPayment(1352)));
    assert.ok(ms < 10_000, `answered after ${ms} ms`);
    assert.equal(res.body.status, 'processing');
    // From then on the hung Redis is known: a new sale is refused at once, and the gateway is not ready.
    const { result: next, ms: nextMs } = await elapsedOf(() =>
      createPayment(tg, m.terminalKey, scanPayment(1353)),
    );
    assert.equal(next.status, 503);
    assert.ok(nextMs < 1_000, `refused after ${nextMs} ms`);
    const { result: readiness, ms: readyMs } = await elapsedOf(() => tg.http.get('/readyz'));
    assert.equal(readiness.status, 503);
    assert.ok(readyMs < 5_000, `/readyz answered after ${readyMs} ms`);
    await link.cut();
    await link.open();
    await ready();
    await waitForStatus(tg, m.terminalKey, res.body.id, ['succeeded'], 30_000);
  });

  test('the gateway shuts down while Redis is down', async () => {
    await link.cut();
    const { ms } = await elapsedOf(() => tg.gateway.stop());
    assert.ok(ms < 20_000, `stopped after ${ms} ms`);
    await link.open();
    tg = await startTestGateway({}, tg);
  });
});

test('a gateway pointed at a Redis that is not there says so and does not start', async () => {
  const { env, dbName } = testEnvironment({
    PORT: String(await freePort()),
    REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
  });
  const { result, ms } = await elapsedOf(() =>
    startGateway(loadConfig(env)).then(
      (gateway) => ({ gateway, error: undefined }),
      (error: Error) => ({ gateway: undefined, error }),
    ),
  );
  await result.gateway?.stop();
  await discardEnvironment(dbName);
  assert.ok(result.error, 'the gateway started without Redis');
  // A configuration error: `npm start` says it in one line and exits 2, with no stack trace.
  assert.ok(result.error instanceof ConfigError, String(result.error));
  // With the reason, the connection refused, not only that it did not answer in time.
  assert.match(
    result.error.message,
    /Redis is not reachable at REDIS_URL \(redis:\/\/127\.0\.0\.1:\d+\): .*ECONNREFUSED/,
  );
  assert.ok(ms < 20_000, `gave up after ${ms} ms`);
});
