/**
 * Alipay through our own HTTP API, against the built-in Antom simulator
 * (`PUT /v1/providers/alipay {"sandbox": true}`): every magic outcome, QR mode, refunds,
 * notifications (good, duplicated, forged) and credential validation.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { alipayAdapter } from '../adapters/alipay/adapter.ts';
import { cancelOutcome } from '../adapters/alipay/mapping.ts';
import { sandboxKeys } from '../adapters/alipay/sandbox-keys.ts';
import type { SimulatorSwitches } from '../adapters/alipay/simulator/index.ts';
import { loadPayment, resolvePayment } from '../src/payments/service.ts';
import { startGateway } from '../src/runtime.ts';
import {
  createPayment,
  createRefund,
  discardEnvironment,
  eventually,
  FINAL,
  freePort,
  type Merchant,
  paymentHistory,
  qrPayment,
  scanPayment,
  scanWhileTillWaits,
  setupMerchant,
  signal,
  startTestGateway,
  type TestGateway,
  waitForStatus,
} from './helpers.ts';

let tg: TestGateway;
let merchant: Merchant;

before(async () => {
  tg = await startTestGateway({ PAYMENT_RESOLUTION_WINDOW_S: '3' });
  merchant = await setupMerchant(tg, 'Alipay Drugstore', {
    name: 'alipay',
    body: { sandbox: true, wallets: ['alipay', 'alipayplus'] },
  });
});
after(() => tg.stop());

const causes = (id: string) => paymentHistory(tg, id);

/**
 * Starts a sale (its pay held back by the test) and, as soon as it is stored, the till's cancel of
 * it: the sale's creating request, its id and the cancel's answer.
 */
async function cancelWhileCreating(amount: number) {
  const creating = createPayment(tg, merchant.terminalKey, scanPayment(amount)).then((r) => r);
  const id = await eventually(async () => {
    const { rows } = await tg.gateway.ctx.db.query<{ id: string }>(
      'SELECT id FROM payments WHERE merchant_id = $1 AND reference LIKE $2',
      [merchant.id, `R-${amount}-%`],
    );
    return rows[0]?.id;
  }, 5_000);
  const canceling = await tg.http
    .post(`/v1/payments/${id}/cancel`)
    .set('Authorization', `Bearer ${merchant.terminalKey}`);
  return { creating, id, canceling };
}

/** Turns one of the built-in Antom simulator's switches on or off (its `/_sim/switches`). */
async function simSwitch(name: keyof SimulatorSwitches, on: boolean): Promise<void> {
  const simUrl = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
  const res = await fetch(`${simUrl}/_sim/switches`, {
    method: 'POST',
    body: JSON.stringify({ [name]: on }),
  });
  assert.equal(res.status, 200, `switch ${name}`);
}

describe('alipay provider account', () => {
  test('sandbox account: webhook URL, no secrets shown', () => {
    assert.equal(merchant.account.provider, 'alipay');
    assert.deepEqual(merchant.account.wallets, ['alipay', 'alipayplus']);
    assert.equal(merchant.account.webhook_url, `/webhooks/alipay/${merchant.accountId}`);
    const shown = JSON.stringify(merchant.account);
    assert.doesNotMatch(shown, /PRIVATE KEY|MII[A-Za-z0-9+/]{40}/);
  });

  test('an unknown field is a 400 naming it, for a sandbox account as for a real one', async () => {
    for (const body of [
      { sandbox: true, wallets: ['alipay'], foo: 1 },
      { sandbox: true, wallets: ['alipay'], client_id: 'C1' },
    ]) {
      const res = await tg.http
        .put('/v1/providers/alipay')
        .set('Authorization', `Bearer ${merchant.secretKey}`)
        .send(body);
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.error.param, Object.keys(body)[2]);
    }
  });

  test('real credentials are validated at once: bad or swapped keys are 400 naming the field', async () => {
    const merchantKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const privatePem = merchantKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const ownPublic = merchantKey.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const swapped = await tg.http
      .put('/v1/providers/alipay')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ wallets: ['alipay'], client_id: 'C1', private_key: privatePem, alipay_public_key: ownPublic })
      .expect(400);
    assert.equal(swapped.body.error.param, 'alipay_public_key');
    const garbage = await tg.http
      .put('/v1/providers/alipay')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ wallets: ['alipay'], client_id: 'C1', private_key: 'nope', alipay_public_key: ownPublic })
      .expect(400);
    assert.equal(garbage.body.error.param, 'private_key');
    // The sandbox account is still in place.
    const list = await tg.http
      .get('/v1/providers')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.ok(JSON.stringify(list.body).includes(merchant.accountId));
  });
});

