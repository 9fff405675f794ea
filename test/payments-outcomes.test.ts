import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { PaymentOutcome } from '../adapters/contract.ts';
import { sandboxAdapter, sandboxCredentials } from '../adapters/sandbox/adapter.ts';
import { SIGNATURE_HEADER, sandboxSecret, signSandbox } from '../adapters/sandbox/protocol.ts';
import {
  ALIPAY_CODE,
  createPayment,
  eventually,
  FINAL,
  type Merchant,
  paymentHistory,
  qrPayment,
  scanPayment,
  scanWhileTillWaits,
  setupMerchant,
  simulatorCalls,
  startTestGateway,
  type TestGateway,
  WECHAT_CODE,
  waitForStatus,
} from './helpers.ts';

let tg: TestGateway;
let merchant: Merchant;

before(async () => {
  tg = await startTestGateway({ PAYMENT_RESOLUTION_WINDOW_S: '3' });
  merchant = await setupMerchant(tg);
});
after(() => tg.stop());

const history = (id: string) => paymentHistory(tg, id);

describe('sandbox magic outcomes, mode scan', () => {
  test('00–50: succeeds at once, with the wallet’s amount and rate', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(1999)).expect(201);
    assert.equal(res.body.status, 'succeeded');
    assert.deepEqual(res.body.amount, { value: 1999, currency: 'EUR' });
    assert.deepEqual(res.body.customer_amount, { value: 15420, currency: 'CNY' });
    assert.equal(res.body.exchange_rate, '7.7140');
    // Between minor units: JPY has none, so ¥1000 × 0.0476 is CNY 47.60.
    const yen = await createPayment(
      tg,
      merchant.terminalKey,
      scanPayment(1000, { amount: { value: 1000, currency: 'JPY' } }),
    ).expect(201);
    assert.deepEqual(yen.body.customer_amount, { value: 4760, currency: 'CNY' });
    assert.equal(yen.body.exchange_rate, '0.0476');
    assert.equal(res.body.wallet, 'alipay');
    assert.equal(res.body.provider, 'sandbox');
    assert.equal(res.body.store_id, 'berlin-01');
    assert.equal(res.body.terminal_id, 'till-1');
    assert.match(res.body.id, /^pay_/);
    assert.ok(res.body.provider_reference);
    assert.equal(res.body.payment_code, '2867**********8790', 'the payment code is shown masked only');
    const short = await createPayment(
      tg,
      merchant.terminalKey,
      scanPayment(1000, { payment_code: '9123456789' }),
    ).expect(201);
    assert.equal(short.body.payment_code, '91******89', 'a short code keeps at least half its digits hidden');
    // Those stored under the old mask (four digits at each end) are masked again by a migration.
    const { db } = tg.gateway.ctx;
    await db.query("UPDATE payments SET payment_code_masked = '9123**6789' WHERE id = $1", [short.body.id]);
    await db.query(
      readFileSync(
        new URL('../src/ledger/migrations/119_payment_code_mask_half_hidden.sql', import.meta.url),
        'utf8',
      ),
    );
    const masks = await db.query<{ id: string; payment_code_masked: string }>(
      'SELECT id, payment_code_masked FROM payments WHERE id = ANY($1)',
      [[short.body.id, res.body.id]],
    );
    assert.deepEqual(Object.fromEntries(masks.rows.map((r) => [r.id, r.payment_code_masked])), {
      [short.body.id]: '91******89',
      [res.body.id]: '2867**********8790',
    });
    assert.match(res.headers['request-id'], /^req_/);
  });

  test('51: declined for insufficient funds', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2051)).expect(201);
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.failure.code, 'insufficient_funds');
    assert.ok(res.body.failure.message.length > 0);
  });

  test('52: processing while the customer confirms, then succeeds', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2052)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
  });

  test('53: processing, then the customer gives up and it fails', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2053)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'failed');
    assert.equal(done.failure.code, 'user_canceled');
  });

  test('54: no answer from the provider; the gateway finds the success by inquiry', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2054)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
    assert.ok((await history(res.body.id)).includes('succeeded (inquiry: succeeded)'));
  });

  test('55: 5xx first; two not-found inquiries prove it never arrived, the identical request is resent once', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2055)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'succeeded');
    const events = await history(res.body.id);
    assert.equal(events.filter((e) => e.includes('resend')).length, 2, events.join('\n'));
  });

  test('56: invalid payment code fails at once', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2056)).expect(201);
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.failure.code, 'invalid_payment_code');
  });

  test('57: stays processing; cancelled at the end of the resolution window', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(2057)).expect(201);
    assert.equal(res.body.status, 'processing');
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
    assert.equal(done.status, 'canceled');
    assert.ok(
      (await history(res.body.id)).some((e) => e.startsWith('canceled (cancel: resolution window ended')),
    );
  });

  test('a success the provider reports for another amount: at the end of the window the charge is reversed, the sale canceled', async () => {
    const { pay, inquire } = sandboxAdapter;
    let inquiries = 0;
    const wrongAmount = (request: { amount: { value: number; currency: string } }): PaymentOutcome => ({
      kind: 'succeeded',
      amount: { value: request.amount.value - 1, currency: request.amount.currency },
      provider_reference: 'sim-wrong-amount',
    });
    sandboxAdapter.pay = async (_account, request) => wrongAmount(request);
    sandboxAdapter.inquire = async (_account, request) => {
      inquiries++;
      return wrongAmount(request);
    };
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(2040)).expect(201);
      assert.equal(res.body.status, 'processing');
      const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL);
      assert.equal(done.status, 'canceled');
      assert.equal((await simulatorCalls(tg, res.body.id))['/v1/cancel'], 1);
      assert.ok(inquiries < 20, `${inquiries} inquiries in a 3 s window`);
    } finally {
      Object.assign(sandboxAdapter, { pay, inquire });
    }
  });

  test('57 whose request dies after the provider took it: still cancelled soon after its window, not after the in-flight grace', async () => {
    const original = sandboxAdapter.pay;
    let hearBack = () => {};
    // The provider takes the pay; the process that sent it hears nothing back (as if it died).
    const answerLost = async (...args: Parameters<typeof original>): Promise<PaymentOutcome> => {
      await original(...args);
      return new Promise((resolve) => {
        hearBack = () => resolve({ kind: 'unknown', reason: 'answer lost', reached: true });
      });
    };
    Object.assign(sandboxAdapter, { pay: answerLost });
    let request: Promise<unknown> | undefined;
    try {
      const sale = () =>
        createPayment(
          tg,
          merchant.terminalKey,
          scanPayment(2157, { reference: 'request-lost' }),
          'request-lost',
        );
      request = sale().then();
      const id = await eventually(async () => {
        const { rows } = await tg.gateway.ctx.db.query<{ id: string }>(
          "SELECT id FROM payments WHERE reference = 'request-lost' AND merchant_id = $1",
          [merchant.id],
        );
        return rows[0]?.id;
      }, 5_000);
      // Its window is 3 s; the in-flight grace (30 s) must not hold it past that.
      const done = await waitForStatus(tg, merchant.terminalKey, id, FINAL, 20_000);
      assert.equal(done.status, 'canceled');
      // The till's retry learns it at once: a final sale is not "in progress" for 30 s more.
      const retry = await sale();
      assert.equal(retry.status, 200, JSON.stringify(retry.body));
      assert.equal(retry.headers['idempotent-replayed'], 'true');
      assert.equal(retry.body.status, 'canceled');
    } finally {
      Object.assign(sandboxAdapter, { pay: original });
      hearBack();
      await request;
    }
  });

  test('a WeChat Pay code is routed to the wechatpay wallet', async () => {
    const res = await createPayment(
      tg,
      merchant.terminalKey,
      scanPayment(1200, { payment_code: WECHAT_CODE }),
    ).expect(201);
    assert.equal(res.body.wallet, 'wechatpay');
    assert.equal(res.body.status, 'succeeded');
  });
});

