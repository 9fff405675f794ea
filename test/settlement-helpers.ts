/** Shared by the settlement tests: sandbox settlement files, imports through the API, waiting for jobs. */
import assert from 'node:assert/strict';
import {
  createPayment,
  createRefund,
  eventually,
  type Merchant,
  scanPayment,
  type TestGateway,
  waitForStatus,
} from './helpers.ts';

export const SANDBOX_HEADER =
  'batch_id,type,transaction_id,original_transaction_id,request_id,amount,currency,settlement_amount,settlement_currency,fee,exchange_rate,settled_at,store_id,wallet_psp';

export interface SandboxLine {
  batch_id?: string;
  type?: string;
  transaction_id: string;
  original_transaction_id?: string;
  request_id?: string;
  amount: number;
  currency?: string;
  settlement_amount?: number;
  settlement_currency?: string;
  fee?: number;
  rate?: string;
  settled_at?: string;
  store_id?: string;
}

export function sandboxCsv(
  lines: SandboxLine[],
  batch = 'SBX-B1',
  date = new Date().toISOString().slice(0, 10),
) {
  const rows = lines.map((l) =>
    [
      l.batch_id ?? batch,
      l.type ?? 'payment',
      l.transaction_id,
      l.original_transaction_id ?? '',
      l.request_id ?? '',
      l.amount,
      l.currency ?? 'EUR',
      l.settlement_amount ?? l.amount,
      l.settlement_currency ?? 'EUR',
      l.fee ?? Math.floor((l.amount * 18 + 500) / 1000),
      l.rate ?? '1',
      l.settled_at ?? `${date}T12:00:00Z`,
      l.store_id ?? '',
      'SANDBOXWALLET',
    ].join(','),
  );
  return `${[SANDBOX_HEADER, ...rows].join('\n')}\n`;
}

export interface PaidPayment {
  id: string;
  amount: number;
  provider_reference: string;
  status: string;
}

/** Payments that succeed at once (last two digits ≤ 50). */
export async function pay(tg: TestGateway, m: Merchant, amount: number, extra: Record<string, unknown> = {}) {
  const res = await createPayment(tg, m.secretKey, scanPayment(amount, extra));
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return {
    id: res.body.id,
    amount,
    provider_reference: res.body.provider_reference,
    status: res.body.status,
  } as PaidPayment;
}

/** A refund of part of a paid payment, through the API: the refund as created, once the payment shows it. */
export async function refundPart(tg: TestGateway, m: Merchant, p: PaidPayment, value: number) {
  const res = await createRefund(
    tg,
    m.secretKey,
    p.id,
    { amount: { value, currency: 'EUR' } },
    `rf-${p.id}-${value}`,
  );
  assert.equal(res.status, 201, JSON.stringify(res.body));
  await waitForStatus(tg, m.secretKey, p.id, ['partially_refunded']);
  return res.body as { id: string };
}

export function lineFor(p: PaidPayment, extra: Partial<SandboxLine> = {}): SandboxLine {
  return { transaction_id: p.provider_reference, request_id: p.id, amount: p.amount, ...extra };
}

/** A refund's settlement line, by its provider id (as the ledger stored it) unless told another. */
export async function refundLineFor(
  tg: TestGateway,
  p: PaidPayment,
  refund: { id: string },
  amount: number,
  transactionId?: string,
): Promise<SandboxLine> {
  const stored = await tg.gateway.ctx.db.query<{ provider_reference: string }>(
    'SELECT provider_reference FROM refunds WHERE id = $1',
    [refund.id],
  );
  return {
    type: 'refund',
    transaction_id: transactionId ?? stored.rows[0].provider_reference,
    original_transaction_id: p.provider_reference,
    request_id: refund.id,
    amount,
    fee: 0,
  };
}

/** A sale left processing (digits 57), with its payment line and a cancel line for it. */
export async function undecidedSale(tg: TestGateway, m: Merchant, value: number) {
  const created = await createPayment(tg, m.secretKey, scanPayment(value)).expect(201);
  assert.equal(created.body.status, 'processing');
  const p: PaidPayment = {
    id: created.body.id,
    amount: value,
    provider_reference: created.body.provider_reference,
    status: 'processing',
  };
  const cancel = lineFor(p, {
    type: 'cancel',
    transaction_id: `${p.provider_reference}C`,
    original_transaction_id: p.provider_reference,
  });
  return { p, payment: lineFor(p), cancel };
}