describe('an alipay account that Antom refuses', () => {
  test('its sales fail as provider_error, and a person is told once, not once a sale', async () => {
    const keyPair = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ours = keyPair();
    // A key the simulator does not know signs our requests: it answers F SIGNATURE_INVALID, unsigned.
    const refused = await setupMerchant(tg, 'Misconfigured Drugstore', {
      name: 'alipay',
      body: {
        wallets: ['alipay'],
        client_id: 'SANDBOX_UNKNOWN_CLIENT',
        private_key: ours.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        alipay_public_key: keyPair().publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        endpoint: await tg.gateway.ctx.sandbox.simulatorUrl('alipay'),
      },
    });
    // Side by side, as a shop's tills fail at once.
    const answers = await Promise.all(
      [1000, 1100, 1200, 1300, 1400, 1500].map((value) =>
        createPayment(tg, refused.terminalKey, scanPayment(value)).expect(201),
      ),
    );
    for (const res of answers) {
      assert.equal(res.body.status, 'failed', JSON.stringify(res.body));
      assert.equal(res.body.failure.code, 'provider_error');
    }
    const sales: string[] = answers.map((res) => res.body.id);
    const alerts = await tg.http
      .get('/v1/admin/alerts')
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(200);
    const mine = alerts.body.data.filter((a: { payment_id?: string }) => sales.includes(a.payment_id ?? ''));
    assert.deepEqual(
      mine.map((a: { kind: string }) => a.kind),
      ['provider_configuration'],
    );
    assert.match(mine[0].detail, new RegExp(`${refused.accountId}.*SIGNATURE_INVALID`));
  });
});

describe("an account with Antom's sandbox credentials", () => {
  test('a SANDBOX_ client id calls /ams/sandbox/api unless path_prefix says otherwise', async () => {
    const simUrl = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
    const antom = (await sandboxKeys(tg.gateway.ctx.sandbox.env('alipay').seed)).antom;
    const ours = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const publicPem = ours.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const credentials = (clientId: string) => ({
      wallets: ['alipay'],
      client_id: clientId,
      private_key: ours.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      alipay_public_key: antom.publicPem,
      endpoint: simUrl,
    });
    const prefixes: string[] = [];
    for (const clientId of [`SANDBOX_5Y${Date.now()}`, `LIVE_5Y${Date.now()}`]) {
      const registered = await fetch(`${simUrl}/_sim/clients`, {
        method: 'POST',
        body: JSON.stringify({ client_id: clientId, public_key: publicPem }),
      });
      assert.equal(registered.status, 200);
      const shop = await setupMerchant(tg, `Path ${clientId}`, {
        name: 'alipay',
        body: credentials(clientId),
      });
      const shown = await tg.http
        .get('/v1/providers/alipay')
        .set('Authorization', `Bearer ${shop.secretKey}`)
        .expect(200);
      prefixes.push(shown.body.settings.path_prefix);
      const sale = await createPayment(tg, shop.terminalKey, scanPayment(1000)).expect(201);
      assert.equal(sale.body.status, 'succeeded', JSON.stringify(sale.body));
    }
    assert.deepEqual(prefixes, ['/ams/sandbox/api', '/ams/api']);
  });
});

