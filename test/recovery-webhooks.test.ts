import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { Response } from 'supertest';
import type { CancelOutcome } from '../adapters/contract.ts';
import { sandboxAdapter } from '../adapters/sandbox/adapter.ts';
import { sandboxSecret, signSandbox } from '../adapters/sandbox/protocol.ts';
import { startSandboxSimulator } from '../adapters/sandbox/simulator.ts';
import { seededStatePath } from '../adapters/simulator-port.ts';
import { WEBHOOK_EVENTS } from '../src/http/schemas.ts';
import { applyRefundOutcome } from '../src/payments/refunds.ts';
import { applyOutcome, loadPayment, resolvePayment, sweepStragglers } from '../src/payments/service.ts';
import { maskPaymentCode, seal } from '../src/secrets.ts';
import {
  DELIVERY_ATTEMPTS,
  DELIVERY_WINDOW_MS,
  deliver,
  deliveryWaitMs,
  requeuePendingDeliveries,
} from '../webhooks/outbound.ts';
import {
  ALIPAY_CODE,
  createPayment,
  createRefund,
  eventually,
  FINAL,
  freePort,
  type Merchant,
  PG_BASE,
  qrPayment,
  scanPayment,
  setupMerchant,
  simulatorCalls,
  startTestGateway,
  TcpRelay,
  type TestGateway,
  waitForStatus,
} from './helpers.ts';
import { databaseOn, dropRedisKeys } from './services.ts';

let tg: TestGateway;
let merchant: Merchant;

before(async () => {
  tg = await startTestGateway({ PAYMENT_RESOLUTION_WINDOW_S: '60' });
  merchant = await setupMerchant(tg);
});
after(() => tg.stop());

const db = () => tg.gateway.ctx.db;

/** The open alerts about one payment. */
async function alertsOf(paymentId: string): Promise<{ id: string; kind: string; detail: string }[]> {
  const alerts = await tg.http
    .get('/v1/admin/alerts?limit=100')
    .set('Authorization', `Bearer ${tg.adminKey}`)
    .expect(200);
  return alerts.body.data.filter((a: { payment_id: string }) => a.payment_id === paymentId);
}

/** The poll step a payment's current resolution job was queued for. */
async function pollStep(paymentId: string): Promise<number> {
  const { rows } = await db().query<{ poll_step: number }>('SELECT poll_step FROM payments WHERE id = $1', [
    paymentId,
  ]);
  return rows[0].poll_step;
}

describe('crash recovery', () => {
  test('a processing payment whose jobs were lost (Redis flushed) is resumed by the sweeper', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4052)).expect(201);
    assert.equal(res.body.status, 'processing');
    await tg.gateway.ctx.queues.resolve.empty();
    const delayed = await tg.gateway.ctx.queues.resolve.getDelayed();
    await Promise.all(delayed.map((job) => job.remove()));
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 30_000);
    assert.equal(done.status, 'succeeded');
  });

  test('every key of the gateway lost from Redis: the sweeper’s own schedule comes back and the sale ends', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4154)).expect(201);
    assert.equal(res.body.status, 'processing');
    // Its check, the sweeper's schedule, everything: as a Redis restarted without persistence.
    await dropRedisKeys(tg.gateway.ctx.config.redisUrl, tg.gateway.ctx.config.redisPrefix);
    const done = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 30_000);
    assert.equal(done.status, 'succeeded');
  });

  test('a payment whose queued job a flush left without a list ("stuck") is checked again', async () => {
    const queue = tg.gateway.ctx.queues.resolve;
    await queue.pause(true);
    let id: string;
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(4357)).expect(201); // 57: stays processing
      id = res.body.id;
      // bull's empty() drops the delayed list but leaves the delayed jobs' records behind.
      await queue.empty();
      const orphan = await queue.getJob(`resolve:${id}:${await pollStep(id)}`);
      assert.equal(await orphan?.getState(), 'stuck');
    } finally {
      await queue.resume(true);
    }
    await eventually(
      async () => (await simulatorCalls(tg, id))['/v1/inquire'] > 0,
      20_000,
      'the sweeper to revive the stuck job',
    );
  });

  test('the sweeper gives an overdue payment no second job while its job is still queued', async () => {
    const queue = tg.gateway.ctx.queues.resolve;
    // This process takes no resolution job meanwhile: the payment's job stays queued.
    await queue.pause(true);
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(4157)).expect(201); // 57: stays processing
      const jobsOf = async () =>
        (await queue.getJobs(['waiting', 'delayed', 'active'])).filter(
          (job) => job?.data.payment_id === res.body.id,
        ).length;
      assert.equal(await jobsOf(), 1);
      // Overdue, as after a Redis outage or a backed-up queue.
      await db().query("UPDATE payments SET next_check_at = now() - interval '1 minute' WHERE id = $1", [
        res.body.id,
      ]);
      assert.equal(await sweepStragglers(tg.gateway.ctx), 0, 'none resumed: its job is there');
      assert.equal(await jobsOf(), 1);
    } finally {
      await queue.resume(true);
    }
  });

  test('a check queued for an earlier step does nothing: only the current step asks the provider', async () => {
    const queue = tg.gateway.ctx.queues.resolve;
    await queue.pause(true);
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(4257)).expect(201); // 57: stays processing
      const step = await pollStep(res.body.id);
      const inquiries = async () => (await simulatorCalls(tg, res.body.id))['/v1/inquire'] ?? 0;
      await resolvePayment(tg.gateway.ctx, res.body.id, step - 1);
      assert.equal(await inquiries(), 0);
      await resolvePayment(tg.gateway.ctx, res.body.id, step);
      assert.equal(await inquiries(), 1);
    } finally {
      await queue.resume(true);
    }
  });

  test('a payment stored by a process that died before calling the provider is found and sent once', async () => {
    const id = 'pay_crashedBeforeSend0001';
    const { masterKey } = tg.config;
    await db().query(
      `INSERT INTO payments (id, merchant_id, provider_account_id, provider, wallet, mode, status, amount_value, currency,
         reference, payment_code_masked, payment_code_sealed, provider_request_id, resolve_by, pay_answered, created_at)
       VALUES ($1, $2, $3, 'sandbox', 'alipay', 'scan', 'processing', 4100, 'EUR', 'R-CRASH', $4, $5, $1,
               now() + interval '60 seconds', false, now() - interval '10 seconds')`,
      [
        id,
        merchant.id,
        merchant.accountId,
        maskPaymentCode(ALIPAY_CODE),
        seal(masterKey, ALIPAY_CODE, `payment-code:${id}`),
      ],
    );
    const done = await waitForStatus(tg, merchant.secretKey, id, FINAL, 30_000);
    assert.equal(done.status, 'succeeded');
    const { rows } = await db().query<{ cause: string }>(
      'SELECT cause FROM payment_events WHERE payment_id = $1 ORDER BY id',
      [id],
    );
    // The sandbox rebuilds an order from the request an inquiry carries (it survives restarts), so the
    // straggler is resolved by inquiry; with a provider that never saw it, the identical request is resent.
    const causes = rows.map((r) => r.cause);
    assert.deepEqual(causes.filter((c) => c.endsWith('succeeded')).length, 1, causes.join(', '));
    assert.ok(
      causes.some((c) => /^(inquiry|resend): succeeded$/.test(c)),
      causes.join(', '),
    );
  });

  test('a refund stored by a process that died before sending it is found and sent once', async () => {
    const paid = await createPayment(tg, merchant.terminalKey, scanPayment(4200)).expect(201);
    assert.equal(paid.body.status, 'succeeded');
    const id = 're_crashedBeforeSend00001';
    await db().query(
      `INSERT INTO refunds (id, payment_id, merchant_id, amount_value, currency, status, provider_request_id, created_at)
       VALUES ($1, $2, $3, 1000, 'EUR', 'pending', $1, now() - interval '40 seconds')`,
      [id, paid.body.id, merchant.id],
    );
    const refund = await eventually(
      async () => {
        const res = await tg.http
          .get(`/v1/refunds/${id}`)
          .set('Authorization', `Bearer ${merchant.secretKey}`);
        return res.body.status === 'pending' ? undefined : res.body;
      },
      30_000,
      'the stranded refund to be resolved',
    );
    assert.equal(refund.status, 'succeeded');
    const payment = await tg.http
      .get(`/v1/payments/${paid.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`);
    assert.equal(payment.body.status, 'partially_refunded');
    assert.deepEqual(payment.body.amount_refunded, { value: 1000, currency: 'EUR' });
    assert.equal((await simulatorCalls(tg, paid.body.id))['/v1/refund'], 1, 'the refund was sent once');
  });
});

