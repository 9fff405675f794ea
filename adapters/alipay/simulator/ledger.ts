/**
 * The simulated Antom's books: one record per paymentRequestId and per refundRequestId, the
 * state machine PROCESSING → SUCCESS | FAIL | CANCELLED (alipay.md §15.5), and API.md's magic
 * digits. Transitions that wait ("succeeds after about 3 s") are stored as a due time and applied
 * lazily on every read, so an inquiry never races a timer; the server also sets a timer per due
 * time to send the notification.
 */
import { createHash } from 'node:crypto';
import { currencyFromCode, type Money } from '../../../src/payments/money.ts';
import { convert, rateFor } from '../../demo-fx.ts';
import { isRecord, type Json, text } from '../mapping.ts';
import type { Journal } from './journal.ts';

export type PaymentStatus = 'PROCESSING' | 'SUCCESS' | 'FAIL' | 'CANCELLED';

export interface PaymentRecord {
  paymentRequestId: string;
  paymentId: string;
  clientId: string;
  /** Canonical form of the pay request, to detect a reused id with another body. */
  fingerprint?: string;
  scenario: 'PaymentCode' | 'OrderCode';
  amount: Money;
  settlementCurrency: string;
  notifyUrl?: string;
  paymentMethodId?: string;
  referenceMerchantId?: string;
  referenceStoreId?: string;
  digits: number;
  status: PaymentStatus;
  resultCode: string;
  resultMessage: string;
  createdAt: Date;
  paidAt?: Date;
  cancelledAt?: Date;
  expiresAt?: Date;
  scanned: boolean;
  /** When a waiting payment decides, and how. */
  dueAt?: number;
  dueStatus?: 'SUCCESS' | 'FAIL';
  /** notifyPayment has been queued for the final state. */
  notified?: boolean;
  /** notifyPayment PAYMENT_PENDING has been queued for the customer's scan. */
  pendingNotified?: boolean;
  /** A cancel that arrived before any pay: later pays with this id are refused (tombstone). */
  tombstone?: boolean;
  refunds: RefundRecord[];
}

export interface RefundRecord {
  refundRequestId: string;
  refundId: string;
  paymentId: string;
  fingerprint: string;
  amount: Money;
  status: 'SUCCESS' | 'FAIL' | 'PROCESSING';
  resultCode: string;
  resultMessage: string;
  createdAt: Date;
  refundedAt?: Date;
  dueAt?: number;
}

/** What a scripted outcome makes the server do with the HTTP exchange itself. */
export type Transport = 'answer' | 'hang' | 'http500';

export const CONFIRM_DELAY_MS = 3000;

const FAILURES = {
  51: ['USER_BALANCE_NOT_ENOUGH', 'The user balance is not enough for this payment.'],
  53: ['USER_PAYMENT_VERIFICATION_FAILED', 'The user gave up confirming the payment.'],
  56: ['INVALID_PAYMENT_CODE', 'The payment code is invalid or expired.'],
} as const;

export function digitsOf(amount: Money): number {
  return amount.value % 100;
}

