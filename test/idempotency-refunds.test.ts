import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Response } from 'supertest';
import type { PaymentOutcome } from '../adapters/contract.ts';
import { sandboxAdapter } from '../adapters/sandbox/adapter.ts';
import { requestHashOf } from '../src/http/idempotency.ts';
import { applyOutcome, loadPayment } from '../src/payments/service.ts';
import {
  createPayment,
  createRefund,
  idempotencyKey,
  type Merchant,
  qrPayment,
  scanPayment,
  setupMerchant,
  startTestGateway,
  type TestGateway,
} from './helpers.ts';

let tg: TestGateway;
let merchant: Merchant;

before(async () => {
  tg = await startTestGateway();
  merchant = await setupMerchant(tg);
});
after(() => tg.stop());

async function paymentsWithReference(reference: string): Promise<number> {
  const { rows } = await tg.gateway.ctx.db.query('SELECT 1 FROM payments WHERE reference = $1', [reference]);
  return rows.length;
}

/**
 * A sale as a creating request leaves it before that request is done: stored with its key and
 * request hash, by till-1, in `status` (`processing`, or `succeeded` if a notification came first).
 */
async function insertUnfinishedSale(
  id: string,
  status: 'processing' | 'succeeded',
  key: string,
  body: ReturnType<typeof scanPayment>,
): Promise<void> {
  const till = await tg.gateway.ctx.db.query<{ id: string }>(
    "SELECT id FROM terminals WHERE merchant_id = $1 AND terminal_id = 'till-1'",
    [merchant.id],
  );
  const paid = status === 'succeeded';
  await tg.gateway.ctx.db.query(
    `INSERT INTO payments (id, merchant_id, provider_account_id, provider, wallet, mode, status, amount_value, currency,
       reference, provider_request_id, resolve_by, pay_answered, idempotency_key, request_hash, request_done, terminal_ref,
       store_id, terminal_id, next_check_at, paid_at, finalized_at)
     SELECT $1, $2, $3, 'sandbox', 'alipay', 'scan', $6, $7, 'EUR', $8, $1, now() + interval '60 seconds',
            false, $4, $5, false, t.id, t.store_id, t.terminal_id,
            CASE WHEN $9 THEN NULL ELSE now() + interval '60 seconds' END,
            CASE WHEN $9 THEN now() END, CASE WHEN $9 THEN now() END
       FROM terminals t WHERE t.merchant_id = $2 AND t.terminal_id = 'till-1'`,
    [
      id,
      merchant.id,
      merchant.accountId,
      key,
      requestHashOf('POST', '/v1/payments', `terminal ${till.rows[0].id}`, body),
      status,
      body.amount.value,
      body.reference,
      paid,
    ],
  );
}