describe('mode qr', () => {
  test('a QR sale waiting for its customer keeps its updated_at while the gateway polls the provider', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1520)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    const polled = async () =>
      (
        await tg.gateway.ctx.db.query<{ poll_step: number }>('SELECT poll_step FROM payments WHERE id = $1', [
          res.body.id,
        ])
      ).rows[0].poll_step;
    const before = await polled();
    await eventually(async () => (await polled()) >= before + 2 || undefined, 10_000, 'two more inquiries');
    const read = await tg.http
      .get(`/v1/payments/${res.body.id}`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.equal(read.body.status, 'requires_customer');
    assert.equal(read.body.updated_at, res.body.updated_at);
  });

  test('shows a QR code; paying on the simulated wallet page succeeds and wakes a long-polling till', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1500, 'wechatpay')).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    assert.match(res.body.qr_code.data, /^http:\/\/127\.0\.0\.1:\d+\/wallet\//);
    assert.ok(Date.parse(res.body.qr_code.expires_at) > Date.now());

    const page = await fetch(res.body.qr_code.data);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /Sandbox wallet/);

    const started = Date.now();
    const woken = await scanWhileTillWaits(tg, merchant.terminalKey, res.body);
    assert.equal(woken.status, 200);
    assert.equal(woken.body.status, 'succeeded');
    assert.ok(Date.now() - started < 10_000, 'woken by the notification, not by the wait timeout');
  });

  test('a scanned QR code shows processing at once; from the scan the sale has the window of a sale being confirmed', async () => {
    // 52: the customer confirms on the phone, then it succeeds.
    const confirming = await createPayment(tg, merchant.terminalKey, qrPayment(1552)).expect(201);
    assert.equal(confirming.body.status, 'requires_customer');
    const woken = await scanWhileTillWaits(tg, merchant.terminalKey, confirming.body);
    assert.equal(woken.body.status, 'processing', 'the scan wakes the till, which now shows "confirming"');
    await waitForStatus(tg, merchant.terminalKey, confirming.body.id, ['succeeded']);
    assert.deepEqual(
      (await history(confirming.body.id)).map((e) => e.split(' ')[0]),
      ['processing', 'requires_customer', 'processing', 'succeeded'],
    );

    // 57: scanned, then never decided. The QR code was good for 120 s; once scanned, the sale is
    // cancelled at the end of the configured window (3 s here), counted from the scan.
    const stuck = await createPayment(tg, merchant.terminalKey, qrPayment(1557)).expect(201);
    await new Promise((r) => setTimeout(r, 1500));
    const scannedAt = Date.now();
    await fetch(stuck.body.qr_code.data, { method: 'POST' });
    await waitForStatus(tg, merchant.terminalKey, stuck.body.id, ['processing'], 5_000);
    await waitForStatus(tg, merchant.terminalKey, stuck.body.id, ['canceled'], 20_000);
    assert.ok(Date.now() - scannedAt >= 2_500, 'not before the window counted from the scan');
  });

  test('a QR sale whose creating answer was lost gets its code from the inquiry (54) before the till is answered, and can be paid', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1654)).expect(201);
    // The answer waited for the code: the till has one to show.
    assert.equal(res.body.status, 'requires_customer');
    assert.match(res.body.qr_code.data, /^http:\/\/127\.0\.0\.1:\d+\/wallet\//);
    const causes = await history(res.body.id);
    assert.ok(
      causes.some((c) => c.startsWith('requires_customer (inquiry')),
      causes.join(', '),
    );
    await fetch(res.body.qr_code.data, { method: 'POST' });
    await waitForStatus(tg, merchant.terminalKey, res.body.id, ['succeeded']);
  });

  test('the till cancels a QR nobody scanned: 200 canceled, then 409 for a second cancel', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(1600)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    const cancel = await tg.http
      .post(`/v1/payments/${res.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.equal(cancel.body.status, 'canceled');
    await tg.http
      .post(`/v1/payments/${res.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(409);
  });
});