export function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (isRecord(value)) {
    return `{${Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

export function parseMoney(value: unknown): Money | undefined {
  if (!isRecord(value)) return undefined;
  const currency = typeof value.currency === 'string' ? currencyFromCode(value.currency) : undefined;
  const raw = typeof value.value === 'number' ? String(value.value) : value.value;
  if (!currency || typeof raw !== 'string' || !/^\d{1,15}$/.test(raw)) return undefined;
  return { value: Number(raw), currency };
}

function idFor(kind: string, requestId: string, clientId: string): string {
  const hash = createHash('sha256').update(`${kind}:${clientId}:${requestId}`).digest('hex');
  // Antom ids look like 202003151940108001001881I0204295953: a date, digits, a letter, digits.
  const digits = BigInt(`0x${hash.slice(0, 24)}`)
    .toString()
    .padStart(28, '0')
    .slice(0, 28);
  const day = new Date().toISOString().slice(0, 10).replace(/-/g, '');
  return `${day}${digits.slice(0, 14)}${kind === 'refund' ? 'R' : 'I'}${digits.slice(14, 24)}`;
}

export class Ledger {
  readonly payments = new Map<string, PaymentRecord>();
  readonly paymentsById = new Map<string, PaymentRecord>();
  readonly refunds = new Map<string, RefundRecord>();
  readonly refundsById = new Map<string, RefundRecord>();
  /** paymentRequestIds whose first attempt already got the scripted HTTP 500 (digits 55). */
  private readonly failedOnce = new Set<string>();

  constructor(
    private readonly timeScale: number,
    private readonly journal?: Journal,
  ) {
    const state = journal?.load();
    for (const record of state?.payments ?? []) {
      this.payments.set(this.key(record.clientId, record.paymentRequestId), record);
      if (!record.tombstone) this.paymentsById.set(record.paymentId, record);
    }
    for (const refund of state?.refunds ?? []) {
      const payment = this.paymentsById.get(refund.paymentId);
      this.refunds.set(this.key(payment?.clientId ?? '', refund.refundRequestId), refund);
      this.refundsById.set(refund.refundId, refund);
    }
    for (const key of state?.failedOnce ?? []) this.failedOnce.add(key);
  }

  /** Records still waiting for a decision (after a restart the server re-arms their timers). */
  waiting(): PaymentRecord[] {
    return [...this.paymentsById.values()].filter((p) => p.status === 'PROCESSING' && p.dueAt !== undefined);
  }

  private key(clientId: string, requestId: string): string {
    return `${clientId}\u0000${requestId}`;
  }

  findPayment(clientId: string, body: Json): PaymentRecord | undefined {
    const paymentId = text(body.paymentId);
    const record = paymentId
      ? this.paymentsById.get(paymentId)
      : this.payments.get(this.key(clientId, text(body.paymentRequestId) ?? ''));
    if (!record || record.clientId !== clientId) return undefined;
    this.settle(record);
    return record;
  }

  findRefund(clientId: string, body: Json): RefundRecord | undefined {
    const refundId = text(body.refundId);
    const record = refundId
      ? this.refundsById.get(refundId)
      : this.refunds.get(this.key(clientId, text(body.refundRequestId) ?? ''));
    if (record) this.settleRefund(record);
    return record;
  }

  /**
   * A new pay request (the caller has checked idempotency). Returns the record to answer with, or
   * the scripted transport fault. Digits 55 fail the first attempt before anything is recorded.
   */
  createPayment(
    clientId: string,
    body: Json,
    amount: Money,
    now: Date,
  ): { record?: PaymentRecord; transport: Transport } {
    const requestId = text(body.paymentRequestId) ?? '';
    const digits = digitsOf(amount);
    const factor = isRecord(body.paymentFactor) ? body.paymentFactor : {};
    const scenario = factor.inStorePaymentScenario === 'OrderCode' ? 'OrderCode' : 'PaymentCode';
    if (digits === 55 && !this.failedOnce.has(`${clientId}:${requestId}`)) {
      this.failedOnce.add(`${clientId}:${requestId}`);
      this.journal?.failedOnce(`${clientId}:${requestId}`);
      return { transport: 'http500' };
    }
    const order = isRecord(body.order) ? body.order : {};
    const merchant = isRecord(order.merchant) ? order.merchant : {};
    const store = isRecord(merchant.store) ? merchant.store : {};
    const strategy = isRecord(body.settlementStrategy) ? body.settlementStrategy : {};
    const method = isRecord(body.paymentMethod) ? body.paymentMethod : {};
    const expiry = text(body.paymentExpiryTime);
    const record: PaymentRecord = {
      paymentRequestId: requestId,
      paymentId: idFor('pay', requestId, clientId),
      clientId,
      fingerprint: canonical(body),
      scenario,
      amount,
      settlementCurrency: currencyFromCode(text(strategy.settlementCurrency) ?? '') ?? amount.currency,
      notifyUrl: text(body.paymentNotifyUrl),
      paymentMethodId: text(method.paymentMethodId),
      referenceMerchantId: text(merchant.referenceMerchantId),
      referenceStoreId: text(store.referenceStoreId),
      digits,
      status: 'PROCESSING',
      resultCode: 'PAYMENT_IN_PROCESS',
      resultMessage: 'payment in process',
      createdAt: now,
      expiresAt: expiry && !Number.isNaN(new Date(expiry).getTime()) ? new Date(expiry) : undefined,
      scanned: false,
      refunds: [],
    };
    this.payments.set(this.key(clientId, requestId), record);
    this.paymentsById.set(record.paymentId, record);
    if (scenario === 'PaymentCode') this.decide(record, now);
    this.journal?.payment(record);
    return { record, transport: scenario === 'PaymentCode' && digits === 54 ? 'hang' : 'answer' };
  }

  /** A cancel for an id Antom never saw: remember it, so a late pay cannot charge anyone. */
  tombstone(clientId: string, requestId: string, now: Date): PaymentRecord {
    const record: PaymentRecord = {
      paymentRequestId: requestId,
      paymentId: idFor('pay', requestId, clientId),
      clientId,
      scenario: 'PaymentCode',
      amount: { value: 0, currency: 'EUR' },
      settlementCurrency: 'EUR',
      digits: 0,
      status: 'CANCELLED',
      resultCode: 'ORDER_IS_CANCELED',
      resultMessage: 'the order was cancelled before it arrived',
      createdAt: now,
      cancelledAt: now,
      scanned: false,
      tombstone: true,
      refunds: [],
    };
    this.payments.set(this.key(clientId, requestId), record);
    this.journal?.payment(record);
    return record;
  }

  /** The customer scans the Order Code and confirms in the wallet (the sandbox wallet page). */
  scan(record: PaymentRecord, now: Date): boolean {
    this.settle(record);
    if (record.scenario !== 'OrderCode' || record.scanned || record.status !== 'PROCESSING') return false;
    record.scanned = true;
    this.decide(record, now);
    this.journal?.payment(record);
    return true;
  }

  /** Apply the magic digits at the moment the customer acts (UPM: at pay; Order Code: at scan). */
  private decide(record: PaymentRecord, now: Date) {
    const digits = record.digits;
    if (digits === 51 || digits === 56) return this.finish(record, 'FAIL', now, FAILURES[digits]);
    if (digits === 52 || digits === 53) {
      record.dueAt = now.getTime() + CONFIRM_DELAY_MS * this.timeScale;
      record.dueStatus = digits === 52 ? 'SUCCESS' : 'FAIL';
      return;
    }
    if (digits === 57) return; // the customer never decides; only a cancel ends it
    this.finish(record, 'SUCCESS', now);
  }

  private finish(
    record: PaymentRecord,
    status: 'SUCCESS' | 'FAIL' | 'CANCELLED',
    now: Date,
    failure?: readonly [string, string],
  ) {
    record.status = status;
    record.dueAt = undefined;
    record.dueStatus = undefined;
    if (status === 'SUCCESS') {
      record.paidAt = now;
      record.resultCode = 'SUCCESS';
      record.resultMessage = 'success.';
    } else if (status === 'FAIL') {
      [record.resultCode, record.resultMessage] = failure ?? ['PROCESS_FAIL', 'payment failed'];
    } else {
      record.cancelledAt = now;
      record.resultCode = 'ORDER_IS_CANCELED';
      record.resultMessage = 'the payment was cancelled';
    }
  }

  /** Lazily apply what is due: a decision whose time has come, or the expiry of an unscanned code. */
  settle(record: PaymentRecord, now = new Date()): boolean {
    if (record.status !== 'PROCESSING') return false;
    if (record.dueAt !== undefined && now.getTime() >= record.dueAt) {
      const due = record.dueStatus ?? 'SUCCESS';
      this.finish(record, due, now, due === 'FAIL' ? FAILURES[53] : undefined);
      this.journal?.payment(record);
      return true;
    }
    // alipay.md §15.5: an unpaid order closes at paymentExpiryTime (its later state is undocumented).
    if (record.scenario === 'OrderCode' && !record.scanned && record.expiresAt && now >= record.expiresAt) {
      this.finish(record, 'FAIL', now, ['ORDER_IS_CLOSED', 'the order code expired unpaid']);
      this.journal?.payment(record);
      return true;
    }
    return false;
  }

  /** Cancel closes an unpaid order and reverses a paid one, in full (§7). */
  cancel(record: PaymentRecord, now: Date) {
    this.settle(record, now);
    if (record.status === 'CANCELLED') return;
    this.finish(record, 'CANCELLED', now);
    this.journal?.payment(record);
  }

  refund(
    clientId: string,
    body: Json,
    now: Date,
    asyncRefund: boolean,
  ): { record?: RefundRecord; error?: readonly [string, string] } {
    const requestId = text(body.refundRequestId);
    const amount = parseMoney(body.refundAmount);
    const paymentId = text(body.paymentId);
    if (!requestId || !amount || !paymentId)
      return { error: ['PARAM_ILLEGAL', 'refundRequestId, paymentId and refundAmount are required'] };
    const payment = this.paymentsById.get(paymentId);
    if (!payment || payment.clientId !== clientId)
      return { error: ['ORDER_NOT_EXIST', 'no payment with this paymentId'] };
    this.settle(payment, now);
    const record: RefundRecord = {
      refundRequestId: requestId,
      refundId: idFor('refund', requestId, clientId),
      paymentId,
      fingerprint: canonical(body),
      amount,
      status: 'SUCCESS',
      resultCode: 'SUCCESS',
      resultMessage: 'success.',
      createdAt: now,
    };
    const refunded = payment.refunds
      .filter((r) => r.status !== 'FAIL')
      .reduce((sum, r) => sum + r.amount.value, 0);
    const failure: readonly [string, string] | undefined =
      payment.status !== 'SUCCESS'
        ? ['ORDER_STATUS_INVALID', `the payment is ${payment.status}, not SUCCESS`]
        : amount.currency !== payment.amount.currency
          ? ['CURRENCY_NOT_SUPPORT', 'refund currency differs from the payment currency']
          : refunded + amount.value > payment.amount.value || amount.value <= 0
            ? ['REFUND_AMOUNT_EXCEED', 'the total refund amount exceeds the payment amount']
            : undefined;
    if (failure) {
      record.status = 'FAIL';
      [record.resultCode, record.resultMessage] = failure;
    } else if (asyncRefund) {
      record.status = 'PROCESSING';
      record.dueAt = now.getTime() + CONFIRM_DELAY_MS * this.timeScale;
    } else {
      record.refundedAt = now;
    }
    payment.refunds.push(record);
    this.refunds.set(this.key(clientId, requestId), record);
    this.refundsById.set(record.refundId, record);
    this.journal?.refund(record);
    return { record };
  }

  settleRefund(record: RefundRecord, now = new Date()) {
    if (record.status === 'PROCESSING' && record.dueAt !== undefined && now.getTime() >= record.dueAt) {
      record.status = 'SUCCESS';
      record.refundedAt = now;
      record.dueAt = undefined;
      this.journal?.refund(record);
    }
  }

  existingRefund(clientId: string, requestId: string): RefundRecord | undefined {
    return this.refunds.get(this.key(clientId, requestId));
  }

  existingPayment(clientId: string, requestId: string): PaymentRecord | undefined {
    const record = this.payments.get(this.key(clientId, requestId));
    if (record) this.settle(record);
    return record;
  }
}

/** The FX facts of a paid payment (alipay.md §11, §15.6). */
export function fxOf(record: PaymentRecord): {
  customer: Money;
  rate: string;
  settlement: Money;
  settlementRate: string;
  psp: string;
} {
  // Alipay CN codes start 25–30 (§4.1); other Alipay+ codes are played by Alipay HK here.
  const code = record.paymentMethodId ?? '';
  const psp = code === '' || /^(2[5-9]|30)/.test(code) ? 'ALIPAYCN' : 'ALIPAYHK';
  const customerCurrency = psp === 'ALIPAYCN' ? 'CNY' : 'HKD';
  const rate = rateFor(record.amount.currency, customerCurrency);
  const settlementRate = rateFor(record.amount.currency, record.settlementCurrency);
  return {
    customer: convert(record.amount, customerCurrency, rate),
    rate,
    settlement: convert(record.amount, record.settlementCurrency, settlementRate),
    settlementRate,
    psp,
  };
}
