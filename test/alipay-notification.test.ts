/**
 * notifyPayment (alipay.md §3.8, §10): verified over our notify path and the raw body; the exact
 * acknowledgement; duplicates carry the same dedupe key; forged, stale and malformed ones are
 * rejected with no event; the simulator retries on Antom's schedule until acknowledged.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { alipayAdapter } from '../adapters/alipay/adapter.ts';
import { ACK_BODY } from '../adapters/alipay/notification.ts';
import {
  eventually,
  type Harness,
  paymentRequest,
  startHarness,
} from '../adapters/alipay/simulator/harness.ts';
import { NOTIFY_SCHEDULE_S } from '../adapters/alipay/simulator/index.ts';
import type { InboundRequest, NotificationResult } from '../adapters/contract.ts';

/** Alipay's notification fixture (`alipay/ams-java-sdk` requests/notify_s.json). */
const NOTIFY_S =
  '{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success."},"paymentRequestId":"20200303074500020000036648","paymentId":"202003021940108001001885I0204368838","paymentAmount":{"currency":"JPY","value":"200"},"actualPaymentAmount":{"currency":"CNY","value":"1292"},"paymentQuote":{"guaranteed":false,"quoteCurrencyPair":"392/156","quotePrice":0.064622},"paymentCreateTime":"2020-03-02T19:11:19-08:00","paymentTime":"2020-03-02T19:12:11-08:00","pspCustomerInfo":{"displayCustomerId":"buy*@alitest.com","pspCustomerId":"20885028136924G7","pspName":"ALIPAYCN"}}';