describe('long-poll', () => {
  test('?wait returns at once for a final payment and after the timeout for an unchanged one', async () => {
    const done = await createPayment(tg, merchant.terminalKey, scanPayment(1000)).expect(201);
    const t0 = Date.now();
    await tg.http
      .get(`/v1/payments/${done.body.id}?wait=20`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.ok(Date.now() - t0 < 2000);

    const qr = await createPayment(tg, merchant.terminalKey, qrPayment(1700));
    const t1 = Date.now();
    const res = await tg.http
      .get(`/v1/payments/${qr.body.id}?wait=1`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.equal(res.body.status, 'requires_customer');
    assert.ok(Date.now() - t1 >= 900, 'held for the wait time');
  });

  test('?wait is not ended by news of a status the till already has, only by a change', async () => {
    const qr = await createPayment(tg, merchant.terminalKey, qrPayment(1701)).expect(201);
    const started = Date.now();
    const waiting = tg.http
      .get(`/v1/payments/${qr.body.id}?wait=10`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .then((r) => r);
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Publishes arriving late: of the change the till's read had already seen, and of an older one.
    await tg.gateway.ctx.updates.publish(qr.body.id, JSON.stringify(qr.body));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const older = {
      ...qr.body,
      status: 'processing',
      updated_at: new Date(Date.parse(qr.body.created_at) - 1).toISOString(),
    };
    await tg.gateway.ctx.updates.publish(qr.body.id, JSON.stringify(older));
    await new Promise((resolve) => setTimeout(resolve, 300));
    await tg.http
      .post(`/v1/payments/${qr.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    const answer = await waiting;
    assert.equal(answer.body.status, 'canceled');
    assert.ok(Date.now() - started >= 800);
  });

  test('cancel while the customer is confirming: 200 canceled, and the payment stays canceled', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(3057)).expect(201);
    const cancel = await tg.http
      .post(`/v1/payments/${res.body.id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.equal(cancel.body.status, 'canceled');
    assert.ok(cancel.body.cancel_requested_at);
  });
});

describe('the sandbox adapter', () => {
  test('a signed answer that is a refusal (400, 401, 409) is an unknown outcome, whatever the call', async () => {
    const seed = Buffer.from('refusing simulator');
    const secret = sandboxSecret(seed);
    let status = 400;
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const body = JSON.stringify({ error: 'refused', message: 'refused by the test' });
        res.writeHead(status, {
          'content-type': 'application/json',
          [SIGNATURE_HEADER]: signSandbox(secret, body),
        });
        res.end(body);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const account = {
        account_id: 'acct_test',
        merchant_id: 'mer_test',
        credentials: sandboxCredentials(seed, async () => url),
        sandbox: true,
        notify_url: `${url}/notify`,
        notify_path: '/notify',
      };
      const payment = {
        payment_id: 'pay_test',
        provider_request_id: 'pay_test',
        amount: { value: 100, currency: 'EUR' },
        mode: 'scan' as const,
        wallet: 'alipay' as const,
        payment_code: ALIPAY_CODE,
        reference: 'r',
        merchant_id: 'mer_test',
        created_at: new Date(),
        expires_at: new Date(Date.now() + 60_000),
      };
      const refund = {
        refund_id: 're_test',
        provider_request_id: 're_test',
        payment,
        amount: payment.amount,
        created_at: new Date(),
      };
      for (status of [400, 401, 409]) {
        const kinds = [
          (await sandboxAdapter.pay(account, payment)).kind,
          (await sandboxAdapter.inquire(account, payment)).kind,
          (await sandboxAdapter.cancel(account, payment)).kind,
          (await sandboxAdapter.refund(account, refund)).kind,
          (await sandboxAdapter.inquireRefund(account, refund)).kind,
        ];
        assert.deepEqual(kinds, Array(5).fill('unknown'), `HTTP ${status}`);
      }
    } finally {
      server.close();
    }
  });
});
