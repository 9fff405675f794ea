/**
 * A master key that is not the one the credentials were sealed with (a re-cloned checkout beside
 * an old database, a new TILLBRIDGE_MASTER_KEY in production): refused at start in production;
 * in sandbox the gateway says so and goes on, and no request gets a 500 for it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.ts';
import { startGateway } from '../src/runtime.ts';
import {
  createPayment,
  discardEnvironment,
  eventually,
  freePort,
  scanPayment,
  setupMerchant,
  startTestGateway,
} from './helpers.ts';

let dbName: string | undefined;
// Whatever the test's outcome: a failed assertion must not leave its database behind.
after(async () => {
  if (dbName) await discardEnvironment(dbName);
});

test('credentials sealed under another master key: refused in production, no 500 in sandbox', async () => {
  const first = await startTestGateway();
  dbName = first.dbName;
  const merchant = await setupMerchant(first);
  const endpoint = await first.http
    .post('/v1/webhook-endpoints')
    .set('Authorization', `Bearer ${merchant.secretKey}`)
    .send({ url: 'http://127.0.0.1:9/hook', events: ['payment.succeeded'] })
    .expect(201);
  // Stays processing until the gateway cancels it: a payment in flight across the key change.
  const inFlightSale = scanPayment(1057);
  const inFlight = await createPayment(first, merchant.terminalKey, inFlightSale, 'in-flight-1057').expect(
    201,
  );
  await first.stop({ keepDatabase: true });

  const otherKey = {
    TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
    PORT: String(await freePort()),
  };
  const production = (key: { TILLBRIDGE_MASTER_KEY: string; PORT: string }) =>
    startGateway(
      loadConfig({ ...first.env, ...key, NODE_ENV: 'production', PUBLIC_BASE_URL: 'http://127.0.0.1:1' }),
    );
  // The endpoint's secret is wanted; the sandbox account, which production never routes a sale
  // to, is not.
  await assert.rejects(
    production(otherKey),
    (error: unknown) =>
      error instanceof ConfigError &&
      new RegExp(
        `does not open what 1 provider account\\(s\\) or webhook endpoint\\(s\\) stored \\(${endpoint.body.id}\\)`,
      ).test(error.message),
  );

  const tg = await startTestGateway(otherKey, first);
  try {
    // The sale's only account is sealed under the lost key: the operator's to mend, not the till's mistake.
    const sale = await createPayment(tg, merchant.terminalKey, scanPayment(1000));
    assert.equal(sale.status, 503, JSON.stringify(sale.body));
    assert.equal(sale.body.error.code, 'credentials_unreadable');
    // A retry of a sale taken before still gets its payment.
    const retried = await createPayment(tg, merchant.terminalKey, inFlightSale, 'in-flight-1057');
    assert.equal(retried.status, 200, JSON.stringify(retried.body));
    assert.equal(retried.body.id, inFlight.body.id);
    const cancel = await tg.http
      .post(`/v1/payments/${inFlight.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`);
    assert.equal(cancel.status, 503, JSON.stringify(cancel.body));
    assert.equal(cancel.body.error.code, 'credentials_unreadable');
    // Its follow-up cannot reach the provider either: the admin is told, once.
    const alerts = async () =>
      (
        await tg.http
          .get('/v1/admin/alerts?limit=100')
          .set('Authorization', `Bearer ${tg.adminKey}`)
          .expect(200)
      ).body.data.filter(
        (a: { kind: string; payment_id: string }) =>
          a.kind === 'credentials_unreadable' && a.payment_id === inFlight.body.id,
      );
    await eventually(async () => (await alerts()).length > 0, 15_000, 'an alert for the sale in flight');
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    assert.equal((await alerts()).length, 1, 'one alert, not one a retry');
    // Configured again, the account is sealed under this key and takes sales.
    await tg.http
      .put('/v1/providers/sandbox')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ wallets: ['alipay', 'wechatpay', 'alipayplus'] })
      .expect(200);
    const again = await createPayment(tg, merchant.terminalKey, scanPayment(1100));
    assert.equal(again.status, 201, JSON.stringify(again.body));
    assert.equal(again.body.status, 'succeeded');
    // Its event cannot be signed with the endpoint's old secret: the delivery fails, saying why.
    const delivery = await eventually(async () => {
      const list = await tg.http
        .get(`/v1/webhook-endpoints/${endpoint.body.id}/deliveries`)
        .set('Authorization', `Bearer ${merchant.secretKey}`);
      return list.body.data.find((d: { status: string }) => d.status === 'failed');
    });
    assert.match(delivery.last_error, /master key/);
    await tg.http
      .delete(`/v1/webhook-endpoints/${endpoint.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
  } finally {
    await tg.stop({ keepDatabase: true });
  }
  // Left with only a sandbox account sealed under another key, production starts.
  const started = await production({
    TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
    PORT: String(await freePort()),
  });
  await started.stop();
});

test('a master key file that holds no 32-byte key is a configuration error at start', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-key-'));
  const file = join(dir, 'master.key');
  writeFileSync(file, 'not a key\n');
  try {
    assert.throws(
      () => loadConfig({ NODE_ENV: 'test', TILLBRIDGE_MASTER_KEY_FILE: file }),
      (error: unknown) => error instanceof ConfigError && /must hold 32 bytes/.test(error.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