describe('PostgreSQL lost for a moment', () => {
  let blipping: TestGateway;
  let shop: Merchant;
  const relay = { current: undefined as TcpRelay | undefined };

  before(async () => {
    const first = await startTestGateway();
    shop = await setupMerchant(first, 'Blip Kiosk');
    await first.stop({ keepDatabase: true });
    relay.current = new TcpRelay(await freePort(), new URL(PG_BASE));
    await relay.current.open();
    const viaRelay = new URL(first.env.DATABASE_URL as string);
    viaRelay.host = `127.0.0.1:${relay.current.port}`;
    blipping = await startTestGateway({ DATABASE_URL: viaRelay.toString() }, first);
  });
  after(async () => {
    await blipping.stop();
    await relay.current?.cut();
  });

  /** Every connection to PostgreSQL drops, for 1.5 s unless told longer. */
  async function blip(ms = 1_500): Promise<void> {
    await relay.current?.cut();
    setTimeout(() => void relay.current?.open(), ms);
  }

  test('a connection lost while checked out (a transaction under way) fails its holder, not the process', async () => {
    const client = await blipping.gateway.ctx.db.connect();
    try {
      await client.query('BEGIN');
      await blip();
      await assert.rejects(client.query('SELECT 1'));
    } finally {
      client.release(true);
    }
    await eventually(async () => (await blipping.http.get('/readyz')).status === 200, 10_000);
  });

  /** `request`, while the sandbox adapter's `operation` loses PostgreSQL right after the provider answered. */
  async function blipAfter<T>(
    operation: 'pay' | 'refund',
    request: () => PromiseLike<T>,
    blipMs?: number,
  ): Promise<T> {
    const original = sandboxAdapter[operation] as (...args: never[]) => Promise<unknown>;
    const answerThenBlip = async (...args: never[]) => {
      const outcome = await original(...args);
      await blip(blipMs);
      return outcome;
    };
    Object.assign(sandboxAdapter, { [operation]: answerThenBlip });
    try {
      return await request();
    } finally {
      Object.assign(sandboxAdapter, { [operation]: original });
    }
  }

  test('right after the provider took the money: the till still gets the outcome, not a 503', async () => {
    const res = await blipAfter('pay', () => createPayment(blipping, shop.terminalKey, scanPayment(4242)));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.status, 'succeeded');
  });

  /**
   * `request` (sent again as a till would) after the sandbox adapter's `operation` answered and
   * PostgreSQL went away for 7 s, longer than the till is held: the first is a 503, and the retry,
   * once PostgreSQL is back, a replay with the outcome. A 409 while the answer is being stored
   * (within a second of PostgreSQL's return) is fair; one until the request's 30 s lock lapses is
   * not: the retry is awaited until about 13 s in.
   */
  async function retriedAfterLongOutage(
    operation: 'pay' | 'refund',
    request: () => PromiseLike<Response>,
    outcome = 'succeeded',
  ) {
    const first = await blipAfter(operation, request, 7_000);
    assert.equal(first.status, 503, JSON.stringify(first.body));
    assert.equal(first.body.error.type, 'unavailable');
    const retry = await eventually(
      async () => {
        const res = await request();
        return res.status === 503 || res.status === 409 ? undefined : res;
      },
      8_000,
      'an answer other than 503 or 409',
    );
    assert.equal(retry.status, 200, JSON.stringify(retry.body));
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(retry.body.status, outcome);
    return retry;
  }

  test('away for longer than the till is held: a 503, and its retry once PostgreSQL is back is the outcome, not a 409', async () => {
    const key = `blip-long-${Date.now()}`;
    await retriedAfterLongOutage('pay', () =>
      createPayment(blipping, shop.terminalKey, scanPayment(4343), key),
    );
  });

  test('right after the provider paid a refund out: the refund is answered as paid, not a 503', async () => {
    const paid = await createPayment(blipping, shop.refundTerminalKey, scanPayment(4200)).expect(201);
    const res = await blipAfter('refund', () => createRefund(blipping, shop.refundTerminalKey, paid.body.id));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.status, 'succeeded');
  });

  test("a refund's retry after an outage longer than the till is held: its outcome, not a 409", async () => {
    const paid = await createPayment(blipping, shop.refundTerminalKey, scanPayment(4300)).expect(201);
    const key = `refund-blip-long-${Date.now()}`;
    const retry = await retriedAfterLongOutage('refund', () =>
      createRefund(blipping, shop.refundTerminalKey, paid.body.id, {}, key),
    );
    assert.equal(retry.body.amount.value, 4300);
  });

  test('a refund the provider answered pending, retried after a long outage: the refund as it stands, not a 409', async () => {
    const paid = await createPayment(blipping, shop.refundTerminalKey, scanPayment(4310)).expect(201);
    const key = `refund-pending-blip-${Date.now()}`;
    const original = sandboxAdapter.refund;
    sandboxAdapter.refund = async () => ({ kind: 'pending' });
    try {
      const retry = await retriedAfterLongOutage(
        'refund',
        () => createRefund(blipping, shop.refundTerminalKey, paid.body.id, {}, key),
        'pending',
      );
      assert.equal(retry.body.amount.value, 4310);
    } finally {
      sandboxAdapter.refund = original;
    }
  });

  test("a stop while a provider's answer waits for PostgreSQL stores the answer before it closes", async () => {
    const first = await blipAfter(
      'pay',
      () => createPayment(blipping, shop.terminalKey, scanPayment(4444)),
      7_000,
    );
    assert.equal(first.status, 503, JSON.stringify(first.body));
    // Stored while the queues are open: an answer that leaves the sale open queues its next check.
    const { ctx } = blipping.gateway;
    const closeQueues = ctx.queues.close.bind(ctx.queues);
    let storesLeftAtClose = -1;
    ctx.queues.close = () => {
      storesLeftAtClose = ctx.lateWrites.size;
      return closeQueues();
    };
    await blipping.stop({ keepDatabase: true });
    assert.equal(storesLeftAtClose, 0);
    const direct = new pg.Client({ connectionString: databaseOn(PG_BASE, blipping.dbName) });
    await direct.connect();
    try {
      const { rows } = await direct.query<{ status: string }>(
        'SELECT status FROM payments WHERE merchant_id = $1 AND amount_value = 4444',
        [shop.id],
      );
      assert.deepEqual(
        rows.map((r) => r.status),
        ['succeeded'],
        'stored by the stopping gateway, not left for the sweeper',
      );
    } finally {
      await direct.end();
      blipping = await startTestGateway({}, blipping);
    }
  });
});