/**
 * A sale left processing (digits 57) and then cancelled through the API, with its payment line and
 * its cancel line, as a provider settles a sale paid and then reversed.
 */
export async function reversedSale(tg: TestGateway, m: Merchant, value: number) {
  const sale = await undecidedSale(tg, m, value);
  await tg.http
    .post(`/v1/payments/${sale.p.id}/cancel`)
    .set('Authorization', `Bearer ${m.secretKey}`)
    .expect(200);
  return { ...sale, p: { ...sale.p, status: 'canceled' } };
}

export async function importFile(
  tg: TestGateway,
  key: string,
  body: string | Buffer,
  provider = 'sandbox',
): Promise<string> {
  const res = await tg.http
    .post(`/v1/settlements/imports?provider=${provider}`)
    .set('Authorization', `Bearer ${key}`)
    .set('Content-Type', 'text/csv')
    .send(Buffer.isBuffer(body) ? body : Buffer.from(body));
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.status, 'queued');
  assert.match(res.body.id, /^job_/);
  return res.body.id;
}

export async function waitJob(tg: TestGateway, key: string, id: string, timeoutMs = 30_000) {
  return eventually(
    async () => {
      const res = await tg.http.get(`/v1/jobs/${id}`).set('Authorization', `Bearer ${key}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return ['completed', 'failed'].includes(res.body.status) ? res.body : undefined;
    },
    timeoutMs,
    `job ${id}`,
  );
}

/**
 * An import matched but still `running`, as its lines of sales or refunds not decided yet may
 * still become discrepancies: its counts so far (`pending` the lines it waits for).
 */
export async function waitAwaiting(tg: TestGateway, key: string, body: string | Buffer) {
  const id = await importFile(tg, key, body);
  return eventually(
    async () => {
      const res = await tg.http.get(`/v1/jobs/${id}`).set('Authorization', `Bearer ${key}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.notEqual(res.body.status, 'completed', JSON.stringify(res.body));
      assert.notEqual(res.body.status, 'failed', JSON.stringify(res.body));
      return res.body.counts.pending ? res.body : undefined;
    },
    30_000,
    `job ${id} matched`,
  );
}

export async function importAndWait(
  tg: TestGateway,
  key: string,
  body: string | Buffer,
  provider = 'sandbox',
) {
  return waitJob(tg, key, await importFile(tg, key, body, provider));
}

export async function discrepancies(tg: TestGateway, key: string, query = '') {
  const all: Record<string, unknown>[] = [];
  let after = '';
  for (;;) {
    const res = await tg.http
      .get(`/v1/reconciliation/discrepancies?limit=100${query}${after ? `&starting_after=${after}` : ''}`)
      .set('Authorization', `Bearer ${key}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    all.push(...res.body.data);
    if (!res.body.has_more) return all;
    after = res.body.data.at(-1).id;
  }
}

export interface Settlement {
  id: string;
  provider: string;
  provider_batch_id: string;
  settlement_date: string;
  currency: string;
  gross: { value: number; currency: string };
  fees: { value: number; currency: string };
  net: { value: number; currency: string };
  count: number;
  status: string;
  version: number;
}

export async function settlements(tg: TestGateway, key: string) {
  const res = await tg.http.get('/v1/settlements?limit=100').set('Authorization', `Bearer ${key}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.data as Settlement[];
}

export interface SettlementLineView {
  type: string;
  payment_id: string | null;
  result: string;
  fee: { value: number };
  net: { value: number };
}

/** The current lines of a batch, as the API lists them (first 100). */
export async function batchLines(tg: TestGateway, key: string, settlementId: string) {
  const res = await tg.http
    .get(`/v1/settlements/${settlementId}/lines?limit=100`)
    .set('Authorization', `Bearer ${key}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.data as SettlementLineView[];
}