describe('an alipay account whose keys Antom stops trusting', () => {
  test('a refund it refuses for the account itself fails, and a person is told', async () => {
    const ctx = tg.gateway.ctx;
    const simUrl = await ctx.sandbox.simulatorUrl('alipay');
    const antom = (await sandboxKeys(ctx.sandbox.env('alipay').seed)).antom;
    const pem = (pair: ReturnType<typeof generateKeyPairSync>, part: 'publicKey' | 'privateKey') =>
      pair[part]
        .export(part === 'publicKey' ? { type: 'spki', format: 'pem' } : { type: 'pkcs8', format: 'pem' })
        .toString();
    const ours = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const clientId = `REFUND_KEYS_${Date.now()}`;
    const register = (publicKey: string) =>
      fetch(`${simUrl}/_sim/clients`, {
        method: 'POST',
        body: JSON.stringify({ client_id: clientId, public_key: publicKey }),
      }).then((res) => assert.equal(res.status, 200));
    await register(pem(ours, 'publicKey'));
    const shop = await setupMerchant(tg, 'Rotated Keys Drugstore', {
      name: 'alipay',
      body: {
        wallets: ['alipay'],
        client_id: clientId,
        private_key: pem(ours, 'privateKey'),
        alipay_public_key: antom.publicPem,
        endpoint: simUrl,
      },
    });
    const sale = await createPayment(tg, shop.terminalKey, scanPayment(1000)).expect(201);
    assert.equal(sale.body.status, 'succeeded', JSON.stringify(sale.body));
    // Antom now holds another key for this client: our signature no longer verifies.
    await register(pem(generateKeyPairSync('rsa', { modulusLength: 2048 }), 'publicKey'));
    const refund = await createRefund(tg, shop.secretKey, sale.body.id).expect(201);
    assert.equal(refund.body.status, 'failed', JSON.stringify(refund.body));
    const alerts = await tg.http
      .get('/v1/admin/alerts')
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(200);
    assert.deepEqual(
      alerts.body.data
        .filter((a: { payment_id?: string }) => a.payment_id === sale.body.id)
        .map((a: { kind: string }) => a.kind),
      ['provider_configuration'],
    );
  });
});

describe('alipay sandbox outcomes through the API, mode scan', () => {
  test('00–50: succeeds at once with Antom’s FX and the paying wallet', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(1999)).expect(201);
    assert.equal(res.body.status, 'succeeded');
    assert.equal(res.body.provider, 'alipay');
    assert.equal(res.body.wallet, 'alipay');
    assert.equal(res.body.wallet_psp, 'ALIPAYCN');
    assert.deepEqual(res.body.customer_amount, { value: 15420, currency: 'CNY' });
    assert.equal(res.body.exchange_rate, '7.7140');
    assert.match(res.body.provider_reference, /^\d{22}I\d{10}$/);
  });

  test('a sale in another currency is settled in the merchant’s settlement currency', async () => {
    const res = await createPayment(
      tg,
      merchant.terminalKey,
      scanPayment(1210, { amount: { value: 1210, currency: 'GBP' } }),
    ).expect(201);
    assert.equal(res.body.status, 'succeeded');
    const simUrl = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
    const csv = await (
      await fetch(`${simUrl}/_sim/settlements/${new Date().toISOString().slice(0, 10)}`)
    ).text();
    const [header, ...rows] = csv.trim().split('\n');
    const columns = header.split(',');
    const line = rows
      .map((row) => row.split(','))
      .find((cells) => cells[columns.indexOf('transactionId')] === res.body.provider_reference);
    assert.ok(line, csv);
    assert.equal(line[columns.indexOf('transactionCurrency')], 'GBP');
    assert.equal(line[columns.indexOf('settlementCurrency')], 'EUR');
  });

  test('51: declined for insufficient funds', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2051)).expect(201);
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.failure.code, 'insufficient_funds');
  });

  test('52: processing, then succeeds', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2052)).expect(201);
    assert.equal(res.body.status, 'processing');
    assert.equal((await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL)).status, 'succeeded');
  });

  test('52 across the same sandbox account configured again: its notification still lands', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2152)).expect(201);
    assert.equal(res.body.status, 'processing');
    const again = await tg.http
      .put('/v1/providers/alipay')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ sandbox: true, wallets: ['alipay', 'alipayplus'] });
    assert.ok([200, 201].includes(again.status), JSON.stringify(again.body));
    assert.equal(again.body.id, merchant.accountId);
    assert.equal(
      again.body.settings.client_id,
      (merchant.account.settings as { client_id: string }).client_id,
    );
    assert.equal((await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL)).status, 'succeeded');
  });

  test('53: processing, then fails (customer gave up)', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2053)).expect(201);
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'failed');
    assert.equal(done.failure.code, 'user_canceled');
  });

  test('54: no answer; the gateway finds the success by inquiry', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2054)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
    assert.ok(
      (await causes(res.body.id)).some((c) => /inquiry/.test(c)),
      (await causes(res.body.id)).join(', '),
    );
  });

  test('55: HTTP 500 first, not found twice, the identical request resent once, then succeeds', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2055)).expect(201);
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
    assert.ok(
      (await causes(res.body.id)).some((c) => /resend/.test(c)),
      (await causes(res.body.id)).join(', '),
    );
  });

  test('a pay Antom answered U is never sent again, though inquiries cannot find it (§9: only after no answer)', async () => {
    const flip = (on: boolean) => simSwitch('pay_unknown_unrecorded', on);
    await flip(true);
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(2011)).expect(201);
      assert.equal(res.body.status, 'processing');
      // Two "not found" inquiries 3 s apart (at 2 s and 5 s) would have proven a pay that got no answer lost.
      await new Promise((resolve) => setTimeout(resolve, 7000));
      const history = await causes(res.body.id);
      assert.ok(!history.some((c) => /resend/.test(c)), history.join(', '));
      const row = await loadPayment(tg.gateway.ctx, res.body.id);
      assert.equal(row.resent, false);
      assert.ok(row.not_found_count === 0 && row.pay_reached, JSON.stringify(row));
    } finally {
      await flip(false);
    }
  });

  test('56: invalid payment code fails at once', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2056)).expect(201);
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.failure.code, 'invalid_payment_code');
  });

  test('57: stays processing; cancelled at the end of the window', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2057)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 40_000);
    assert.equal(done.status, 'canceled');
  });
});