describe('restart', () => {
  test('a QR code the customer scanned just before a restart stays scanned: the sandbox simulator keeps scans', async () => {
    const seed = randomBytes(32);
    const secret = sandboxSecret(seed);
    const call = async (url: string, path: string, payload: object) => {
      const body = JSON.stringify(payload);
      const post = () =>
        fetch(`${url}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'sandbox-signature': signSandbox(secret, body) },
          body,
        });
      // Once more if a kept-alive connection to the stopped simulator was picked.
      const res = await post().catch(post);
      return (await res.json()) as { status: string; qr_url?: string };
    };
    const request = {
      request_id: `pay_scanned${randomBytes(6).toString('hex')}`,
      amount: 4952, // 52: the customer confirms on the phone, then it succeeds
      currency: 'EUR',
      mode: 'qr',
      notify_url: 'http://127.0.0.1:9/nobody',
      created_at: new Date().toISOString(),
      expires_at: new Date(Date.now() + 120_000).toISOString(),
    };
    const first = await startSandboxSimulator({ seed, latency_ms: 0, time_scale: 0.3 });
    let second: Awaited<ReturnType<typeof startSandboxSimulator>> | undefined;
    try {
      const created = await call(first.url, '/v1/pay', request);
      assert.equal(created.status, 'requires_customer');
      assert.equal((await fetch(String(created.qr_url), { method: 'POST' })).status, 200);
      await first.close();
      // Let this process's fetch see the old server's connections closed before it calls again.
      await new Promise((resolve) => setTimeout(resolve, 200));
      second = await startSandboxSimulator({ seed, latency_ms: 0, time_scale: 0.3 });
      const known = await call(second.url, '/v1/inquire', {
        request_id: request.request_id,
        original: request,
      });
      assert.notEqual(known.status, 'requires_customer', 'the scan outlived the simulator');
      await eventually(
        async () =>
          (
            await call(second?.url ?? '', '/v1/inquire', {
              request_id: request.request_id,
              original: request,
            })
          ).status === 'succeeded' || undefined,
        10_000,
        'the confirmed payment',
      );
    } finally {
      await first.close().catch(() => {});
      await second?.close();
      for (const suffix of ['.sandbox-scans', '.sandbox.port'])
        rmSync(seededStatePath(seed, suffix), { force: true });
    }
  });

  test('a payment in flight while the gateway restarts resolves the same way afterwards', async () => {
    const shop = await setupMerchant(tg, 'Restarting shop');
    const res = await createPayment(tg, shop.terminalKey, scanPayment(4652)).expect(201); // 52: succeeds after ~1 s
    assert.equal(res.body.status, 'processing');
    const paidBefore = await createPayment(tg, shop.terminalKey, scanPayment(4600)).expect(201);
    assert.equal(paidBefore.body.status, 'succeeded');
    // 55: the provider's first answer was a 5xx; a restarted simulator must still know it was paid.
    const flaky = await createPayment(tg, shop.terminalKey, scanPayment(4655)).expect(201);
    await waitForStatus(tg, shop.terminalKey, flaky.body.id, ['succeeded'], 20_000);
    // And a QR payment the customer paid on the wallet page.
    const qr = await createPayment(tg, shop.terminalKey, qrPayment(4700)).expect(201);
    assert.equal((await fetch(qr.body.qr_code.data, { method: 'POST' })).status, 200);
    await waitForStatus(tg, shop.terminalKey, qr.body.id, ['succeeded'], 20_000);
    // 55 still unresolved when the gateway (and its simulator) stop: its resend comes after.
    const flakyInFlight = await createPayment(tg, shop.terminalKey, scanPayment(4755)).expect(201);
    assert.equal(flakyInFlight.body.status, 'processing');
    // A QR code the till shows through the restart.
    const shown = await createPayment(tg, shop.terminalKey, qrPayment(4800)).expect(201);
    assert.equal(shown.body.status, 'requires_customer');
    await tg.stop({ keepDatabase: true });
    await new Promise((r) => setTimeout(r, 1500));
    tg = await startTestGateway({}, tg);
    const done = await waitForStatus(tg, shop.terminalKey, res.body.id, FINAL, 30_000);
    assert.equal(done.status, 'succeeded');
    const resent = await waitForStatus(tg, shop.terminalKey, flakyInFlight.body.id, FINAL, 30_000);
    assert.equal(resent.status, 'succeeded');
    // Its URL opens again (the simulator's port outlives it), and the customer pays it: once the
    // gateway's inquiry has told the new simulator of the order, its page takes the payment.
    await eventually(
      async () =>
        (await fetch(shown.body.qr_code.data, { method: 'POST' }).catch(() => undefined))?.status === 200,
      20_000,
      'the QR code shown before the restart paid',
    );
    const paidAfter = await waitForStatus(tg, shop.terminalKey, shown.body.id, FINAL, 20_000);
    assert.equal(paidAfter.status, 'succeeded');
    assert.equal(paidAfter.qr_code.data, shown.body.qr_code.data, 'the till shows the code it was given');
    // The sandbox account configured before the restart keeps working.
    const next = await createPayment(tg, shop.terminalKey, scanPayment(1000)).expect(201);
    assert.equal(next.body.status, 'succeeded');
    // And a payment taken before the restart can still be refunded.
    for (const [payment, body] of [
      [paidBefore, { amount: { value: 600, currency: 'EUR' } }],
      [flaky, {}],
      [qr, {}],
    ] as const) {
      const refund = await createRefund(
        tg,
        shop.secretKey,
        payment.body.id,
        body,
        `refund-after-restart-${payment.body.id}`,
      ).expect(201);
      assert.equal(refund.body.status, 'succeeded', JSON.stringify(refund.body));
    }
  });
});

describe('a gateway down past a sale’s window', () => {
  test('asks the provider before it cancels: a sale the provider completed is succeeded, not reversed', async () => {
    const shop = await setupMerchant(tg, 'Late shop');
    // 54: the provider took the payment, and its answer was lost.
    const res = await createPayment(tg, shop.terminalKey, scanPayment(4854)).expect(201);
    assert.equal(res.body.status, 'processing');
    // Its window passed while nobody could check it (the gateway was down).
    await db().query("UPDATE payments SET resolve_by = now() - interval '1 second' WHERE id = $1", [
      res.body.id,
    ]);
    const done = await waitForStatus(tg, shop.terminalKey, res.body.id, FINAL, 30_000);
    assert.equal(done.status, 'succeeded', 'the outcome the provider has, learnt late');
    // A sale the provider has not decided by then is still cancelled at the window's end.
    const undecided = await createPayment(tg, shop.terminalKey, scanPayment(4857)).expect(201);
    await db().query("UPDATE payments SET resolve_by = now() - interval '1 second' WHERE id = $1", [
      undecided.body.id,
    ]);
    const ended = await waitForStatus(tg, shop.terminalKey, undecided.body.id, FINAL, 30_000);
    assert.equal(ended.status, 'canceled');
  });
});

describe('inbound provider notifications', () => {
  function notify(body: object, signature?: string) {
    const raw = JSON.stringify(body);
    const secret = sandboxSecret(tg.gateway.ctx.sandbox.seed);
    return tg.http
      .post(`/webhooks/sandbox/${merchant.accountId}`)
      .set('Content-Type', 'application/json')
      .set('Sandbox-Signature', signature ?? signSandbox(secret, raw))
      .send(raw);
  }

  const paymentNote = (requestId: string, status: string, n = status) => ({
    notification_id: `ntf_test_${requestId}_${n}`,
    type: 'payment',
    payment: {
      request_id: requestId,
      status,
      transaction_id: 'sbx_test',
      ...(status === 'failed' ? { failure_code: 'user_canceled' } : {}),
    },
  });

  async function events(id: string) {
    const { rows } = await db().query<{ to_status: string }>(
      'SELECT to_status FROM payment_events WHERE payment_id = $1',
      [id],
    );
    return rows.map((r) => r.to_status);
  }

  /** The till cancels `id`; the provider's cancel of it is played by `play`, given the real one. */
  async function tillCancelsWhile(
    id: string,
    play: (real: () => Promise<CancelOutcome>) => Promise<CancelOutcome>,
  ) {
    const { cancel } = sandboxAdapter;
    sandboxAdapter.cancel = async (account, payment) =>
      payment.payment_id === id ? play(() => cancel(account, payment)) : cancel(account, payment);
    try {
      return await tg.http
        .post(`/v1/payments/${id}/cancel`)
        .set('Authorization', `Bearer ${merchant.terminalKey}`);
    } finally {
      sandboxAdapter.cancel = cancel;
    }
  }

  test('duplicates apply once; late and reordered ones never move a final payment', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4257)).expect(201); // 57: stays processing
    const id = res.body.id;
    await notify(paymentNote(id, 'succeeded')).expect(200);
    await notify(paymentNote(id, 'succeeded')).expect(200);
    await notify(paymentNote(id, 'succeeded', 'succeeded-again')).expect(200);
    await notify(paymentNote(id, 'processing')).expect(200);
    await notify(paymentNote(id, 'failed')).expect(200);
    const payment = await tg.http
      .get(`/v1/payments/${id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.equal(payment.body.status, 'succeeded');
    assert.deepEqual(await events(id), ['processing', 'succeeded']);
    const outbox = await db().query(
      // Until the relay renders it, the outbox row holds the payment row snapshot itself.
      "SELECT 1 FROM outbox WHERE type = 'payment.succeeded' AND COALESCE(payload->'data'->'object'->>'id', payload->>'id') = $1",
      [id],
    );
    assert.equal(outbox.rows.length, 1);
  });

  test('a till cancel that lands while a check holds the sale open stops the resend: nobody is charged', async () => {
    const { inquire } = sandboxAdapter;
    let mine = '';
    let notFound = 0;
    sandboxAdapter.inquire = async (account, payment) => {
      const outcome = await inquire(account, payment);
      // The second "not found" proves the pay never arrived; the till cancels before it is acted on.
      if (payment.payment_id === mine && outcome.kind === 'not_found' && ++notFound === 2) {
        const cancel = await tg.http
          .post(`/v1/payments/${mine}/cancel`)
          .set('Authorization', `Bearer ${merchant.terminalKey}`);
        assert.equal(cancel.status, 200, JSON.stringify(cancel.body));
      }
      return outcome;
    };
    try {
      const res = await createPayment(tg, merchant.terminalKey, scanPayment(4555)).expect(201);
      mine = res.body.id;
      await eventually(async () => (notFound >= 2 ? true : undefined), 15_000, 'two not-found inquiries');
      const done = await waitForStatus(tg, merchant.terminalKey, mine, FINAL);
      assert.equal(done.status, 'canceled');
    } finally {
      sandboxAdapter.inquire = inquire;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    // The first (failed) pay only: no resend after the cancel.
    assert.equal((await simulatorCalls(tg, mine))['/v1/pay'], 1);
  });

  test('a till cancel crossing the customer’s success: the success is held, the provider reversed it, so the one final answer is canceled', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4657)).expect(201);
    const answer = await tillCancelsWhile(res.body.id, async (real) => {
      // The success is heard first; then the provider carries out the cancel, reversing the payment.
      await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
      return real();
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.status, 'canceled');
    // Never `succeeded` in between: a till long-polling would have been told so, then `canceled`.
    assert.deepEqual(await events(res.body.id), ['processing', 'processing', 'canceled']);
  });

  test('a cancel whose answer is lost while the customer’s success comes in: the reversal an inquiry finds is the answer, and no refund slips in between', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4757)).expect(201);
    let refundMeanwhile: number | undefined;
    const answer = await tillCancelsWhile(res.body.id, async (real) => {
      await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
      refundMeanwhile = (await createRefund(tg, merchant.secretKey, res.body.id)).status;
      // The provider reverses the sale, and its answer is lost on the way back.
      await real();
      return { kind: 'unknown', reason: 'connection reset' };
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.status, 'canceled');
    assert.equal(refundMeanwhile, 409, 'a refund of a sale whose cancel is under way');
    assert.deepEqual(await events(res.body.id), ['processing', 'processing', 'canceled']);
    assert.deepEqual(await alertsOf(res.body.id), []);
  });

  test('a cancel whose answer is lost, with an inquiry finding the sale paid, is sent again rather than the sale taken as paid: the lost one may yet reverse it', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(5057)).expect(201);
    const id = res.body.id;
    const { inquire } = sandboxAdapter;
    sandboxAdapter.inquire = async (account, payment) =>
      payment.payment_id === id ? { kind: 'succeeded' } : inquire(account, payment);
    try {
      const answer = await tillCancelsWhile(id, async () => ({ kind: 'unknown', reason: 'read timeout' }));
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      assert.equal(answer.body.status, 'processing');
      // Sent again, and this time answered: the till's one final answer is the reversal.
      const ended = await waitForStatus(tg, merchant.terminalKey, id, FINAL);
      assert.equal(ended.status, 'canceled');
    } finally {
      sandboxAdapter.inquire = inquire;
    }
    assert.ok(!(await events(id)).includes('succeeded'), 'never told succeeded, then canceled');
    assert.equal((await simulatorCalls(tg, id))['/v1/cancel'], 1, 'the cancel that reached the provider');
  });

  test('a success heard while the window’s own cancel is under way is held: the reversal is the one final answer', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4857)).expect(201);
    await db().query('UPDATE payments SET resolve_by = now() WHERE id = $1', [res.body.id]);
    const { cancel } = sandboxAdapter;
    sandboxAdapter.cancel = async (account, payment) => {
      if (payment.payment_id === res.body.id) await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
      return cancel(account, payment);
    };
    try {
      await resolvePayment(tg.gateway.ctx, res.body.id);
    } finally {
      sandboxAdapter.cancel = cancel;
    }
    const ended = await loadPayment(tg.gateway.ctx, res.body.id);
    assert.equal(ended.status, 'canceled');
    assert.deepEqual(await events(res.body.id), ['processing', 'processing', 'canceled']);
  });

  test('a success heard while a cancel is out outweighs that cancel’s proof that the pay never arrived', async () => {
    const { pay } = sandboxAdapter;
    // The pay lands and charges the customer; its answer is lost.
    sandboxAdapter.pay = async (account, payment) => {
      const outcome = await pay(account, payment);
      return payment.amount.value === 4341
        ? { kind: 'unknown', reason: 'read timeout', reached: true }
        : outcome;
    };
    let id = '';
    try {
      id = (await createPayment(tg, merchant.terminalKey, scanPayment(4341)).expect(201)).body.id;
    } finally {
      sandboxAdapter.pay = pay;
    }
    // One "not found" already counted; this cancel's answer would be the second, far enough apart.
    await db().query(
      `UPDATE payments SET poll_step = poll_step + 100, next_check_at = now() + interval '1 hour',
              not_found_count = 1, not_found_since = now() - interval '5 seconds' WHERE id = $1`,
      [id],
    );
    const answer = await tillCancelsWhile(id, async () => {
      await notify(paymentNote(id, 'succeeded')).expect(200);
      return { kind: 'not_found', reason: 'F ORDER_NOT_EXIST' };
    });
    assert.equal(answer.status, 409, JSON.stringify(answer.body));
    const ended = await loadPayment(tg.gateway.ctx, id);
    assert.equal(ended.status, 'succeeded');
    assert.deepEqual(await alertsOf(id), []);
  });

  test('a failure heard after a held success is held too: the customer is not left charged for a failed sale', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4557)).expect(201);
    const answer = await tillCancelsWhile(res.body.id, async () => {
      await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
      await notify(paymentNote(res.body.id, 'failed')).expect(200);
      return { kind: 'unknown', reason: 'read timeout' };
    });
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    // The next attempt reverses the charge at the provider: that is the sale's end.
    const ended = await waitForStatus(tg, merchant.terminalKey, res.body.id, FINAL, 30_000);
    assert.equal(ended.status, 'canceled');
    assert.ok(!(await events(res.body.id)).includes('failed'));
  });

  test('a check queued before the till’s cancel sends no second cancel beside it', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(6157)).expect(201);
    // A check of the sale falls due while the till's cancel is out.
    await db().query("UPDATE payments SET next_check_at = now() + interval '1 second' WHERE id = $1", [
      res.body.id,
    ]);
    const row = await loadPayment(tg.gateway.ctx, res.body.id);
    await tg.gateway.ctx.queues.resolve.add(
      { payment_id: row.id, step: row.poll_step },
      { delay: 500, jobId: `resolve:${row.id}:${row.poll_step}:early` },
    );
    let calls = 0;
    const answer = await tillCancelsWhile(res.body.id, async (real) => {
      calls++;
      if (calls === 1) await new Promise((resolve) => setTimeout(resolve, 2_500));
      return real();
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(calls, 1, 'cancels sent while the till’s was out');
  });

  test('a success held late in a cancel’s schedule has the cancel tried again within 15 s, not a minute', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4957)).expect(201);
    await db().query(
      `UPDATE payments SET cancel_requested_at = now(), cancel_attempts = 9, poll_step = poll_step + 100,
              next_check_at = now() + interval '60 seconds' WHERE id = $1`,
      [res.body.id],
    );
    await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
    const held = await loadPayment(tg.gateway.ctx, res.body.id);
    assert.equal(held.status, 'processing');
    assert.ok(
      held.next_check_at && held.next_check_at.getTime() - Date.now() <= 15_000,
      `next check at ${held.next_check_at?.toISOString()}`,
    );
    // That attempt reverses it at the provider: the one final answer.
    const ended = await waitForStatus(
      tg,
      merchant.terminalKey,
      res.body.id,
      ['canceled', 'succeeded'],
      20_000,
    );
    assert.equal(ended.status, 'canceled');
  });

  test('a success arriving after the failure keeps the first final answer, and the charge is reversed at the provider', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4357)).expect(201);
    await notify(paymentNote(res.body.id, 'failed')).expect(200);
    await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
    const { rows } = await db().query<{ status: string }>('SELECT status FROM payments WHERE id = $1', [
      res.body.id,
    ]);
    assert.equal(rows[0].status, 'failed');
    // The customer must not stay charged for a sale the till shows as failed: cancelled again.
    assert.deepEqual((await simulatorCalls(tg, res.body.id))['/v1/cancel'], 1);
    const history = await db().query<{ cause: string }>(
      'SELECT cause FROM payment_events WHERE payment_id = $1 ORDER BY id',
      [res.body.id],
    );
    assert.ok(
      history.rows.some((e) => /reversed at the provider/.test(e.cause)),
      history.rows.map((e) => e.cause).join(', '),
    );
    assert.deepEqual(await alertsOf(res.body.id), [], 'nothing left for a human');
  });

  test('a late success for a sale the provider has already reversed is no alarm, though it refuses to cancel it twice', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(5157)).expect(201);
    const id = res.body.id;
    await notify(paymentNote(id, 'failed')).expect(200);
    const { cancel, inquire } = sandboxAdapter;
    // Antom answers a second cancel with F ORDER_IS_CANCELED, and an inquiry with CANCELLED.
    sandboxAdapter.cancel = async (account, payment) =>
      payment.payment_id === id ? { kind: 'failed', reason: 'ORDER_IS_CANCELED' } : cancel(account, payment);
    sandboxAdapter.inquire = async (account, payment) =>
      payment.payment_id === id ? { kind: 'canceled' } : inquire(account, payment);
    try {
      await notify(paymentNote(id, 'succeeded')).expect(200);
    } finally {
      Object.assign(sandboxAdapter, { cancel, inquire });
    }
    assert.deepEqual(await alertsOf(id), [], 'nobody is asked to refund a customer already repaid');
    const history = await db().query<{ cause: string }>(
      'SELECT cause FROM payment_events WHERE payment_id = $1 ORDER BY id',
      [id],
    );
    assert.ok(history.rows.some((e) => /reversed at the provider/.test(e.cause)));
  });

  test('a late success whose reversal the provider does not confirm is raised for a human', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4457)).expect(201);
    await notify(paymentNote(res.body.id, 'failed')).expect(200);
    const { cancel } = sandboxAdapter;
    sandboxAdapter.cancel = async () => ({ kind: 'unknown', reason: 'connection reset' });
    try {
      await notify(paymentNote(res.body.id, 'succeeded')).expect(200);
    } finally {
      sandboxAdapter.cancel = cancel;
    }
    const mine = await alertsOf(res.body.id);
    assert.deepEqual(
      mine.map((a) => a.kind),
      ['late_success'],
      'a success after a final failure that could not be reversed is raised for a human',
    );
    // The lost cancel may yet reverse it: refunding at once could repay the customer twice.
    assert.match(mine[0].detail, /a reversal may still be under way; check the order at the provider/);
    // Once dealt with, the operator resolves it and it leaves the list.
    const resolved = await tg.http
      .post(`/v1/admin/alerts/${mine[0].id}/resolve`)
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(200);
    assert.ok(resolved.body.resolved_at);
    assert.match(mine[0].id, /^alr_\d+$/, 'an id that says what it names, as every id of API.md');
    assert.deepEqual(await alertsOf(res.body.id), []);
    await tg.http
      .post(`/v1/admin/alerts/${mine[0].id}/resolve`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(403);
  });

  test('a late "still waiting" notification changes nothing shown on a sale already paid', async () => {
    const res = await createPayment(tg, merchant.terminalKey, qrPayment(4560)).expect(201);
    assert.equal(res.body.status, 'requires_customer');
    await fetch(res.body.qr_code.data, { method: 'POST' });
    const paid = await waitForStatus(tg, merchant.terminalKey, res.body.id, ['succeeded']);
    const late = paymentNote(res.body.id, 'requires_customer', 'late');
    Object.assign(late.payment, { qr_url: 'http://elsewhere.example/pay', transaction_id: 'sbx_other' });
    await notify(late).expect(200);
    const read = await tg.http
      .get(`/v1/payments/${res.body.id}`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.deepEqual(read.body, paid);
  });

  test('a success for another amount than the sale’s is not taken as paid, and is raised once', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4557)).expect(201);
    assert.equal(res.body.status, 'processing');
    const ctx = tg.gateway.ctx;
    const account = await ctx.accounts.get(merchant.accountId);
    assert.ok(account);
    const claim = { kind: 'succeeded', amount: { value: 45, currency: 'EUR' } } as const;
    for (let i = 0; i < 2; i++)
      await applyOutcome(ctx, await loadPayment(ctx, res.body.id), account, claim, 'notification');
    assert.equal((await loadPayment(ctx, res.body.id)).status, 'processing');
    assert.deepEqual(
      (await alertsOf(res.body.id)).map((a) => a.kind),
      ['amount_mismatch'],
    );
    // The sale's own amount is its success.
    const right = { kind: 'succeeded', amount: { value: 4557, currency: 'EUR' } } as const;
    await applyOutcome(ctx, await loadPayment(ctx, res.body.id), account, right, 'notification');
    assert.equal((await loadPayment(ctx, res.body.id)).status, 'succeeded');
    // On a sale already failed, such a charge is reversed at the provider, as any late success is.
    const failed = await createPayment(tg, merchant.terminalKey, scanPayment(4551)).expect(201);
    assert.equal(failed.body.status, 'failed');
    await applyOutcome(ctx, await loadPayment(ctx, failed.body.id), account, claim, 'notification');
    assert.equal((await loadPayment(ctx, failed.body.id)).status, 'failed');
    assert.deepEqual((await simulatorCalls(tg, failed.body.id))['/v1/cancel'], 1);
  });

  test('forged, stale and malformed notifications are rejected and change nothing', async () => {
    const res = await createPayment(tg, merchant.terminalKey, scanPayment(4457)).expect(201);
    const id = res.body.id;
    const body = paymentNote(id, 'succeeded');
    const raw = JSON.stringify(body);
    const forged = signSandbox(Buffer.from('not the secret'), raw);
    await notify(body, forged).expect(401);
    const stale = signSandbox(
      sandboxSecret(tg.gateway.ctx.sandbox.seed),
      raw,
      new Date(Date.now() - 3_600_000),
    );
    await notify(body, stale).expect(401);
    await notify(body, 't=1,v1=zz').expect(401);
    // A true signature with anything after it, or a time written otherwise, is not one we sent.
    const now = signSandbox(sandboxSecret(tg.gateway.ctx.sandbox.seed), raw, new Date());
    const [t, v1] = now.split(',');
    for (const header of [`${now}zz`, `${now}0`, `${t}.0,${v1}`, `${t},${v1.slice(0, -1)}`])
      await notify(body, header).expect(401);
    const secret = sandboxSecret(tg.gateway.ctx.sandbox.seed);
    await tg.http
      .post(`/webhooks/sandbox/${merchant.accountId}`)
      .set('Sandbox-Signature', signSandbox(secret, '{not json'))
      .send('{not json')
      .expect(400);
    // Signed, yet not what the protocol says: refused in the provider's way (once, 500s).
    for (const malformed of [
      { type: 'payment', payment: { request_id: id, status: 'succeeded' } },
      { ...body, payment: { ...body.payment, status: 'bogus' } },
      { ...body, payment: { ...body.payment, transaction_id: 'x'.repeat(8000) } },
      null,
    ]) {
      const answer = await notify(malformed as object);
      assert.equal(answer.status, 400, JSON.stringify(malformed));
      assert.equal(answer.body.error.type, 'invalid_request');
      assert.equal(answer.body.error.code, 'notification_invalid');
    }
    // Our own protocol, so refused in API.md's error shape, with the request's id.
    const refused = await notify(body, forged);
    assert.equal(refused.body.error.type, 'authentication');
    assert.equal(refused.body.error.code, 'signature_invalid');
    assert.equal(refused.body.error.request_id, refused.headers['request-id']);
    const nobody = await tg.http.post('/webhooks/sandbox/pva_doesNotExist').send(raw).expect(404);
    assert.equal(nobody.body.error.type, 'not_found');
    assert.match(nobody.body.error.request_id, /^req_/);
    const { rows } = await db().query<{ status: string }>('SELECT status FROM payments WHERE id = $1', [id]);
    assert.equal(rows[0].status, 'processing');
  });

  test('a notification body is read only for an account that exists, and only while it keeps coming', async () => {
    const port = Number(new URL(tg.url).port);
    /** Sends the head of a 200 kB body and then nothing: what comes back, and when. */
    const stalled = (path: string) =>
      new Promise<{ status?: number; closedAfterMs: number }>((resolve) => {
        const started = Date.now();
        const req = http.request({
          host: '127.0.0.1',
          port,
          method: 'POST',
          path,
          headers: { 'content-type': 'application/json', 'content-length': 200_000 },
        });
        req.on('response', (res) => {
          res.resume();
          resolve({ status: res.statusCode, closedAfterMs: Date.now() - started });
          req.destroy();
        });
        req.on('error', () => resolve({ closedAfterMs: Date.now() - started }));
        req.on('close', () => resolve({ closedAfterMs: Date.now() - started }));
        req.write('{"type":"payment",');
      });
    // No such account: answered at once, the body never waited for.
    const nobody = await stalled('/webhooks/sandbox/pva_doesNotExist');
    assert.equal(nobody.status, 404);
    assert.ok(nobody.closedAfterMs < 2_000, `${nobody.closedAfterMs} ms`);
    // A real account: a body that stops coming is dropped with its connection after 10 s.
    const trickled = await stalled(`/webhooks/sandbox/${merchant.accountId}`);
    assert.equal(trickled.status, undefined, 'no answer to a body never finished');
    assert.ok(
      trickled.closedAfterMs >= 9_000 && trickled.closedAfterMs < 15_000,
      `${trickled.closedAfterMs} ms`,
    );
    // Larger than any notification: refused in the provider's form.
    const large = await tg.http
      .post(`/webhooks/sandbox/${merchant.accountId}`)
      .set('content-type', 'application/json')
      .send(`{"type":"${'x'.repeat(300_000)}"}`);
    assert.equal(large.status, 400);
  });

  test('a verified notification for an unknown payment is acknowledged', async () => {
    await notify(paymentNote('pay_neverHeardOfIt', 'succeeded')).expect(200);
  });
});