describe('alipay notifications', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(() => h.close());

  function inbound(
    body: string,
    headers: Record<string, string>,
    overrides: Partial<InboundRequest> = {},
  ): InboundRequest {
    return {
      method: 'POST',
      path: h.account.notify_path,
      headers,
      raw_body: Buffer.from(body),
      received_at: new Date(),
      ...overrides,
    };
  }

  function signed(body: string, requestTime?: string, path = h.account.notify_path): Record<string, string> {
    return h.sim.signNotification(path, h.account.credentials.stored.client_id, body, requestTime);
  }

  async function handle(request: InboundRequest): Promise<NotificationResult> {
    return alipayAdapter.handleNotification(h.account, request);
  }

  it("verifies Antom's sample notification and answers with exactly the acknowledgement body", async () => {
    const result = await handle(inbound(NOTIFY_S, signed(NOTIFY_S)));
    assert.ok(result.ok);
    assert.equal(result.ack.status, 200);
    assert.equal(
      result.ack.body,
      '{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}',
    );
    assert.equal(result.ack.body, ACK_BODY);
    assert.deepEqual(result.event, {
      kind: 'payment',
      dedupe_key: '202003021940108001001885I0204368838:PAYMENT_RESULT:S',
      provider_request_id: '20200303074500020000036648',
      outcome: {
        kind: 'succeeded',
        amount: { value: 200, currency: 'JPY' },
        provider_reference: '202003021940108001001885I0204368838',
        wallet_psp: 'ALIPAYCN',
        paid_at: new Date('2020-03-03T03:12:11Z'),
        customer_amount: { value: 1292, currency: 'CNY' },
        exchange_rate: '0.064622',
      },
    });
  });

  it('a refund notification is read by its refundStatus: FAIL is a failed refund, PROCESSING still pending', async () => {
    const refundNotice = (refundStatus: string | undefined) =>
      JSON.stringify({
        notifyType: 'REFUND_RESULT',
        result: { resultCode: 'SUCCESS', resultStatus: 'S', resultMessage: 'success' },
        refundRequestId: 're_notified',
        refundId: '20261127194010800100188',
        refundAmount: { currency: 'EUR', value: '500' },
        ...(refundStatus ? { refundStatus } : {}),
      });
    const outcomes: string[] = [];
    for (const refundStatus of ['FAIL', 'PROCESSING', 'SUCCESS', undefined]) {
      const body = refundNotice(refundStatus);
      const result = await handle(inbound(body, signed(body)));
      assert.ok(result.ok && result.event.kind === 'refund', String(refundStatus));
      outcomes.push(result.event.outcome.kind);
    }
    assert.deepEqual(outcomes, ['failed', 'pending', 'succeeded', 'succeeded']);
  });

  it('accepts epoch-ms request-time and raw (un-encoded) signatures', async () => {
    const headers = signed(NOTIFY_S, String(Date.now()));
    const raw = headers.signature.replace(
      /signature=(.*)$/,
      (_, v: string) => `signature=${decodeURIComponent(v)}`,
    );
    const result = await handle(inbound(NOTIFY_S, { ...headers, signature: raw }));
    assert.ok(result.ok, result.ok ? '' : result.reason);
  });

  it('a retry Antom sends as first signed, up to its last one a day later, is taken', async () => {
    for (const hoursAgo of [0.2, 1.4, 9.4, 24.4]) {
      const sentAt = String(Date.now() - hoursAgo * 3_600_000);
      const result = await handle(inbound(NOTIFY_S, signed(NOTIFY_S, sentAt)));
      assert.ok(result.ok, `${hoursAgo} h: ${result.ok ? '' : result.reason}`);
    }
  });

  it('duplicates produce the same dedupe key', async () => {
    const first = await handle(inbound(NOTIFY_S, signed(NOTIFY_S)));
    const second = await handle(inbound(NOTIFY_S, signed(NOTIFY_S)));
    assert.ok(first.ok && second.ok);
    assert.equal(first.event.dedupe_key, second.event.dedupe_key);
  });

  it('PAYMENT_PENDING and failed PAYMENT_RESULT map to pending and failed', async () => {
    const pending = NOTIFY_S.replace('PAYMENT_RESULT', 'PAYMENT_PENDING');
    const p = await handle(inbound(pending, signed(pending)));
    assert.ok(p.ok && p.event.kind === 'payment' && p.event.outcome.kind === 'pending');
    const failed = NOTIFY_S.replace(
      '"resultCode":"SUCCESS","resultStatus":"S"',
      '"resultCode":"USER_BALANCE_NOT_ENOUGH","resultStatus":"F"',
    );
    const f = await handle(inbound(failed, signed(failed)));
    assert.ok(f.ok && f.event.kind === 'payment' && f.event.outcome.kind === 'failed');
    assert.equal(
      f.ok && f.event.kind === 'payment' && f.event.outcome.kind === 'failed' && f.event.outcome.failure.code,
      'insufficient_funds',
    );
    const other = NOTIFY_S.replace('PAYMENT_RESULT', 'CAPTURE_RESULT');
    const o = await handle(inbound(other, signed(other)));
    assert.ok(o.ok && o.event.kind === 'ignored');
  });

  const rejections: [string, () => InboundRequest, RegExp][] = [
    [
      'a tampered body',
      () => inbound(NOTIFY_S.replace('"200"', '"20000"'), signed(NOTIFY_S)),
      /does not verify/,
    ],
    [
      'a re-serialised body',
      () => inbound(JSON.stringify(JSON.parse(NOTIFY_S), null, 1), signed(NOTIFY_S)),
      /does not verify/,
    ],
    [
      'a signature over another path',
      () => inbound(NOTIFY_S, signed(NOTIFY_S, undefined, '/webhooks/alipay/pva_other')),
      /does not verify/,
    ],
    [
      'a missing signature',
      () => {
        const { signature: _omit, ...rest } = signed(NOTIFY_S);
        return inbound(NOTIFY_S, rest);
      },
      /missing/,
    ],
    [
      'another client-id',
      () => inbound(NOTIFY_S, { ...signed(NOTIFY_S), 'client-id': 'SANDBOX_OTHER' }),
      /client-id/,
    ],
    [
      'a stale request-time',
      () => inbound(NOTIFY_S, signed(NOTIFY_S, String(Date.now() - 27 * 3_600_000))),
      /stale/,
    ],
    [
      'a request-time from the future',
      () => inbound(NOTIFY_S, signed(NOTIFY_S, String(Date.now() + 3_600_000))),
      /stale/,
    ],
    ['an unreadable request-time', () => inbound(NOTIFY_S, signed(NOTIFY_S, 'tomorrow')), /neither ISO-8601/],
    ['a body that is not JSON', () => inbound('notify=1', signed('notify=1')), /not JSON/],
    [
      'a body without notifyType',
      () => inbound('{"result":{"resultStatus":"S"}}', signed('{"result":{"resultStatus":"S"}}')),
      /lacks/,
    ],
    ['a GET', () => inbound(NOTIFY_S, signed(NOTIFY_S), { method: 'GET' }), /POST/],
    [
      // Stored, it would not fit the ledger's index on provider references (a 500 once).
      'a paymentId of 8,000 characters',
      () => {
        const body = NOTIFY_S.replace('202003021940108001001885I0204368838', 'a'.repeat(8000));
        return inbound(body, signed(body));
      },
      /too long/,
    ],
    // Each made the dedupe key too long for its index (a 500), or a NUL the ledger refuses.
    ...(
      [
        ['a notifyType of 8,000 characters', NOTIFY_S.replace('PAYMENT_RESULT', 'P'.repeat(8000))],
        [
          'a resultStatus of 8,000 characters',
          NOTIFY_S.replace('"resultStatus":"S"', `"resultStatus":"${'S'.repeat(8000)}"`),
        ],
        ['a NUL byte in paymentRequestId', NOTIFY_S.replace('"20200303074500020000036648"', '"2020\\u0000"')],
      ] as const
    ).map(([name, body]): [string, () => InboundRequest, RegExp] => [
      name,
      () => inbound(body, signed(body)),
      /lacks|too long|control character/,
    ]),
  ];
  for (const [name, request, reason] of rejections) {
    it(`rejects ${name}, with no event and a non-success answer`, async () => {
      const result = await handle(request());
      assert.equal(result.ok, false);
      assert.ok(!result.ok);
      assert.match(result.reason, reason);
      assert.ok(result.ack.status >= 400);
      assert.doesNotMatch(result.ack.body ?? '', /"resultStatus":"S"/);
      assert.equal('event' in result, false);
    });
  }

  it('keeps no fact it cannot trust: a negative amount, a rate of a thousand digits, a PSP name with a NUL', async () => {
    const odd = NOTIFY_S.replace('{"currency":"CNY","value":"1292"}', '{"currency":"CNY","value":"-5"}')
      .replace('"quotePrice":0.064622', `"quotePrice":"1.${'1'.repeat(1000)}"`)
      .replace('"pspName":"ALIPAYCN"', '"pspName":"ALIPAY\\u0000CN"');
    const result = await handle(inbound(odd, signed(odd)));
    assert.ok(result.ok && result.event.kind === 'payment');
    assert.deepEqual(result.event.outcome, {
      kind: 'succeeded',
      amount: { value: 200, currency: 'JPY' },
      provider_reference: '202003021940108001001885I0204368838',
      paid_at: new Date('2020-03-03T03:12:11Z'),
    });
  });

  it('the simulator retries until acknowledged, on the time-scaled schedule', async () => {
    assert.deepEqual([...NOTIFY_SCHEDULE_S], [0, 120, 600, 600, 3600, 7200, 21600, 54000]);
    h.failNext.count = 2;
    const payment = paymentRequest({ amount: { value: 1500, currency: 'EUR' } });
    const started = Date.now();
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'succeeded');
    // 0 s, 120 s and 600 s at time scale 0.01: the third attempt comes about 7.2 s later.
    await eventually(
      () =>
        h.sim.notifications.find((n) => n.paymentRequestId === payment.provider_request_id && n.acknowledged),
      30_000,
    );
    const attempts = h.sim.notifications.filter((n) => n.paymentRequestId === payment.provider_request_id);
    // The two refused attempts, then retries until one is acknowledged (on a loaded machine an
    // attempt may also time out), and nothing after the acknowledgement.
    assert.deepEqual(
      attempts.slice(0, 2).map((a) => [a.attempt, a.httpStatus, a.acknowledged]),
      [
        [0, 500, false],
        [1, 500, false],
      ],
    );
    const acknowledged = attempts.findIndex((a) => a.acknowledged);
    assert.ok(acknowledged >= 2);
    assert.equal(attempts.length, acknowledged + 1);
    assert.equal(attempts[acknowledged].httpStatus, 200);
    assert.ok(Date.now() - started >= 7000);
    assert.ok(attempts[1].at.getTime() - attempts[0].at.getTime() >= 1150);
  });

  it('the duplicate switch sends each notification twice; both verify with one dedupe key', async () => {
    h.sim.setSwitches({ duplicate_notifications: true });
    try {
      const payment = paymentRequest({ amount: { value: 1600, currency: 'EUR' } });
      await alipayAdapter.pay(h.account, payment);
      const events = await eventually(() => {
        const mine = h.received.filter(
          (r) =>
            r.ok && r.event.kind === 'payment' && r.event.provider_request_id === payment.provider_request_id,
        );
        return mine.length >= 2 ? mine : undefined;
      });
      assert.equal(new Set(events.map((e) => (e.ok ? e.event.dedupe_key : ''))).size, 1);
    } finally {
      h.sim.setSwitches({ duplicate_notifications: false });
    }
  });
});