describe('Idempotency-Key', () => {
  test('a replay returns the stored response with Idempotent-Replayed, and creates nothing', async () => {
    const key = idempotencyKey();
    const body = scanPayment(1234, { reference: 'R-IDEM-1' });
    const first = await createPayment(tg, merchant.terminalKey, body, key).expect(201);
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const second = await createPayment(tg, merchant.terminalKey, body, key).expect(200);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(second.body, first.body);
    assert.equal(await paymentsWithReference('R-IDEM-1'), 1);
  });

  test('a replay of an undecided sale is the 201 it was answered, until the sale is decided', async () => {
    // 52: processing, checked by the gateway for ~3 s before it succeeds.
    const key = idempotencyKey();
    const body = scanPayment(1252, { reference: 'R-IDEM-52' });
    const first = await createPayment(tg, merchant.terminalKey, body, key).expect(201);
    assert.equal(first.body.status, 'processing');
    let undecided = 0;
    for (;;) {
      const replay = await createPayment(tg, merchant.terminalKey, body, key).expect(200);
      if (replay.body.status !== 'processing') {
        assert.equal(replay.body.status, 'succeeded');
        assert.ok(Date.parse(replay.body.updated_at) > Date.parse(first.body.updated_at));
        break;
      }
      undecided++;
      assert.deepEqual(replay.body, first.body, 'the checks meanwhile changed nothing the till sees');
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.ok(undecided >= 3, `${undecided} replays while it was processing`);
  });

  test('the same key with another body is 422 idempotency', async () => {
    const key = idempotencyKey();
    await createPayment(tg, merchant.terminalKey, scanPayment(1300, { reference: 'R-IDEM-2' }), key).expect(
      201,
    );
    const res = await createPayment(
      tg,
      merchant.terminalKey,
      scanPayment(1301, { reference: 'R-IDEM-2' }),
      key,
    ).expect(422);
    assert.equal(res.body.error.type, 'idempotency');
    assert.equal(await paymentsWithReference('R-IDEM-2'), 1);
  });

  test('concurrent identical requests create exactly one payment; the others get the replay or 409', async () => {
    const key = idempotencyKey();
    const body = scanPayment(2052, { reference: 'R-IDEM-3' }); // 52: the provider takes a while
    const results = await Promise.all(
      Array.from({ length: 12 }, () => createPayment(tg, merchant.terminalKey, body, key)),
    );
    const statuses = results.map((r) => r.status).sort();
    assert.equal(statuses.filter((s) => s === 201).length, 1, `statuses: ${statuses}`);
    for (const r of results.filter((r) => r.status === 409)) assert.equal(r.body.error.type, 'idempotency');
    for (const r of results) assert.ok([200, 201, 409].includes(r.status));
    assert.equal(await paymentsWithReference('R-IDEM-3'), 1);
  });

  test('a payment stored by a request whose process died: 409 until the lease passes, then that payment, never a second', async () => {
    const key = idempotencyKey();
    const body = scanPayment(1400, { reference: 'R-IDEM-4' });
    const id = 'pay_diedMidRequest000000001';
    await insertUnfinishedSale(id, 'processing', key, body);
    const blocked = await createPayment(tg, merchant.terminalKey, body, key).expect(409);
    assert.equal(blocked.body.error.type, 'idempotency');
    await tg.gateway.ctx.db.query(
      `UPDATE payments SET created_at = now() - interval '31 seconds' WHERE id = $1`,
      [id],
    );
    const res = await createPayment(tg, merchant.terminalKey, body, key).expect(200);
    assert.equal(res.headers['idempotent-replayed'], 'true');
    assert.equal(res.body.id, id);
    assert.equal(await paymentsWithReference('R-IDEM-4'), 1);
  });

  test('a sale whose notification overtook the pay answer: a retry of its request is a replay at once, not 409', async () => {
    const key = idempotencyKey();
    const body = scanPayment(1450, { reference: 'R-IDEM-5' });
    const id = 'pay_notifiedBeforeAnswer001';
    // The notification already moved it to succeeded; the creating request is still running.
    await insertUnfinishedSale(id, 'succeeded', key, body);
    const ctx = tg.gateway.ctx;
    const account = await ctx.accounts.get(merchant.accountId);
    assert.ok(account);
    // Then the pay's own answer arrives: nothing to move, but the request is done.
    await applyOutcome(ctx, await loadPayment(ctx, id), account, { kind: 'succeeded' }, 'pay');
    const retry = await createPayment(tg, merchant.terminalKey, body, key).expect(200);
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(retry.body.id, id);
    assert.equal(retry.body.status, 'succeeded');
  });

  test('keys are scoped per merchant', async () => {
    const other = await setupMerchant(tg, 'Other Store');
    const key = idempotencyKey();
    const a = await createPayment(tg, merchant.terminalKey, scanPayment(1500), key).expect(201);
    const b = await createPayment(tg, other.terminalKey, scanPayment(1500), key).expect(201);
    assert.notEqual(a.body.id, b.body.id);
  });

  test("another terminal, or the secret key, reusing a terminal's key gets 422, never its payment", async () => {
    const key = idempotencyKey();
    const body = scanPayment(1600);
    const first = await createPayment(tg, merchant.terminalKey, body, key).expect(201);
    for (const caller of [merchant.refundTerminalKey, merchant.secretKey]) {
      const res = await createPayment(tg, caller, body, key);
      assert.equal(res.status, 422, JSON.stringify(res.body));
      assert.equal(res.body.error.code, 'idempotency_key_reused');
      assert.doesNotMatch(JSON.stringify(res.body), new RegExp(first.body.id));
    }
  });

  test("a retry after the merchant's provider accounts changed still gets its payment", async () => {
    const m = await setupMerchant(tg);
    const key = idempotencyKey();
    const body = scanPayment(1400, { reference: 'R-IDEM-ACCOUNTS' });
    const first = await createPayment(tg, m.terminalKey, body, key).expect(201);
    await tg.http
      .put('/v1/providers/sandbox')
      .set('Authorization', `Bearer ${m.secretKey}`)
      .send({ wallets: ['alipay'], currencies: ['USD'] })
      .expect(200);
    const retry = await createPayment(tg, m.terminalKey, body, key).expect(200);
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(retry.body.id, first.body.id);
    // A new sale in EUR has no account now.
    await createPayment(tg, m.terminalKey, body).expect(422);
  });

  test('a retry of a sale taken under wallet rules that have since tightened still gets its payment', async () => {
    const key = idempotencyKey();
    const first = await createPayment(tg, merchant.terminalKey, scanPayment(1450), key).expect(201);
    // The sale as an older version took it: the till named a wallet its code does not show.
    const body = scanPayment(1450, { payment_code: '5012345678901234', wallet: 'wechatpay' });
    const till = await tg.gateway.ctx.db.query<{ terminal_ref: string }>(
      'SELECT terminal_ref FROM payments WHERE id = $1',
      [first.body.id],
    );
    await tg.gateway.ctx.db.query('UPDATE payments SET request_hash = $2 WHERE id = $1', [
      first.body.id,
      requestHashOf('POST', '/v1/payments', `terminal ${till.rows[0].terminal_ref}`, body),
    ]);
    const retry = await createPayment(tg, merchant.terminalKey, body, key).expect(200);
    assert.equal(retry.body.id, first.body.id);
    // The same body as a new sale is refused.
    await createPayment(tg, merchant.terminalKey, body).expect(400);
  });

  test('the same body with its keys in another order is the same request; a key may hold spaces', async () => {
    const key = `till 1 receipt ${idempotencyKey()}`;
    const body = scanPayment(1700);
    const first = await createPayment(tg, merchant.terminalKey, body, key).expect(201);
    const reordered = Object.fromEntries(Object.entries(body).reverse());
    const again = await createPayment(tg, merchant.terminalKey, reordered, key).expect(200);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(again.body.id, first.body.id);
  });

  test('a retry to the same route spelt with a trailing slash or in capitals is the same request', async () => {
    const key = idempotencyKey();
    const body = scanPayment(1800);
    const first = await createPayment(tg, merchant.terminalKey, body, key).expect(201);
    for (const path of ['/v1/payments/', '/V1/Payments']) {
      const again = await tg.http
        .post(path)
        .set('Authorization', `Bearer ${merchant.terminalKey}`)
        .set('Idempotency-Key', key)
        .send(body);
      assert.equal(again.status, 200, `${path}: ${JSON.stringify(again.body)}`);
      assert.equal(again.body.id, first.body.id);
    }
    const refundKey = idempotencyKey();
    const refund = await createRefund(tg, merchant.secretKey, first.body.id, {}, refundKey);
    assert.equal(refund.status, 201, JSON.stringify(refund.body));
    const retried = await tg.http
      .post(`/v1/payments/${first.body.id}/refunds/`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .set('Idempotency-Key', refundKey)
      .send({});
    assert.equal(retried.status, 200, JSON.stringify(retried.body));
    assert.equal(retried.body.id, refund.body.id);
  });
});

describe('refunds', () => {
  async function paid(value: number): Promise<string> {
    const res = await createPayment(tg, merchant.secretKey, scanPayment(value)).expect(201);
    assert.equal(res.body.status, 'succeeded');
    return res.body.id;
  }

  const refund = (paymentId: string, body: object, key = merchant.secretKey, idem = idempotencyKey()) =>
    createRefund(tg, key, paymentId, body, idem);

  test('partial refund, then the default rest; the payment ends refunded', async () => {
    const id = await paid(5000);
    const first = await refund(id, {
      amount: { value: 1200, currency: 'EUR' },
      reason: 'broken item',
    }).expect(201);
    assert.equal(first.body.status, 'succeeded');
    assert.deepEqual(first.body.amount, { value: 1200, currency: 'EUR' });
    let payment = await tg.http
      .get(`/v1/payments/${id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.equal(payment.body.status, 'partially_refunded');
    assert.deepEqual(payment.body.amount_refunded, { value: 1200, currency: 'EUR' });

    const rest = await refund(id, {}).expect(201);
    assert.deepEqual(rest.body.amount, { value: 3800, currency: 'EUR' });
    payment = await tg.http
      .get(`/v1/payments/${id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.equal(payment.body.status, 'refunded');
    assert.deepEqual(payment.body.amount_refunded, { value: 5000, currency: 'EUR' });

    const fetched = await tg.http
      .get(`/v1/refunds/${first.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.equal(fetched.body.payment_id, id);
    const more = await refund(id, { amount: { value: 1, currency: 'EUR' } }).expect(409);
    assert.equal(more.body.error.type, 'conflict');
    // The payment's refunds, newest first, a page at a time.
    const list = (query: string) =>
      tg.http
        .get(`/v1/payments/${id}/refunds${query}`)
        .set('Authorization', `Bearer ${merchant.secretKey}`)
        .expect(200);
    const page = await list('?limit=1');
    assert.deepEqual(
      [page.body.data.map((r: { id: string }) => r.id), page.body.has_more],
      [[rest.body.id], true],
    );
    const next = await list(`?limit=1&starting_after=${rest.body.id}`);
    assert.deepEqual(
      [next.body.data.map((r: { id: string }) => r.id), next.body.has_more],
      [[first.body.id], false],
    );
    // Another merchant does not see the payment, nor its refunds.
    const other = await setupMerchant(tg, 'Refund Lister');
    await tg.http
      .get(`/v1/payments/${id}/refunds`)
      .set('Authorization', `Bearer ${other.secretKey}`)
      .expect(404);
  });

  test('a refund the provider refuses leaves the payment as it was, and its history says so', async () => {
    const id = await paid(3000);
    await refund(id, { amount: { value: 1000, currency: 'EUR' } }).expect(201);
    const original = sandboxAdapter.refund;
    sandboxAdapter.refund = async () => ({
      kind: 'failed',
      failure: { code: 'provider_error', message: 'refused by the test' },
    });
    let refused: Response;
    try {
      refused = await refund(id, { amount: { value: 500, currency: 'EUR' } }).expect(201);
    } finally {
      sandboxAdapter.refund = original;
    }
    assert.equal(refused.body.status, 'failed');
    const payment = await loadPayment(tg.gateway.ctx, id);
    assert.equal(payment.status, 'partially_refunded');
    assert.equal(payment.amount_refunded, 1000);
    const { rows } = await tg.gateway.ctx.db.query<{ from_status: string; to_status: string }>(
      'SELECT from_status, to_status FROM payment_events WHERE refund_id = $1 ORDER BY id',
      [refused.body.id],
    );
    assert.deepEqual(rows.at(-1), { from_status: 'partially_refunded', to_status: 'partially_refunded' });
  });

  test('more than the captured amount is refused with 422', async () => {
    const id = await paid(1000);
    const res = await refund(id, { amount: { value: 1001, currency: 'EUR' } }).expect(422);
    assert.equal(res.body.error.type, 'unprocessable');
    assert.equal(res.body.error.code, 'amount_exceeds_refundable');
    assert.equal(res.body.error.param, 'amount.value');
    // Above the configured maximum is a bad amount (400), as in a payment, whatever was captured.
    const huge = await refund(id, { amount: { value: 100_000_001, currency: 'EUR' } }).expect(400);
    assert.equal(huge.body.error.type, 'invalid_request');
    assert.equal(huge.body.error.code, 'amount_too_large');
    assert.equal(huge.body.error.param, 'amount.value');
  });

  test('concurrent refunds never exceed the captured amount', async () => {
    const id = await paid(1000);
    const results = await Promise.all(
      Array.from({ length: 10 }, () => refund(id, { amount: { value: 300, currency: 'EUR' } })),
    );
    const created = results.filter((r) => r.status === 201);
    assert.equal(created.length, 3, `statuses ${results.map((r) => r.status)}`);
    for (const r of results.filter((r) => r.status !== 201)) assert.ok([409, 422].includes(r.status));
    const { rows } = await tg.gateway.ctx.db.query<{ total: number }>(
      "SELECT COALESCE(SUM(amount_value), 0)::int AS total FROM refunds WHERE payment_id = $1 AND status <> 'failed'",
      [id],
    );
    assert.equal(rows[0].total, 900);
    const payment = await tg.http
      .get(`/v1/payments/${id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.deepEqual(payment.body.amount_refunded, { value: 900, currency: 'EUR' });
  });

  test("a key names one request: reused for another payment's refund, a cancel, or a sale's key for a refund, it is 422", async () => {
    const [p1, p2] = [await paid(3000), await paid(3100)];
    const key = idempotencyKey();
    await refund(p1, { amount: { value: 100, currency: 'EUR' } }, merchant.secretKey, key).expect(201);
    const other = await refund(
      p2,
      { amount: { value: 100, currency: 'EUR' } },
      merchant.secretKey,
      key,
    ).expect(422);
    assert.equal(other.body.error.code, 'idempotency_key_reused');
    const cancel = await tg.http
      .post(`/v1/payments/${p2}/cancel`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .set('Idempotency-Key', key);
    assert.equal(cancel.status, 422);
    // The key of a sale is not a refund's either.
    const saleKey = idempotencyKey();
    const p3 = await createPayment(tg, merchant.secretKey, scanPayment(3300), saleKey).expect(201);
    await refund(p3.body.id, {}, merchant.secretKey, saleKey).expect(422);
    const refunds = await tg.gateway.ctx.db.query('SELECT 1 FROM refunds WHERE payment_id = ANY($1)', [
      [p2, p3.body.id],
    ]);
    assert.equal(refunds.rowCount, 0);
  });

  test("one key sent at once with two payments' refunds makes one refund, the other 422", async () => {
    // Two requests under different scopes each found the other's claim not yet committed.
    for (let round = 0; round < 8; round++) {
      const [p1, p2] = [await paid(3400 + round * 100), await paid(3450 + round * 100)];
      const key = idempotencyKey();
      const answers = await Promise.all(
        [p1, p2].map((p) => refund(p, { amount: { value: 100, currency: 'EUR' } }, merchant.secretKey, key)),
      );
      assert.deepEqual(
        answers.map((a) => a.status).sort(),
        [201, 422],
        `round ${round}: ${JSON.stringify(answers.map((a) => a.body))}`,
      );
    }
  });

  test('a refund replayed with its Idempotency-Key refunds once', async () => {
    const id = await paid(2000);
    const idem = idempotencyKey();
    const a = await refund(id, { amount: { value: 500, currency: 'EUR' } }, merchant.secretKey, idem).expect(
      201,
    );
    const b = await refund(id, { amount: { value: 500, currency: 'EUR' } }, merchant.secretKey, idem).expect(
      200,
    );
    assert.equal(a.body.id, b.body.id);
    const payment = await tg.http
      .get(`/v1/payments/${id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.deepEqual(payment.body.amount_refunded, { value: 500, currency: 'EUR' });
  });

  test('a refund of the rest sent with {} and retried with no body is the same request, and a cancel likewise', async () => {
    const id = await paid(2050);
    const idem = idempotencyKey();
    const first = await refund(id, {}, merchant.secretKey, idem).expect(201);
    const retry = await tg.http
      .post(`/v1/payments/${id}/refunds`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .set('Idempotency-Key', idem)
      .expect(200);
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(retry.body.id, first.body.id);
    const open = await createPayment(tg, merchant.secretKey, scanPayment(2057)).expect(201);
    const cancelKey = idempotencyKey();
    const cancel = (body?: object) => {
      const request = tg.http
        .post(`/v1/payments/${open.body.id}/cancel`)
        .set('Authorization', `Bearer ${merchant.secretKey}`)
        .set('Idempotency-Key', cancelKey);
      return body ? request.send(body) : request;
    };
    const canceled = await cancel();
    assert.ok([200, 202].includes(canceled.status), JSON.stringify(canceled.body));
    const again = await cancel({});
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.headers['idempotent-replayed'], 'true');
  });

  test('a cancel whose process died unanswered, carried on by the worker: its retry gets the canceled sale, not a 409', async () => {
    const sale = await createPayment(tg, merchant.terminalKey, scanPayment(2257)).expect(201);
    const id = sale.body.id;
    const idem = idempotencyKey();
    const { rows } = await tg.gateway.ctx.db.query<{ terminal_ref: string }>(
      'SELECT terminal_ref FROM payments WHERE id = $1',
      [id],
    );
    // What the dead request left: its lapsed lock; its cancel, which the worker carried to the end.
    await tg.gateway.ctx.db.query(
      `INSERT INTO idempotency_keys (scope, key, request_hash, locked_until) VALUES ($1, $2, $3, now() - interval '1 second')`,
      [
        `${merchant.id}:cancel:${id}`,
        idem,
        requestHashOf('POST', `/v1/payments/${id}/cancel`, `terminal ${rows[0].terminal_ref}`, {}),
      ],
    );
    await tg.http
      .post(`/v1/payments/${id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    const retry = await tg.http
      .post(`/v1/payments/${id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .set('Idempotency-Key', idem);
    assert.equal(retry.status, 200, JSON.stringify(retry.body));
    assert.equal(retry.body.status, 'canceled');
    // A new cancel of the canceled sale is still the 409 of API.md.
    await tg.http
      .post(`/v1/payments/${id}/cancel`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .set('Idempotency-Key', idempotencyKey())
      .expect(409);
  });

  test('a refund made by a request whose process died: its retry gets that refund, never a second', async () => {
    const id = await paid(2100);
    const idem = idempotencyKey();
    const body = { amount: { value: 2100, currency: 'EUR' } };
    // What the dead request left: its refund, committed and still pending, and its lapsed lock.
    const refundId = 're_diedMidRequest00000001';
    await tg.gateway.ctx.db.query(
      `INSERT INTO refunds (id, payment_id, merchant_id, amount_value, currency, status, provider_request_id,
                            idempotency_key, created_at)
       VALUES ($1, $2, $3, 2100, 'EUR', 'pending', $1, $4, now() - interval '40 seconds')`,
      [refundId, id, merchant.id, idem],
    );
    await tg.gateway.ctx.db.query(
      `INSERT INTO idempotency_keys (scope, key, request_hash, locked_until) VALUES ($1, $2, $3, now() - interval '1 second')`,
      [
        `${merchant.id}:refunds:${id}`,
        idem,
        requestHashOf('POST', `/v1/payments/${id}/refunds`, 'merchant', body),
      ],
    );
    const retry = await refund(id, body, merchant.secretKey, idem).expect(200);
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(retry.body.id, refundId);
    const { rows } = await tg.gateway.ctx.db.query('SELECT id FROM refunds WHERE payment_id = $1', [id]);
    assert.deepEqual(
      rows.map((r) => r.id),
      [refundId],
    );
    // The sweeper sees the left refund through; a later replay tells the till how it ended.
    let replay = await refund(id, body, merchant.secretKey, idem).expect(200);
    for (let i = 0; i < 100 && replay.body.status === 'pending'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      replay = await refund(id, body, merchant.secretKey, idem).expect(200);
    }
    assert.equal(replay.body.id, refundId);
    assert.equal(replay.body.status, 'succeeded');
  });

  test('a failed or unfinished payment cannot be refunded', async () => {
    const failed = await createPayment(tg, merchant.secretKey, scanPayment(1051)).expect(201);
    const res = await refund(failed.body.id, {}).expect(409);
    assert.equal(res.body.error.code, 'payment_not_captured');
  });

  test('terminal keys refund only when created with can_refund', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(900)).expect(201);
    const denied = await refund(res.body.id, {}, merchant.terminalKey).expect(403);
    assert.equal(denied.body.error.type, 'permission');
    const own = await createPayment(tg, merchant.refundTerminalKey, scanPayment(900)).expect(201);
    await refund(own.body.id, {}, merchant.refundTerminalKey).expect(201);
  });
});

describe('a QR sale held for its code', () => {
  test('a QR sale whose code is slow to come holds the till 10 s from its start, the provider’s slow answer included', async () => {
    const { pay, inquire } = sandboxAdapter;
    // The creating call timed out after reaching the provider, and inquiries learn nothing yet.
    const noCodeYet: PaymentOutcome = { kind: 'unknown', reason: 'timed out', reached: true };
    sandboxAdapter.pay = async () => {
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      return noCodeYet;
    };
    sandboxAdapter.inquire = async () => noCodeYet;
    try {
      const started = Date.now();
      const res = await createPayment(tg, merchant.terminalKey, qrPayment(1510)).expect(201);
      const heldMs = Date.now() - started;
      assert.equal(res.body.status, 'processing');
      assert.equal(res.body.qr_code ?? null, null);
      assert.ok(heldMs >= 9_000 && heldMs < 11_500, `held ${heldMs} ms`);
    } finally {
      Object.assign(sandboxAdapter, { pay, inquire });
    }
  });
});