describe('what a provider says of a refund that the ledger cannot take as it is', () => {
  /** The open alerts about one refund. */
  async function refundAlerts(refundId: string): Promise<string[]> {
    const alerts = await tg.http
      .get('/v1/admin/alerts?limit=100')
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(200);
    return alerts.body.data
      .filter((a: { refund_id: string }) => a.refund_id === refundId)
      .map((a: { kind: string }) => a.kind);
  }

  test('a refund the provider reports as paid for another amount is raised for an operator', async () => {
    const paid = await createPayment(tg, merchant.secretKey, scanPayment(4700)).expect(201);
    const { refund } = sandboxAdapter;
    sandboxAdapter.refund = async () => ({ kind: 'succeeded', amount: { value: 1, currency: 'EUR' } });
    try {
      const res = await createRefund(tg, merchant.secretKey, paid.body.id, {
        amount: { value: 1500, currency: 'EUR' },
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.status, 'succeeded');
      assert.deepEqual(await refundAlerts(res.body.id), ['refund_amount_mismatch']);
    } finally {
      sandboxAdapter.refund = refund;
    }
  });

  test('a success reported for a refund that failed here is raised for an operator, not dropped', async () => {
    const paid = await createPayment(tg, merchant.secretKey, scanPayment(4800)).expect(201);
    const { refund } = sandboxAdapter;
    sandboxAdapter.refund = async () => ({
      kind: 'failed',
      failure: { code: 'provider_error', message: 'refused', provider_code: 'X' },
    });
    let refundId: string;
    try {
      const res = await createRefund(tg, merchant.secretKey, paid.body.id).expect(201);
      assert.equal(res.body.status, 'failed');
      refundId = res.body.id;
    } finally {
      sandboxAdapter.refund = refund;
    }
    // As a provider's notification of it is applied.
    const after = await applyRefundOutcome(tg.gateway.ctx, refundId, { kind: 'succeeded' }, 'notification');
    assert.equal(after.status, 'failed', 'what the merchant was told stands until a person looks');
    assert.deepEqual(await refundAlerts(refundId), ['late_refund_success']);
  });
});

describe('merchant webhooks', () => {
  interface Delivery {
    id: string;
    status: string;
    attempts: number;
    next_attempt_at: string | null;
    updated_at: string;
  }

  /**
   * A local receiver answering with `handle`, and an endpoint of the merchant's pointing at it:
   * `close` it when done.
   */
  async function receiver(handle: http.RequestListener, events = ['payment.succeeded']) {
    const server = http.createServer(handle);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`;
    const endpoint = await tg.http
      .post('/v1/webhook-endpoints')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ url, events })
      .expect(201);
    return {
      endpoint: endpoint.body as { id: string; secret: string },
      close: () => server.close(),
      /** The endpoint's deliveries, as its merchant lists them. */
      deliveries: async () =>
        (
          await tg.http
            .get(`/v1/webhook-endpoints/${endpoint.body.id}/deliveries`)
            .set('Authorization', `Bearer ${merchant.secretKey}`)
            .expect(200)
        ).body.data as Delivery[],
    };
  }

  test('a delivery is tried for three days, soon at first and then every hour, before it fails', () => {
    const waits = Array.from({ length: DELIVERY_ATTEMPTS - 1 }, (_, i) => deliveryWaitMs(i + 1));
    const total = waits.reduce((a, b) => a + b, 0);
    assert.equal(DELIVERY_WINDOW_MS, 3 * 24 * 3_600_000);
    assert.ok(total >= DELIVERY_WINDOW_MS && total < DELIVERY_WINDOW_MS + 3_600_000, `${total} ms in all`);
    assert.deepEqual(waits.slice(0, 3), [2_000, 6_000, 14_000]);
    assert.equal(Math.max(...waits), 3_600_000);
  });

  test('events are delivered signed, retried after a failure, and listed as deliveries', async () => {
    const received: { body: string; signature: string }[] = [];
    const failedOnce = new Set<string>();
    const hooks = await receiver(
      (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
          // Every event's first attempt fails, so each delivery must be retried once.
          const eventId = JSON.parse(Buffer.concat(chunks).toString()).id as string;
          if (!failedOnce.has(eventId)) {
            failedOnce.add(eventId);
            res.writeHead(500).end();
            return;
          }
          received.push({
            body: Buffer.concat(chunks).toString(),
            signature: String(req.headers['tillbridge-signature']),
          });
          res.writeHead(204).end();
        });
      },
      ['payment.succeeded', 'refund.succeeded'],
    );
    try {
      assert.match(hooks.endpoint.secret, /^whsec_/);
      const payment = await createPayment(tg, merchant.secretKey, scanPayment(4500)).expect(201);
      // Between its tries a delivery says when the next one is due: 2 s after the first failed.
      const waiting = await eventually(async () =>
        (await hooks.deliveries()).find((d) => d.status === 'pending' && d.attempts === 1),
      );
      assert.equal(
        Date.parse(String(waiting.next_attempt_at)) - Date.parse(waiting.updated_at),
        2000,
        JSON.stringify(waiting),
      );
      const got = await eventually(
        async () => received.find((r) => JSON.parse(r.body).data.object.id === payment.body.id),
        20_000,
        'webhook',
      );
      const event = JSON.parse(got.body);
      assert.equal(event.type, 'payment.succeeded');
      assert.match(event.id, /^evt_/);
      assert.equal(event.data.object.status, 'succeeded');
      const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(got.signature) ?? [];
      assert.ok(t && v1, got.signature);
      assert.equal(v1, createHmac('sha256', hooks.endpoint.secret).update(`${t}.${got.body}`).digest('hex'));
      const deliveries = await eventually(async () =>
        (await hooks.deliveries()).find((d) => d.status === 'succeeded'),
      );
      assert.equal(deliveries.attempts, 2, 'the first attempt got a 500 and was retried');
      assert.equal(deliveries.next_attempt_at, null);
      // Its job runs on the three days' schedule, and keeps one stack, not one a try.
      const job = await tg.gateway.ctx.queues.deliver.getJob(`deliver:${deliveries.id}`);
      assert.ok(job);
      assert.equal(job.opts.attempts, DELIVERY_ATTEMPTS);
      assert.equal((job.opts.backoff as { type: string }).type, 'capped');
      assert.equal(job.opts.stackTraceLimit, 1);
      assert.ok(job.stacktrace.length <= 1);
    } finally {
      hooks.close();
    }
  });

  test('an endpoint that answers 2xx with a body of megabytes has its event delivered, once', async () => {
    let calls = 0;
    const hooks = await receiver((req, res) => {
      calls++;
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<p>thanks</p>'.repeat(200_000));
      });
    });
    try {
      await createPayment(tg, merchant.secretKey, scanPayment(4510)).expect(201);
      const delivery = await eventually(
        async () => (await hooks.deliveries()).find((d) => d.attempts > 0),
        20_000,
      );
      assert.equal(delivery.status, 'succeeded', JSON.stringify(delivery));
      assert.equal(delivery.attempts, 1);
      assert.equal(calls, 1);
    } finally {
      hooks.close();
    }
  });

  test('an endpoint created without events gets every event, and can be read back without its secret', async () => {
    const created = await tg.http
      .post('/v1/webhook-endpoints')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .send({ url: 'http://127.0.0.1:9/all' })
      .expect(201);
    assert.match(created.body.secret, /^whsec_/);
    assert.deepEqual(created.body.events, [...WEBHOOK_EVENTS]);
    const read = await tg.http
      .get(`/v1/webhook-endpoints/${created.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    const { secret: _, ...shown } = created.body;
    assert.deepEqual(read.body, shown);
    const stranger = await setupMerchant(tg, 'Another shop');
    const hidden = await tg.http
      .get(`/v1/webhook-endpoints/${created.body.id}`)
      .set('Authorization', `Bearer ${stranger.secretKey}`)
      .expect(404);
    assert.equal(hidden.body.error.type, 'not_found');
  });

  test('a merchant has a delivery sent again: one that ended, and one waiting for its next try', async () => {
    const bodies: string[] = [];
    let answer = 204;
    const hooks = await receiver((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        bodies.push(Buffer.concat(chunks).toString());
        res.writeHead(answer).end();
      });
    });
    try {
      const { deliveries } = hooks;
      const again = (deliveryId: string, key = merchant.secretKey, body: object = {}) =>
        tg.http
          .post(`/v1/webhook-endpoints/${hooks.endpoint.id}/deliveries/${deliveryId}/retry`)
          .set('Authorization', `Bearer ${key}`)
          .send(body);
      await createPayment(tg, merchant.secretKey, scanPayment(4620)).expect(201);
      const [done] = await eventually(async () => {
        const list = await deliveries();
        return list[0]?.status === 'succeeded' ? list : undefined;
      }, 20_000);
      // Ended: received, and lost by the merchant. Sent again, the same event.
      const res = await again(done.id).expect(202);
      assert.equal(res.body.id, done.id);
      assert.equal(res.body.status, 'pending');
      await eventually(async () => bodies.length === 2 || undefined, 20_000, 'the delivery sent again');
      assert.equal(bodies[1], bodies[0]);
      assert.equal(
        (await eventually(async () => (await deliveries()).find((d) => d.attempts === 2)))?.status,
        'succeeded',
      );

      // Waiting for its next try after two failures (6 s away): tried at once, not after its back-off.
      answer = 500;
      await createPayment(tg, merchant.secretKey, scanPayment(4621)).expect(201);
      const failing = await eventually(async () =>
        (await deliveries()).find((d) => d.id !== done.id && d.attempts >= 2),
      );
      // Once its job waits (bull moves it after the attempt's row is written).
      await eventually(
        async () =>
          (await (await tg.gateway.ctx.queues.deliver.getJob(`deliver:${failing.id}`))?.getState()) ===
          'delayed',
      );
      answer = 204;
      const triesBefore = bodies.length;
      await again(failing.id).expect(202);
      await eventually(async () => bodies.length > triesBefore || undefined, 1_500, 'a try at once');

      // Another merchant's, an unknown one, and a body are refused.
      const stranger = await setupMerchant(tg, 'Nosy shop');
      assert.equal((await again(done.id, stranger.secretKey)).status, 404);
      assert.equal((await again('del_nothing')).status, 404);
      assert.equal((await again(done.id, merchant.secretKey, { now: true })).status, 400);
    } finally {
      hooks.close();
    }
  });

  test('a delivery sent again while its last try is under way: that try failing does not end it', async () => {
    const answers: number[] = [];
    let sentAgain: Promise<unknown> | undefined;
    const hooks = await receiver((req, res) => {
      req.resume();
      req.on('end', async () => {
        if (answers.length === 1) {
          // The merchant asks again while this, the delivery's last try, is still waiting for us.
          sentAgain = tg.http
            .post(`/v1/webhook-endpoints/${hooks.endpoint.id}/deliveries/${lastTry.id}/retry`)
            .set('Authorization', `Bearer ${merchant.secretKey}`)
            .expect(202);
          await sentAgain;
          answers.push(500);
          res.writeHead(500).end();
          return;
        }
        answers.push(204);
        res.writeHead(204).end();
      });
    });
    const { ctx } = tg.gateway;
    let lastTry: Delivery = { id: '', status: '', attempts: 0, next_attempt_at: null, updated_at: '' };
    try {
      await createPayment(tg, merchant.secretKey, scanPayment(4622)).expect(201);
      lastTry = await eventually(async () =>
        (await hooks.deliveries()).find((d) => d.status === 'succeeded'),
      );
      // As if its three days were nearly over: pending, with one try left, made here while the
      // queue stands still, so the job the merchant's request queues runs only after that try.
      await ctx.db.query(`UPDATE webhook_deliveries SET status = 'pending' WHERE id = $1`, [lastTry.id]);
      await ctx.queues.deliver.pause(true);
      try {
        await deliver(ctx, lastTry.id, null);
      } catch {
        // The try failed, as the receiver answered it.
      } finally {
        await ctx.queues.deliver.resume(true);
      }
      await sentAgain;
      assert.deepEqual(answers.slice(0, 2), [204, 500]);
      const ended = await eventually(async () => {
        const found = (await hooks.deliveries()).find((d) => d.id === lastTry.id);
        return found?.status === 'pending' ? undefined : found;
      }, 20_000);
      assert.equal(ended?.status, 'succeeded', 'the try the merchant asked for was made');
      assert.deepEqual(answers, [204, 500, 204]);
    } finally {
      hooks.close();
    }
  });

  test('a delivery whose job was lost is queued again by the sweeper; a deleted endpoint gets no more', async () => {
    const bodies: string[] = [];
    const hooks = await receiver((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        bodies.push(Buffer.concat(chunks).toString());
        res.writeHead(204).end();
      });
    });
    const ctx = tg.gateway.ctx;
    try {
      await createPayment(tg, merchant.secretKey, scanPayment(4600)).expect(201);
      await eventually(async () => bodies.length === 1 || undefined, 20_000, 'first delivery');
      const { rows } = await ctx.db.query<{ id: string }>(
        'SELECT id FROM webhook_deliveries WHERE endpoint_id = $1',
        [hooks.endpoint.id],
      );
      const deliveryId = rows[0].id;
      // As if Redis never took the job: the delivery is pending, and no job exists for it.
      const forget = async () => {
        await (await ctx.queues.deliver.getJob(`deliver:${deliveryId}`))?.remove();
        await ctx.db.query(
          "UPDATE webhook_deliveries SET status = 'pending', updated_at = now() - interval '1 minute' WHERE id = $1",
          [deliveryId],
        );
      };
      await forget();
      assert.equal(await requeuePendingDeliveries(ctx), 1);
      await eventually(async () => bodies.length === 2 || undefined, 20_000, 'the lost delivery, sent again');
      assert.equal(bodies[1], bodies[0]);

      await tg.http
        .delete(`/v1/webhook-endpoints/${hooks.endpoint.id}`)
        .set('Authorization', `Bearer ${merchant.secretKey}`)
        .expect(200);
      await forget();
      await requeuePendingDeliveries(ctx);
      const stopped = await eventually(async () => {
        const r = await ctx.db.query<{ status: string; last_error: string }>(
          'SELECT status, last_error FROM webhook_deliveries WHERE id = $1',
          [deliveryId],
        );
        return r.rows[0].status === 'failed' ? r.rows[0] : undefined;
      });
      assert.equal(stopped.last_error, 'the endpoint was deleted');
      assert.equal(bodies.length, 2, 'nothing more reached the deleted endpoint');
    } finally {
      hooks.close();
    }
  });
});