describe('alipay sandbox, mode qr, refunds and notifications', () => {
  test('QR with 55: the creation fails with HTTP 500; sent again at once, it brings the code before the till is answered', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1355)).expect(201);
    const history = await causes(res.body.id);
    assert.equal(res.body.status, 'requires_customer', history.join(', '));
    assert.match(res.body.qr_code.data, /^http:\/\/127\.0\.0\.1:\d+\/wallet\//);
    assert.deepEqual(history, [
      'processing (created)',
      'processing (resend: QR code creation sent again (HTTP 500 from Antom pay), attempt 1)',
      'requires_customer (pay: pending)',
    ]);
  });

  test('QR: the code is the simulator’s wallet page; paying it succeeds through the notification', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1250)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    assert.match(res.body.qr_code.data, /^http:\/\/127\.0\.0\.1:\d+\/wallet\//);
    const page = await fetch(res.body.qr_code.data);
    assert.match(await page.text(), /Alipay\+ sandbox wallet/);
    // Every notification is sent twice: the gateway applies it once.
    await simSwitch('duplicate_notifications', true);
    try {
      assert.equal((await fetch(res.body.qr_code.data, { method: 'POST' })).status, 200);
      const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.wallet_psp, 'ALIPAYCN');
      const history = await causes(res.body.id);
      assert.equal(history.filter((c) => c.startsWith('succeeded')).length, 1, history.join(', '));
    } finally {
      await simSwitch('duplicate_notifications', false);
    }
  });

  test('QR whose creation is answered U once: sent again at once, identical, and the till gets the code (§9)', async () => {
    const flip = (on: boolean) => simSwitch('order_code_unknown_once', on);
    await flip(true);
    let res: Awaited<ReturnType<typeof createPayment>>;
    try {
      res = await createPayment(tg, merchant.terminalKey, qrPayment(1240)).expect(201);
    } finally {
      await flip(false);
    }
    assert.equal(res.body.status, 'requires_customer', JSON.stringify(res.body));
    assert.match(res.body.qr_code.data, /^http:\/\/127\.0\.0\.1:\d+\/wallet\//);
    const history = await causes(res.body.id);
    assert.equal(history.filter((c) => /QR code creation sent again/.test(c)).length, 1, history.join(', '));
  });

  // Without its code nobody can pay: cancelled now, not when the code's 3 minutes are up.
  for (const [fault, switchName] of [
    ['its creating answer does not verify (an inquiry has no code)', 'bad_signatures'],
    ['its creation is answered U without a code', 'order_code_unknown'],
    ['its creation is answered U each time, and no order recorded', 'pay_unknown_unrecorded'],
  ] as const) {
    test(`QR whose ${fault}: the sale is cancelled at once`, async () => {
      const flip = (on: boolean) => simSwitch(switchName, on);
      await flip(true);
      let res: Awaited<ReturnType<typeof createPayment>>;
      try {
        res = await createPayment(tg, merchant.terminalKey, qrPayment(1250)).expect(201);
      } finally {
        await flip(false);
      }
      // Held for a code that never comes: answered once the sale ends, or still without a code.
      assert.ok(['processing', 'canceled'].includes(res.body.status), res.body.status);
      assert.equal(res.body.qr_code ?? null, null);
      const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 20_000);
      assert.equal(done.status, 'canceled');
      const history = await causes(res.body.id);
      assert.ok(
        history.some((c) => c.startsWith('canceled (cancel')),
        history.join(', '),
      );
    });
  }

  test('an inquiry Antom refuses with F (not "not found") is cancelled at once, not polled for the QR’s 3 minutes', async () => {
    const flip = (on: boolean) => simSwitch('inquiry_refused', on);
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1250)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    await flip(true);
    try {
      const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 20_000);
      assert.equal(done.status, 'canceled');
    } finally {
      await flip(false);
    }
    // Closed at Antom too: scanning the code now pays nothing.
    const paid = await fetch(res.body.qr_code.data, {
      method: 'POST',
      headers: { accept: 'application/json' },
    });
    assert.equal(((await paid.json()) as { paymentStatus: string }).paymentStatus, 'CANCELLED');
  });

  test('a check that read the payment before its code was stored does not end the QR the till was given', async () => {
    const ctx = tg.gateway.ctx;
    const { pay, inquire } = alipayAdapter;
    const payAnswered = signal();
    const answerStored = signal();
    // The creating request has its answer (with the code), and its write waits (a busy pool) ...
    alipayAdapter.pay = async (account, payment) => {
      const outcome = await pay.call(alipayAdapter, account, payment);
      payAnswered.settle();
      await answerStored.settled;
      return outcome;
    };
    try {
      const creating = createPayment(tg, merchant.terminalKey, qrPayment(1210)).then((r) => r);
      await payAnswered.settled;
      const { rows } = await ctx.db.query<{ id: string }>(
        'SELECT id FROM payments WHERE merchant_id = $1 ORDER BY created_at DESC LIMIT 1',
        [merchant.id],
      );
      const id = rows[0].id;
      // ... while a check (a job the sweeper revived) read the payment without it, and hears from
      // Antom (whose inquiry carries no code) only after the code is stored.
      alipayAdapter.inquire = async (account, payment) => {
        const outcome = await inquire.call(alipayAdapter, account, payment);
        answerStored.settle();
        await eventually(async () => (await loadPayment(ctx, id)).qr_data !== null, 5_000, 'the code stored');
        return outcome;
      };
      await resolvePayment(ctx, id);
      const created = await creating;
      assert.equal(created.body.status, 'requires_customer');
      await new Promise((r) => setTimeout(r, 1_500));
      assert.equal((await loadPayment(ctx, id)).status, 'requires_customer', (await causes(id)).join(', '));
    } finally {
      alipayAdapter.pay = pay;
      alipayAdapter.inquire = inquire;
    }
  });

  test('a cancel Antom answers ORDER_NOT_EXIST while the pay is still on its way does not end the sale', async () => {
    const { pay, cancel } = alipayAdapter;
    const payMayGo = signal();
    // The pay is slow to reach Antom; a cancel overtakes it and Antom knows no such order yet. (The
    // simulator keeps a cancelled id from being paid later; Antom is not known to: §16.)
    alipayAdapter.pay = async (account, payment) => {
      await payMayGo.settled;
      return pay.call(alipayAdapter, account, payment);
    };
    alipayAdapter.cancel = async () =>
      cancelOutcome({ resultStatus: 'F', resultCode: 'ORDER_NOT_EXIST', resultMessage: 'order not exist' });
    try {
      const { creating, id, canceling } = await cancelWhileCreating(1230);
      assert.equal(canceling.status, 202, JSON.stringify(canceling.body));
      assert.equal(canceling.body.status, 'processing');
      payMayGo.settle();
      // The pay arrives and the customer is charged. The cancel under way decides what the till
      // is told: Antom cannot find the order to cancel, an inquiry finds it paid, so it succeeded.
      assert.equal((await creating).body.status, 'processing');
      const done = await waitForStatus(tg, merchant.terminalKey, id, FINAL);
      const history = await causes(id);
      assert.equal(done.status, 'succeeded', history.join(', '));
      assert.ok(
        history.some((c) => /held: the cancel under way decides/.test(c)),
        history.join(', '),
      );
    } finally {
      payMayGo.settle();
      alipayAdapter.pay = pay;
      alipayAdapter.cancel = cancel;
    }
  });

  test('“no such order” while the pay is still on its way proves nothing: the pay lands, its answer is lost, and the cancel reverses it', async () => {
    const { pay, cancel } = alipayAdapter;
    const payMayGo = signal();
    let landed = false;
    let reversed = false;
    alipayAdapter.pay = async (account, payment) => {
      await payMayGo.settled;
      // Antom takes the money; the answer never comes back.
      await pay.call(alipayAdapter, account, payment);
      landed = true;
      return { kind: 'unknown', reason: 'socket hang up', reached: true };
    };
    alipayAdapter.cancel = async (account, payment) => {
      if (!landed)
        return cancelOutcome({
          resultStatus: 'F',
          resultCode: 'ORDER_NOT_EXIST',
          resultMessage: 'order not exist',
        });
      const outcome = await cancel.call(alipayAdapter, account, payment);
      reversed ||= outcome.kind === 'canceled';
      return outcome;
    };
    try {
      const { creating, id, canceling } = await cancelWhileCreating(1231);
      assert.equal(canceling.status, 202, JSON.stringify(canceling.body));
      // Two "not found" answers 2 s apart would once have been taken as proof the pay never arrived.
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      payMayGo.settle();
      assert.equal((await creating).body.status, 'processing');
      const done = await waitForStatus(tg, merchant.terminalKey, id, FINAL, 20_000);
      const history = await causes(id);
      assert.equal(done.status, 'canceled', history.join(', '));
      assert.ok(reversed, `the customer's payment was reversed at Antom: ${history.join(', ')}`);
      assert.ok(!history.some((c) => /never reached/.test(c)), history.join(', '));
    } finally {
      payMayGo.settle();
      alipayAdapter.pay = pay;
      alipayAdapter.cancel = cancel;
    }
  });

  test('QR with 52: the scan is heard at once (PAYMENT_PENDING), then the result', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1252)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    const woken = await scanWhileTillWaits(tg, merchant.terminalKey, res.body);
    assert.equal(woken.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
    const history = await causes(res.body.id);
    assert.ok(
      history.some((c) => c.startsWith('processing (notification')),
      `the scan came by notification: ${history.join(', ')}`,
    );
  });

  test('refunds: partial then the rest', async () => {
    const paid = await createPayment(tg, merchant.refundTerminalKey, scanPayment(3000)).expect(201);
    assert.equal(paid.body.status, 'succeeded');
    const first = await createRefund(tg, merchant.refundTerminalKey, paid.body.id, {
      amount: { value: 1000, currency: 'EUR' },
    }).expect(201);
    const refund = await eventually(async () => {
      const r = await tg.http
        .get(`/v1/refunds/${first.body.id}`)
        .set('Authorization', `Bearer ${merchant.secretKey}`);
      return r.body.status === 'succeeded' ? r.body : undefined;
    });
    assert.equal(refund.amount.value, 1000);
    await createRefund(tg, merchant.refundTerminalKey, paid.body.id).expect(201);
    const done = await waitForStatus(tg, merchant.secretKey, paid.body.id, ['refunded']);
    assert.deepEqual(done.amount_refunded, { value: 3000, currency: 'EUR' });
  });

  test('forged and malformed notifications are rejected and change nothing', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2057)).expect(201);
    const forged = JSON.stringify({
      notifyType: 'PAYMENT_RESULT',
      result: { resultCode: 'SUCCESS', resultStatus: 'S', resultMessage: 'success.' },
      paymentRequestId: res.body.id,
      paymentId: 'forged',
      paymentAmount: { currency: 'EUR', value: '2057' },
    });
    const answer = await tg.http
      .post(`/webhooks/alipay/${merchant.accountId}`)
      .set('content-type', 'application/json')
      .set('client-id', 'SANDBOX_5X0000')
      .set('request-time', new Date().toISOString())
      .set('signature', 'algorithm=RSA256,keyVersion=1,signature=AAAA')
      .send(forged);
    assert.ok(answer.status >= 400, `status ${answer.status}`);
    assert.doesNotMatch(answer.text, /"resultStatus":"S"/);
    const malformed = await tg.http
      .post(`/webhooks/alipay/${merchant.accountId}`)
      .set('content-type', 'application/json')
      .send('{"notifyType":');
    assert.ok(malformed.status >= 400);
    // Refused before the adapter saw it (too large, no such account): still in Antom's own form.
    const refusals = [
      await tg.http
        .post(`/webhooks/alipay/${merchant.accountId}`)
        .set('content-type', 'application/json')
        .send(`{"notifyType":"${'x'.repeat(1_100_000)}"}`),
      await tg.http
        .post('/webhooks/alipay/pva_doesNotExist')
        .set('content-type', 'application/json')
        .send(forged),
    ];
    assert.deepEqual(
      refusals.map((r) => [r.status, JSON.parse(r.text).result?.resultStatus]),
      [
        [400, 'F'],
        [404, 'F'],
      ],
    );
    const now = await tg.http
      .get(`/v1/payments/${res.body.id}`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`);
    assert.equal(now.body.status, 'processing');
    await tg.http
      .post(`/v1/payments/${res.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`);
  });
});

describe('alipay sandbox across a gateway restart', () => {
  test('a payment in flight resolves the same way after the gateway (and its simulator) restart', async () => {
    const first = await startTestGateway({ PAYMENT_RESOLUTION_WINDOW_S: '30' });
    let second: Awaited<ReturnType<typeof startGateway>> | undefined;
    try {
      const created = await first.http
        .post('/v1/admin/merchants')
        .set('Authorization', `Bearer ${first.adminKey}`)
        .send({ name: 'Restart Drugstore', settlement_currency: 'EUR', country: 'DE' })
        .expect(201);
      const sk = created.body.secret_key as string;
      await first.http
        .put('/v1/providers/alipay')
        .set('Authorization', `Bearer ${sk}`)
        .send({ sandbox: true, wallets: ['alipay'] })
        .expect(201);
      const res = await createPayment(first, sk, scanPayment(2052)).expect(201);
      assert.equal(res.body.status, 'processing');
      const qr = await createPayment(first, sk, {
        amount: { value: 3000, currency: 'EUR' },
        reference: 'R-QR-RESTART',
        mode: 'qr',
        wallet: 'alipay',
      }).expect(201);
      assert.equal(qr.body.status, 'requires_customer');
      await first.gateway.stop();
      second = await startGateway(first.config);
      // The code the till shows still opens after the restart, and paying it completes the sale.
      assert.equal((await fetch(qr.body.qr_code.data, { method: 'POST' })).status, 200);
      await waitForStatus(first, sk, qr.body.id, ['succeeded']);
      const done = await eventually(async () => {
        const r = await first.http.get(`/v1/payments/${res.body.id}`).set('Authorization', `Bearer ${sk}`);
        return FINAL.includes(r.body.status) ? r.body : undefined;
      }, 30_000);
      assert.equal(done.status, 'succeeded');
      const after = await createPayment(first, sk, scanPayment(1999)).expect(201);
      assert.equal(after.body.status, 'succeeded', 'the account configured before the restart still works');
    } finally {
      await second?.stop();
      await discardEnvironment(first.dbName);
    }
  });
});

describe('alipay behind a proxy that strips a path prefix', () => {
  test('a notification signed over PUBLIC_BASE_URL’s whole path verifies', async () => {
    // PUBLIC_BASE_URL ends in /tb; the proxy in front of the gateway takes /tb off again.
    let target = 0;
    const proxy = createServer((req, res) => {
      const upstream = httpRequest(
        {
          host: '127.0.0.1',
          port: target,
          method: req.method,
          path: (req.url ?? '/').replace(/^\/tb/, ''),
          headers: req.headers,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      req.pipe(upstream);
    });
    const proxyPort = await freePort();
    await new Promise<void>((resolve) => proxy.listen(proxyPort, '127.0.0.1', resolve));
    const behind = await startTestGateway({
      PAYMENT_RESOLUTION_WINDOW_S: '30',
      PUBLIC_BASE_URL: `http://127.0.0.1:${proxyPort}/tb`,
    });
    try {
      target = behind.config.port;
      const m = await setupMerchant(behind, 'Proxied Drugstore', {
        name: 'alipay',
        body: { sandbox: true, wallets: ['alipay'] },
      });
      const res = await createPayment(behind, m.terminalKey, qrPayment(1250)).expect(201);
      assert.equal(res.body.status, 'requires_customer');
      assert.equal((await fetch(res.body.qr_code.data, { method: 'POST' })).status, 200);
      // Heard from Antom's notification (not only found by polling): it verified.
      await eventually(async () => {
        const { rows } = await behind.gateway.ctx.db.query(
          'SELECT 1 FROM inbound_notifications WHERE account_id = $1',
          [m.accountId],
        );
        return rows.length > 0 || undefined;
      }, 10_000);
      const done = await waitForStatus(behind, m.terminalKey, res.body.id, FINAL);
      assert.equal(done.status, 'succeeded');
    } finally {
      await behind.stop();
      proxy.close();
    }
  });
});
