/**
 * The adapter against the simulated Antom over real HTTP: every magic outcome of API.md in both
 * modes, inquiry, cancel, refund and inquiryRefund, the one identical resend, untrusted answers,
 * the documented variants, a sandbox restart, and settlement files.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { alipayAdapter } from '../adapters/alipay/adapter.ts';
import { send } from '../adapters/alipay/client.ts';
import type { AlipayAccount } from '../adapters/alipay/credentials.ts';
import { type Json, payBody } from '../adapters/alipay/mapping.ts';
import {
  eventually,
  type Harness,
  paymentRequest,
  refundRequest,
  startHarness,
} from '../adapters/alipay/simulator/harness.ts';
import { startAlipaySimulator } from '../adapters/alipay/simulator/index.ts';
import type { AccountContext, PaymentOutcome, PaymentRequest, SettlementLine } from '../adapters/contract.ts';

const eur = (value: number) => ({ value, currency: 'EUR' });

function scanPayment(value: number, extra: Partial<PaymentRequest> = {}): PaymentRequest {
  return paymentRequest({ amount: eur(value), ...extra });
}

function qrPayment(value: number): PaymentRequest {
  return paymentRequest({ amount: eur(value), mode: 'qr', payment_code: undefined });
}

async function until(
  h: Harness,
  payment: PaymentRequest,
  kind: PaymentOutcome['kind'],
  timeoutMs = 3000,
): Promise<PaymentOutcome> {
  return eventually(async () => {
    const outcome = await alipayAdapter.inquire(h.account, payment);
    return outcome.kind === kind ? outcome : undefined;
  }, timeoutMs);
}

function failureCode(outcome: PaymentOutcome): string | undefined {
  return outcome.kind === 'failed' ? outcome.failure.code : undefined;
}

async function scanQr(outcome: PaymentOutcome): Promise<string> {
  assert.equal(outcome.kind, 'pending');
  const url = outcome.kind === 'pending' ? outcome.qr_code?.data : undefined;
  assert.ok(url);
  const page = await fetch(url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /Pay now/);
  const paid = await fetch(url, { method: 'POST' });
  assert.equal(paid.status, 200);
  return url;
}

describe('alipay adapter ⇄ simulator, UPM (customer shows the code)', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({ time_scale: 0.1 });
  });
  after(() => h.close());

  it('00–50: paid at once with FX, wallet and paymentId; notification follows', async () => {
    const payment = scanPayment(1999);
    const outcome = await alipayAdapter.pay(h.account, payment);
    assert.equal(outcome.kind, 'succeeded');
    assert.ok(outcome.kind === 'succeeded');
    assert.deepEqual(outcome.customer_amount, { value: 15420, currency: 'CNY' });
    assert.equal(outcome.exchange_rate, '7.7140');
    assert.equal(outcome.wallet_psp, 'ALIPAYCN');
    assert.deepEqual(outcome.settlement_amount, eur(1999));
    assert.match(outcome.provider_reference ?? '', /^\d{22}I\d{10}$/);
    const event = await eventually(() =>
      h.received.find(
        (r) =>
          r.ok && r.event.kind === 'payment' && r.event.provider_request_id === payment.provider_request_id,
      ),
    );
    assert.ok(event.ok && event.event.kind === 'payment' && event.event.outcome.kind === 'succeeded');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
  });

  it('51: declined, insufficient funds', async () => {
    const payment = scanPayment(2051);
    assert.equal(failureCode(await alipayAdapter.pay(h.account, payment)), 'insufficient_funds');
    assert.equal(failureCode(await alipayAdapter.inquire(h.account, payment)), 'insufficient_funds');
  });

  it('52: U PAYMENT_IN_PROCESS, PROCESSING on inquiry, then SUCCESS and a notification', async () => {
    const payment = scanPayment(2052);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'pending');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'pending');
    await until(h, payment, 'succeeded');
    await eventually(() =>
      h.received.find(
        (r) =>
          r.ok && r.event.kind === 'payment' && r.event.provider_request_id === payment.provider_request_id,
      ),
    );
  });

  it('53: U, then FAIL (the customer gave up) with a failure notification', async () => {
    const payment = scanPayment(2053);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'pending');
    const failed = await until(h, payment, 'failed');
    assert.equal(failureCode(failed), 'user_canceled');
    const note = await eventually(() =>
      h.received.find(
        (r) =>
          r.ok && r.event.kind === 'payment' && r.event.provider_request_id === payment.provider_request_id,
      ),
    );
    assert.ok(note.ok && note.event.kind === 'payment' && note.event.outcome.kind === 'failed');
  });

  it('54: paid but no answer → unknown (reached); inquiry finds SUCCESS', async () => {
    const payment = scanPayment(2054);
    const outcome = await alipayAdapter.pay(h.account, payment);
    assert.equal(outcome.kind, 'unknown');
    assert.ok(outcome.kind === 'unknown' && outcome.reached);
    // The client's own timeout, whatever the time scale: an early drop would play a reset instead.
    assert.match(outcome.reason, /no answer within 5000 ms/);
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
  });

  it('55: HTTP 500 first with nothing recorded (ORDER_NOT_EXIST), the identical resend succeeds', async () => {
    const payment = scanPayment(2055);
    const first = await alipayAdapter.pay(h.account, payment);
    assert.deepEqual(first, { kind: 'unknown', reason: 'HTTP 500 from Antom pay', reached: true });
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'not_found');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'not_found');
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'succeeded');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
  });

  it('56: invalid payment code', async () => {
    assert.equal(failureCode(await alipayAdapter.pay(h.account, scanPayment(2056))), 'invalid_payment_code');
  });

  it('57: PROCESSING until cancelled; cancel S; then CANCELLED', async () => {
    const payment = scanPayment(2057);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'pending');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'pending');
    assert.deepEqual(await alipayAdapter.cancel(h.account, payment), { kind: 'canceled' });
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'canceled');
    assert.deepEqual(
      await alipayAdapter.cancel(h.account, payment),
      { kind: 'canceled' },
      'cancel is idempotent',
    );
  });

  it('the same paymentRequestId returns the stored result; a different body gets REPEAT_REQ_INCONSISTENT → unknown', async () => {
    const payment = scanPayment(1000);
    const first = await alipayAdapter.pay(h.account, payment);
    const again = await alipayAdapter.pay(h.account, payment);
    assert.equal(first.kind, 'succeeded');
    assert.deepEqual(again, first);
    const changed = await alipayAdapter.pay(h.account, { ...payment, amount: eur(1001) });
    assert.equal(changed.kind, 'unknown');
    assert.match(changed.kind === 'unknown' ? changed.reason : '', /REPEAT_REQ_INCONSISTENT/);
    assert.equal(h.sim.payment(payment.provider_request_id)?.amount.value, 1000, 'the original stands');
  });

  it('cancel of a pay that never arrived: not found (not a cancellation), and the simulator closes the id', async () => {
    const payment = scanPayment(1200);
    assert.equal((await alipayAdapter.cancel(h.account, payment)).kind, 'not_found');
    assert.equal(failureCode(await alipayAdapter.pay(h.account, payment)), 'user_canceled');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'not_found');
  });

  it('cancel of a paid payment reverses it', async () => {
    const payment = scanPayment(1300);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'succeeded');
    assert.deepEqual(await alipayAdapter.cancel(h.account, payment), { kind: 'canceled' });
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'canceled');
  });

  it('refund: partial, idempotent, over-refund refused, inquiryRefund, and refunds without a known paymentId', async () => {
    const payment = scanPayment(5000);
    const paid = await alipayAdapter.pay(h.account, payment);
    assert.ok(paid.kind === 'succeeded');
    const withId = { ...payment, provider_reference: paid.provider_reference };
    const first = refundRequest(withId, { amount: eur(2000) });
    const refunded = await alipayAdapter.refund(h.account, first);
    assert.equal(refunded.kind, 'succeeded');
    assert.deepEqual(
      await alipayAdapter.refund(h.account, first),
      refunded,
      'same refundRequestId, same result',
    );
    assert.equal((await alipayAdapter.inquireRefund(h.account, first)).kind, 'succeeded');
    // The core never learnt the paymentId: the adapter asks Antom for it.
    const second = refundRequest(payment, { amount: eur(3000) });
    assert.equal((await alipayAdapter.refund(h.account, second)).kind, 'succeeded');
    const tooMuch = refundRequest(withId, { amount: eur(1) });
    const refused = await alipayAdapter.refund(h.account, tooMuch);
    assert.equal(refused.kind === 'failed' && refused.failure.code, 'amount_limit_exceeded');
    assert.equal((await alipayAdapter.inquireRefund(h.account, tooMuch)).kind, 'failed');
    assert.equal((await alipayAdapter.inquireRefund(h.account, refundRequest(withId))).kind, 'not_found');
    const changed = await alipayAdapter.refund(h.account, { ...first, amount: eur(1999) });
    assert.equal(changed.kind, 'unknown', 'REPEAT_REQ_INCONSISTENT is not a final failure');
  });

  it('async refunds: S with isAsyncRefund → pending, then inquiryRefund SUCCESS', async () => {
    h.sim.setSwitches({ async_refunds: true });
    try {
      const payment = scanPayment(800);
      const paid = await alipayAdapter.pay(h.account, payment);
      assert.ok(paid.kind === 'succeeded');
      const refund = refundRequest({ ...payment, provider_reference: paid.provider_reference });
      assert.equal((await alipayAdapter.refund(h.account, refund)).kind, 'pending');
      await eventually(async () =>
        (await alipayAdapter.inquireRefund(h.account, refund)).kind === 'succeeded' ? true : undefined,
      );
    } finally {
      h.sim.setSwitches({ async_refunds: false });
    }
  });
});

describe('alipay adapter ⇄ simulator, Order Code (till shows a QR)', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({ time_scale: 0.1 });
  });
  after(() => h.close());

  it('pay returns the wallet page URL as QR; a POST to it pays; the notification and inquiry agree', async () => {
    const payment = qrPayment(1999);
    const created = await alipayAdapter.pay(h.account, payment);
    assert.equal(created.kind, 'pending');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'pending');
    const url = await scanQr(created);
    assert.ok(url.startsWith(`${h.sim.url}/wallet/`));
    const note = await eventually(() =>
      h.received.find(
        (r) =>
          r.ok && r.event.kind === 'payment' && r.event.provider_request_id === payment.provider_request_id,
      ),
    );
    assert.ok(note.ok && note.event.kind === 'payment' && note.event.outcome.kind === 'succeeded');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
    assert.doesNotMatch(await (await fetch(url)).text(), /Pay now/, 'a paid code cannot be paid twice');
  });

  const digits: [number, string, string | undefined][] = [
    [2051, 'failed', 'insufficient_funds'],
    [2052, 'succeeded', undefined],
    [2053, 'failed', 'user_canceled'],
    [2056, 'failed', 'invalid_payment_code'],
  ];
  for (const [value, kind, code] of digits) {
    it(`digits ${value % 100} apply when the customer pays the QR: ${kind}${code ? ` ${code}` : ''}`, async () => {
      const payment = qrPayment(value);
      await scanQr(await alipayAdapter.pay(h.account, payment));
      const outcome = await until(h, payment, kind as PaymentOutcome['kind']);
      assert.equal(failureCode(outcome), code);
    });
  }

  it('digits 57: scanned, then PROCESSING until the merchant cancels', async () => {
    const payment = qrPayment(2057);
    await scanQr(await alipayAdapter.pay(h.account, payment));
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'pending');
    assert.deepEqual(await alipayAdapter.cancel(h.account, payment), { kind: 'canceled' });
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'canceled');
  });

  it('digits 55: the code creation fails once with HTTP 500, the identical resend returns the code', async () => {
    const payment = qrPayment(2055);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'unknown');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'not_found');
    const created = await alipayAdapter.pay(h.account, payment);
    await scanQr(created);
    await until(h, payment, 'succeeded');
  });

  it('an unpaid code closes at paymentExpiryTime (FAIL, expired)', async () => {
    const now = new Date();
    const payment = paymentRequest({
      amount: eur(1999),
      mode: 'qr',
      payment_code: undefined,
      created_at: now,
      expires_at: new Date(now.getTime() + 1500),
    });
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'pending');
    const outcome = await until(h, payment, 'failed', 4000);
    assert.equal(failureCode(outcome), 'expired');
  });
});

describe('alipay adapter: answers that must not be trusted, and variants that must be', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({ time_scale: 0.1 });
  });
  after(() => h.close());
  beforeEach(() =>
    h.sim.setSwitches({
      unsigned_responses: false,
      bad_signatures: false,
      epoch_time: false,
      raw_signature: false,
      numeric_pair: false,
      json_numbers: false,
    }),
  );

  it('an unsigned S is not a success: unknown, and inquiry (signed) then says SUCCESS', async () => {
    h.sim.setSwitches({ unsigned_responses: true });
    const payment = scanPayment(1999);
    const outcome = await alipayAdapter.pay(h.account, payment);
    assert.equal(outcome.kind, 'unknown');
    assert.match(outcome.kind === 'unknown' ? outcome.reason : '', /unsigned S/);
    h.sim.setSwitches({ unsigned_responses: false });
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
  });

  it('an unsigned F is accepted as a final failure', async () => {
    h.sim.setSwitches({ unsigned_responses: true });
    assert.equal(failureCode(await alipayAdapter.pay(h.account, scanPayment(2051))), 'insufficient_funds');
  });

  it('a badly signed answer is not trusted, whatever its status', async () => {
    h.sim.setSwitches({ bad_signatures: true });
    const ok = await alipayAdapter.pay(h.account, scanPayment(1999));
    const declined = await alipayAdapter.pay(h.account, scanPayment(2051));
    assert.equal(ok.kind, 'unknown');
    assert.equal(declined.kind, 'unknown');
    assert.match(declined.kind === 'unknown' ? declined.reason : '', /does not verify/);
  });

  it('a response signed with a different Antom key is not trusted', async () => {
    const other = await startAlipaySimulator({
      seed: Buffer.from('another-seed'),
      latency_ms: 0,
      time_scale: 0.01,
    });
    try {
      const account: AccountContext<AlipayAccount> = {
        ...h.account,
        credentials: { ...h.account.credentials, baseUrl: async () => other.url },
      };
      const outcome = await alipayAdapter.pay(account, scanPayment(1999));
      // The other simulator does not know our key either: SIGNATURE_INVALID arrives unsigned, F.
      assert.equal(outcome.kind, 'failed');
      assert.equal(outcome.kind === 'failed' && outcome.failure.provider_code, 'SIGNATURE_INVALID');
      other.registerClient(h.account.credentials.stored.client_id, h.sim.sandboxMerchantPublicKeyPem);
      const signedByOther = await alipayAdapter.pay(account, scanPayment(1999));
      assert.equal(signedByOther.kind, 'unknown');
    } finally {
      await other.close();
    }
  });

  it('tolerates epoch-ms response-time, raw signatures, numeric pairs and JSON numbers', async () => {
    h.sim.setSwitches({ epoch_time: true, raw_signature: true, numeric_pair: true, json_numbers: true });
    const payment = scanPayment(1999);
    const outcome = await alipayAdapter.pay(h.account, payment);
    assert.equal(outcome.kind, 'succeeded');
    assert.ok(outcome.kind === 'succeeded');
    assert.deepEqual(outcome.customer_amount, { value: 15420, currency: 'CNY' });
    assert.equal(outcome.exchange_rate, '7.714');
    assert.equal((await alipayAdapter.inquire(h.account, payment)).kind, 'succeeded');
  });

  it('the sandbox path prefix works too', async () => {
    const account: AccountContext<AlipayAccount> = {
      ...h.account,
      credentials: {
        ...h.account.credentials,
        stored: { ...h.account.credentials.stored, path_prefix: '/ams/sandbox/api' },
      },
    };
    assert.equal((await alipayAdapter.pay(account, scanPayment(1999))).kind, 'succeeded');
  });

  it("a pay lacking any of Antom's required fields is refused PARAM_ILLEGAL, naming it", async () => {
    const without = (body: Json, path: string): Json => {
      const copy = structuredClone(body);
      const keys = path.split('.');
      const last = keys.pop() as string;
      delete (keys.reduce((node, key) => node[key] as Json, copy) as Record<string, unknown>)[last];
      return copy;
    };
    const complete = (value: number) =>
      payBody(h.account.credentials.stored, scanPayment(value), h.account.notify_url);
    for (const [index, path] of [
      'paymentNotifyUrl',
      'settlementStrategy.settlementCurrency',
      'paymentMethod.paymentMethodId',
      'paymentFactor.inStorePaymentScenario',
      'order.orderAmount',
      'order.merchant.merchantMCC',
      'order.merchant.store.referenceStoreId',
      'order.env.storeTerminalId',
      'order.env.storeTerminalRequestTime',
    ].entries()) {
      const sent = await send(h.account.credentials, 'pay', without(complete(1000 + index), path));
      assert.ok(sent.answered, path);
      assert.equal(sent.result.resultCode, 'PARAM_ILLEGAL', path);
      assert.match(sent.result.resultMessage ?? '', new RegExp(path.replaceAll('.', '\\.')));
    }
    const whole = await send(h.account.credentials, 'pay', complete(1010));
    assert.ok(whole.answered);
    assert.equal(whole.result.resultStatus, 'S');
  });

  it('a request the simulator cannot verify gets F SIGNATURE_INVALID, unsigned', async () => {
    const response = await fetch(`${h.sim.url}/ams/api/v1/payments/pay`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'client-id': h.account.credentials.stored.client_id,
        'request-time': '2024-05-01T10:00:00+02:00',
        signature: 'algorithm=RSA256,keyVersion=1,signature=AAAA',
      },
      body: '{}',
    });
    assert.equal(response.headers.get('signature'), null);
    assert.deepEqual(await response.json(), {
      result: {
        resultCode: 'SIGNATURE_INVALID',
        resultStatus: 'F',
        resultMessage: 'The signature is invalid.',
      },
    });
  });

  it("Antom's signed answer to another request (another sale's, another client's) is not this sale's success", async () => {
    // Between us and Antom, something that answers a pay with a recorded one: Antom signs every
    // client's answers with its one key, so each verifies.
    let recorded: { path: string; headers: http.IncomingHttpHeaders; body: Buffer } | undefined;
    let replay = false;
    const relay = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', async () => {
        if (!replay) recorded = { path: req.url ?? '/', headers: req.headers, body: Buffer.concat(chunks) };
        const sent = recorded as NonNullable<typeof recorded>;
        const { host: _, ...headers } = sent.headers;
        const answer = await fetch(`${h.sim.url}${sent.path}`, {
          method: 'POST',
          headers: headers as Record<string, string>,
          body: new Uint8Array(sent.body),
        });
        res.writeHead(answer.status, Object.fromEntries(answer.headers));
        res.end(Buffer.from(await answer.arrayBuffer()));
      });
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const via = async (accountId: string): Promise<AccountContext<AlipayAccount>> => {
      const { credentials } = await alipayAdapter.configure({ sandbox: true }, h.env, accountId);
      const loaded = alipayAdapter.load(JSON.parse(JSON.stringify(credentials)), h.env, {
        publicOnly: false,
      });
      h.sim.registerClient(loaded.stored.client_id, h.sim.sandboxMerchantPublicKeyPem);
      const url = `http://127.0.0.1:${(relay.address() as AddressInfo).port}`;
      return { ...h.account, account_id: accountId, credentials: { ...loaded, baseUrl: async () => url } };
    };
    try {
      const ours = await via(h.account.account_id);
      const paid = scanPayment(1999);
      assert.equal((await alipayAdapter.pay(ours, paid)).kind, 'succeeded');
      replay = true;
      const another = await alipayAdapter.pay(ours, scanPayment(1999));
      assert.equal(another.kind, 'unknown');
      assert.match(another.kind === 'unknown' ? another.reason : '', /paymentRequestId/);
      // Another merchant's client paid under the very request id this sale then uses.
      replay = false;
      const sameId = scanPayment(1999);
      assert.equal((await alipayAdapter.pay(await via('pva_other_client'), sameId)).kind, 'succeeded');
      replay = true;
      const theirs = await alipayAdapter.pay(ours, sameId);
      assert.equal(theirs.kind, 'unknown');
      assert.match(theirs.kind === 'unknown' ? theirs.reason : '', /client/);
    } finally {
      relay.closeAllConnections();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
    }
  });

  it('a refused connection is unknown with reached: false; a server that hangs up is reached: true', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const refused: AccountContext<AlipayAccount> = {
      ...h.account,
      credentials: { ...h.account.credentials, baseUrl: async () => `http://127.0.0.1:${port}` },
    };
    const outcome = await alipayAdapter.pay(refused, scanPayment(1999));
    assert.equal(outcome.kind, 'unknown');
    assert.equal(outcome.kind === 'unknown' && outcome.reached, false);

    const rude = http.createServer((req) => req.socket.destroy());
    await new Promise<void>((resolve) => rude.listen(0, '127.0.0.1', resolve));
    try {
      const hangsUp: AccountContext<AlipayAccount> = {
        ...h.account,
        credentials: {
          ...h.account.credentials,
          baseUrl: async () => `http://127.0.0.1:${(rude.address() as AddressInfo).port}`,
        },
      };
      const reset = await alipayAdapter.pay(hangsUp, scanPayment(1999));
      assert.equal(reset.kind === 'unknown' && reset.reached, true);
    } finally {
      rude.closeAllConnections();
      await new Promise<void>((resolve) => rude.close(() => resolve()));
    }
  });
});

describe('alipay sandbox survives a restart', () => {
  it('an account configured before a restart works against a new simulator (same seed, same port)', async () => {
    const seed = Buffer.from(`restart-seed-${Date.now()}`);
    const h = await startHarness({ seed, time_scale: 0.1, state_file: undefined });
    const stored = JSON.parse(JSON.stringify(h.account.credentials.stored));
    const payment = scanPayment(2052);
    assert.equal((await alipayAdapter.pay(h.account, payment)).kind, 'pending');
    const oldUrl = h.sim.url;
    await h.close();

    // Same seed, so the default journal path: what a restarted gateway's simulator would use.
    const sim = await startAlipaySimulator({ seed, latency_ms: 0, time_scale: 0.1 });
    try {
      // The port it had, kept beside its journal, so that QR codes it handed out still open.
      assert.equal(sim.url, oldUrl);
      const env = { seed, latency_ms: 0, simulatorUrl: async () => sim.url };
      const account: AccountContext<AlipayAccount> = {
        ...h.account,
        credentials: alipayAdapter.load(stored, env, { publicOnly: false }),
      };
      // Antom never forgets an order: the new simulator still has it, and it decides as scripted.
      assert.notEqual((await alipayAdapter.inquire(account, payment)).kind, 'not_found');
      await eventually(async () =>
        (await alipayAdapter.inquire(account, payment)).kind === 'succeeded' ? true : undefined,
      );
      assert.equal(
        (await alipayAdapter.pay(account, payment)).kind,
        'succeeded',
        'the identical resend gets the stored result',
      );
      assert.equal((await alipayAdapter.pay(account, scanPayment(1999))).kind, 'succeeded');
      const forgetful = await startAlipaySimulator({
        seed,
        latency_ms: 0,
        time_scale: 0.01,
        state_file: null,
      });
      try {
        const blank = {
          ...account,
          credentials: alipayAdapter.load(
            stored,
            { ...env, simulatorUrl: async () => forgetful.url },
            { publicOnly: false },
          ),
        };
        assert.equal(
          (await alipayAdapter.inquire(blank, payment)).kind,
          'not_found',
          'without its journal it would forget',
        );
      } finally {
        await forgetful.close();
      }
    } finally {
      await sim.close();
    }
  });
});

describe('alipay settlement files from the simulator', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({ time_scale: 0.1 });
  });
  after(() => h.close());

  async function lines(date: string, faults = ''): Promise<SettlementLine[]> {
    const account = h.account;
    const file = faults
      ? (
          await fetch(
            `${h.sim.url}/_sim/settlements/${date}?client_id=${account.credentials.stored.client_id}&faults=${faults}`,
          )
        ).body
      : null;
    const stream = file
      ? (await import('node:stream')).Readable.fromWeb(file as import('node:stream/web').ReadableStream)
      : await alipayAdapter.fetchSettlement?.(account, date);
    assert.ok(stream);
    const out: SettlementLine[] = [];
    for await (const chunk of alipayAdapter.parseSettlement(stream)) out.push(...chunk);
    return out;
  }

  it('lists what was paid, refunded and reversed that day; faults are injected on request', async () => {
    const today = new Date().toISOString().slice(0, 10);
    const a = scanPayment(1000);
    const b = scanPayment(2000);
    const c = scanPayment(3000);
    const paidA = await alipayAdapter.pay(h.account, a);
    await alipayAdapter.pay(h.account, b);
    await alipayAdapter.pay(h.account, c);
    await alipayAdapter.pay(h.account, scanPayment(2051));
    assert.ok(paidA.kind === 'succeeded');
    await alipayAdapter.refund(
      h.account,
      refundRequest({ ...a, provider_reference: paidA.provider_reference }, { amount: eur(400) }),
    );
    await alipayAdapter.cancel(h.account, c);

    const good = await lines(today);
    const kinds = good.map((l) => `${l.type}:${l.provider_request_id}:${l.transaction_amount.value}`).sort();
    assert.equal(good.filter((l) => l.type === 'payment').length, 3);
    assert.ok(kinds.includes(`payment:${a.provider_request_id}:1000`));
    assert.ok(
      good.some(
        (l) =>
          l.type === 'refund' &&
          l.transaction_amount.value === 400 &&
          l.original_provider_reference === paidA.provider_reference,
      ),
    );
    assert.ok(good.some((l) => l.type === 'cancel' && l.provider_request_id === c.provider_request_id));
    const lineA = good.find((l) => l.provider_request_id === a.provider_request_id && l.type === 'payment');
    assert.deepEqual(lineA?.fee, eur(18));
    assert.equal(lineA?.provider_reference, paidA.provider_reference);

    assert.equal((await lines(today, 'missing_row')).filter((l) => l.type === 'payment').length, 2);
    const mismatch = await lines(today, 'amount_mismatch');
    assert.ok(mismatch.some((l) => l.type === 'payment' && l.transaction_amount.value % 1000 === 1));
    assert.equal((await lines(today, 'duplicate_row')).length, good.length + 1);
    assert.equal((await lines(today, 'extra_column')).length, good.length);
    await assert.rejects(lines(today, 'truncated'), /<END>/);
    assert.deepEqual(await lines('2001-01-01'), []);
  });
});
