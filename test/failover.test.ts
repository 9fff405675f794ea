import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createPayment, freePort, scanPayment, startTestGateway, type TestGateway } from './helpers.ts';

let tg: TestGateway;
let sk: string;

before(async () => {
  // The sandbox provider's simulator is "down": nothing listens on its port.
  const deadPort = await freePort();
  tg = await startTestGateway({ SANDBOX_SIMULATOR_URL_SANDBOX: `http://127.0.0.1:${deadPort}` });
  const merchant = await tg.http
    .post('/v1/admin/merchants')
    .set('Authorization', `Bearer ${tg.adminKey}`)
    .send({ name: 'Failover', settlement_currency: 'EUR', country: 'DE' })
    .expect(201);
  sk = merchant.body.secret_key;
  await tg.http
    .put('/v1/providers/sandbox')
    .set('Authorization', `Bearer ${sk}`)
    .send({ wallets: ['alipay', 'wechatpay'], priority: 10 })
    .expect(201);
  await tg.http
    .put('/v1/providers/alipay')
    .set('Authorization', `Bearer ${sk}`)
    .send({ sandbox: true, wallets: ['alipay'], priority: 1 })
    .expect(201);
});
after(() => tg.stop());

describe('routing and failover', () => {
  test('a refused connection provably never reached the provider: the next account takes the payment', async () => {
    const res = await createPayment(tg, sk, scanPayment(1000)).expect(201);
    assert.equal(res.body.status, 'succeeded');
    assert.equal(res.body.provider, 'alipay');
    const { rows } = await tg.gateway.ctx.db.query<{ cause: string }>(
      'SELECT cause FROM payment_events WHERE payment_id = $1 ORDER BY id',
      [res.body.id],
    );
    assert.ok(rows.some((r) => r.cause === 'failover'));
  });

  test('when no account for the wallet could be reached, nothing was charged and the payment fails at once', async () => {
    const res = await createPayment(tg, sk, scanPayment(1000, { payment_code: '134567890123456789' })).expect(
      201,
    );
    assert.equal(res.body.wallet, 'wechatpay');
    assert.equal(res.body.provider, 'sandbox');
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.failure.code, 'provider_error');
  });
});
