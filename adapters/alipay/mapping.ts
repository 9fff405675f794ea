/**
 * Antom shapes ⇄ ours (alipay.md §4–§11): the pay body for both in-store modes, and the one place
 * where Antom's result codes and payment statuses become our outcomes and failure codes.
 *
 * Parsing is tolerant where the sources disagree (PROVIDERS.md rule 6): amounts and rates arrive as
 * JSON strings or JSON numbers, currency pairs as numeric (`446/156`) or alphabetic codes.
 */

import { currencyFromCode, type Money } from '../../src/payments/money.ts';
import type {
  CancelOutcome,
  Failure,
  FailureCode,
  PaymentFacts,
  PaymentOutcome,
  PaymentRequest,
  QrCode,
  RefundOutcome,
  RefundRequest,
} from '../contract.ts';
import type { AlipayCredentials } from './credentials.ts';
import { isoTime } from './signature.ts';

export type Json = Record<string, unknown>;

export interface AntomResult {
  resultStatus: string;
  resultCode: string;
  resultMessage: string;
}

// ─── outgoing bodies ────────────────────────────────────────────────────────────────────────────

/**
 * The pay body. Every field derives from the PaymentRequest alone, so that the one permitted resend
 * (same paymentRequestId) is byte-for-byte the identical request.
 */
export function payBody(
  credentials: AlipayCredentials,
  payment: PaymentRequest,
  notifyUrl: string,
  /** The merchant's own: the currency it is paid in, and the name its customers know it by. */
  merchant: { settlement_currency?: string; name?: string } = {},
): Json {
  const amount = antomAmount(payment.amount);
  const merchantId = credentials.reference_merchant_id ?? payment.merchant_id;
  const storeId = payment.store_id ?? 'default';
  const paymentMethod: Json =
    payment.mode === 'scan'
      ? { paymentMethodType: 'CONNECT_WALLET', paymentMethodId: payment.payment_code ?? '' }
      : { paymentMethodType: 'CONNECT_WALLET' };
  return {
    productCode: 'IN_STORE_PAYMENT',
    paymentRequestId: payment.provider_request_id,
    paymentAmount: amount,
    paymentMethod,
    paymentFactor: { inStorePaymentScenario: payment.mode === 'scan' ? 'PaymentCode' : 'OrderCode' },
    paymentExpiryTime: isoTime(payment.expires_at),
    paymentNotifyUrl: notifyUrl,
    // The account's own choice, else the currency the merchant is paid in (a merchant's is fixed,
    // so the one permitted resend stays identical), else the sale's.
    settlementStrategy: {
      settlementCurrency:
        credentials.settlement_currency ?? merchant.settlement_currency ?? payment.amount.currency,
    },
    order: {
      referenceOrderId: payment.reference,
      orderDescription: payment.description ?? payment.reference,
      orderAmount: amount,
      merchant: {
        referenceMerchantId: merchantId,
        // What the customer's wallet shows as the payee: never an id of ours when a name is known.
        merchantName: credentials.merchant_name ?? merchant.name ?? merchantId,
        merchantMCC: credentials.mcc,
        store: { referenceStoreId: storeId, storeName: storeId, storeMCC: credentials.mcc },
      },
      env: {
        storeTerminalId: payment.terminal_id ?? 'default',
        storeTerminalRequestTime: isoTime(payment.created_at),
      },
    },
  };
}

export function paymentLookupBody(payment: PaymentRequest): Json {
  return { paymentRequestId: payment.provider_request_id };
}

export function refundBody(refund: RefundRequest, paymentId: string): Json {
  return {
    paymentId,
    refundRequestId: refund.provider_request_id,
    refundAmount: antomAmount(refund.amount),
    refundRequestTime: isoTime(refund.created_at),
    ...(refund.reason ? { refundReason: refund.reason.slice(0, 256) } : {}),
  };
}

export function refundLookupBody(refund: RefundRequest): Json {
  return { refundRequestId: refund.provider_request_id };
}

/** Antom amounts: ISO alpha currency, value in minor units as a JSON string (alipay.md §4.3). */
export function antomAmount(money: Money): { currency: string; value: string } {
  return { currency: money.currency, value: String(money.value) };
}

// ─── the classification table ───────────────────────────────────────────────────────────────────

/**
 * Result codes we act on (alipay.md §5.2, §5.3). A code absent here is classified by resultStatus
 * alone, and an F with an unlisted code becomes `provider_error`.
 * `undecided`: an F that says nothing about whether the customer paid (our body was judged
 * inconsistent, or the server failed) — unknown, resolved by inquiry, never a final failure.
 */
const RESULT_CODES: Record<string, { failure?: FailureCode; undecided?: true; not_found?: true }> = {
  USER_BALANCE_NOT_ENOUGH: { failure: 'insufficient_funds' },
  INVALID_PAYMENT_CODE: { failure: 'invalid_payment_code' },
  INVALID_CODE: { failure: 'invalid_payment_code' },
  EXPIRED_CODE: { failure: 'expired' },
  ORDER_IS_CLOSED: { failure: 'expired' },
  PAYMENT_EXPIRED: { failure: 'expired' },
  RISK_REJECT: { failure: 'risk_rejected' },
  FRAUD_REJECT: { failure: 'risk_rejected' },
  USER_KYC_NOT_QUALIFIED: { failure: 'risk_rejected' },
  USER_STATUS_ABNORMAL: { failure: 'risk_rejected' },
  USER_PAYMENT_VERIFICATION_FAILED: { failure: 'user_canceled' },
  VERIFY_TIMES_EXCEED_LIMIT: { failure: 'user_canceled' },
  ORDER_IS_CANCELED: { failure: 'user_canceled' },
  USER_AMOUNT_EXCEED_LIMIT: { failure: 'amount_limit_exceeded' },
  PAYMENT_AMOUNT_EXCEED_LIMIT: { failure: 'amount_limit_exceeded' },
  PAYMENT_COUNT_EXCEED_LIMIT: { failure: 'amount_limit_exceeded' },
  REFUND_AMOUNT_EXCEED: { failure: 'amount_limit_exceeded' },
  REPEAT_REQ_INCONSISTENT: { undecided: true },
  SYSTEM_ERROR: { undecided: true },
  UNKNOWN_EXCEPTION: { undecided: true },
  ORDER_NOT_EXIST: { not_found: true },
  REFUND_NOT_EXIST: { not_found: true },
};

/**
 * inquiryPayment `paymentStatus` (§6). PENDING (online docs): the user has finished and the final
 * result is to come, as the PAYMENT_PENDING notification says; otherwise like PROCESSING.
 */
const PAYMENT_STATUS: Record<string, 'succeeded' | 'failed' | 'canceled' | 'pending' | 'acted'> = {
  SUCCESS: 'succeeded',
  FAIL: 'failed',
  CANCELLED: 'canceled',
  PROCESSING: 'pending',
  PENDING: 'acted',
};

/** inquiryRefund `refundStatus` (§8). */
const REFUND_STATUS: Record<string, 'succeeded' | 'failed' | 'pending'> = {
  SUCCESS: 'succeeded',
  FAIL: 'failed',
  PROCESSING: 'pending',
};

/** Codes that refuse our account's set-up rather than the sale (§5.3 rule 4: an alert). */
const CONFIGURATION_CODES = new Set([
  'KEY_NOT_FOUND',
  'MERCHANT_NOT_REGISTERED',
  'INVALID_CONTRACT',
  'INVALID_MERCHANT_STATUS',
  'SIGNATURE_INVALID',
  'INVALID_SIGNATURE',
  'ACCESS_DENIED',
  'PARAM_ILLEGAL',
  'MEDIA_TYPE_NOT_ACCEPTABLE',
  'NO_INTERFACE_DEF',
]);

export function failureFor(code: string, message: string): Failure {
  return {
    code: RESULT_CODES[code]?.failure ?? 'provider_error',
    message: message || code,
    provider_code: code,
    ...(CONFIGURATION_CODES.has(code) ? { configuration: true as const } : {}),
  };
}

function isUndecided(result: AntomResult): boolean {
  return RESULT_CODES[result.resultCode]?.undecided === true;
}

function isNotFound(result: AntomResult): boolean {
  return RESULT_CODES[result.resultCode]?.not_found === true;
}

/** Antom answered with a result object that decides nothing. */
function unknown(result: AntomResult): PaymentOutcome {
  return { kind: 'unknown', reason: describe(result), reached: true, answered: true };
}

function describe(result: AntomResult): string {
  return `${result.resultStatus} ${result.resultCode}${result.resultMessage ? `: ${result.resultMessage}` : ''}`;
}

// ─── answers → outcomes ─────────────────────────────────────────────────────────────────────────

/** `pay`: UPM S is paid; Order Code S only means the code exists (§4.1). */
export function payOutcome(payment: PaymentRequest, result: AntomResult, body: Json): PaymentOutcome {
  switch (result.resultStatus) {
    case 'S': {
      if (payment.mode === 'scan') return { kind: 'succeeded', ...paymentFacts(body) };
      const qr = orderCode(body, payment.expires_at);
      if (!qr)
        return {
          kind: 'unknown',
          reason: 'order code created but orderCodeForm has no code',
          reached: true,
          answered: true,
        };
      return {
        kind: 'pending',
        qr_code: qr,
        reason: 'waiting for the customer to scan',
        ...paymentFacts(body),
      };
    }
    case 'F':
      if (isUndecided(result)) return unknown(result);
      return {
        kind: 'failed',
        failure: failureFor(result.resultCode, result.resultMessage),
        ...paymentFacts(body),
      };
    case 'U':
      if (result.resultCode === 'PAYMENT_IN_PROCESS') {
        return { kind: 'pending', reason: describe(result), ...paymentFacts(body) };
      }
      return unknown(result);
    default:
      return unknown(result);
  }
}

/** `inquiryPayment`: `result` only says the query worked; `paymentStatus` is the payment (§6). */
export function inquiryOutcome(result: AntomResult, body: Json): PaymentOutcome {
  if (result.resultStatus === 'F' && isNotFound(result))
    return { kind: 'not_found', reason: describe(result) };
  // Any other F ends the inquiries: the reference client cancels at once (§9).
  if (result.resultStatus === 'F' && !isUndecided(result))
    return { kind: 'unknown', reason: describe(result), reached: true, stop_inquiring: true };
  if (result.resultStatus !== 'S') return unknown(result);
  const status = PAYMENT_STATUS[text(body.paymentStatus) ?? ''];
  const facts = paymentFacts(body);
  switch (status) {
    case 'succeeded':
      return { kind: 'succeeded', ...facts };
    case 'canceled':
      return { kind: 'canceled', ...facts };
    case 'pending':
    case 'acted':
      return {
        kind: 'pending',
        reason: `paymentStatus ${text(body.paymentStatus)}`,
        ...(status === 'acted' ? { customer_acted: true } : {}),
        ...facts,
      };
    case 'failed': {
      const code = text(body.paymentResultCode) ?? 'PROCESS_FAIL';
      return { kind: 'failed', failure: failureFor(code, text(body.paymentResultMessage) ?? ''), ...facts };
    }
    default:
      return {
        kind: 'unknown',
        reason: `unrecognised paymentStatus ${String(body.paymentStatus)}`,
        reached: true,
      };
  }
}

/**
 * `cancel` (§7). S closes an unpaid order or reverses a paid one; only S is a cancellation (§9:
 * "cancel | anything else | retry"). F ORDER_NOT_EXIST may mean the pay is still on its way: the
 * core decides by what its inquiries have seen.
 */
export function cancelOutcome(result: AntomResult): CancelOutcome {
  if (result.resultStatus === 'S') return { kind: 'canceled' };
  if (result.resultStatus === 'F' && isNotFound(result))
    return { kind: 'not_found', reason: describe(result) };
  if (result.resultStatus === 'F' && !isUndecided(result))
    return { kind: 'failed', reason: describe(result) };
  return { kind: 'unknown', reason: describe(result) };
}

/** `refund` (§8): S is done unless Antom says it completes asynchronously. */
export function refundOutcome(result: AntomResult, body: Json): RefundOutcome {
  const reference = text(body.refundId);
  switch (result.resultStatus) {
    case 'S':
      if (body.isAsyncRefund === true || body.isAsyncRefund === 'true') {
        return { kind: 'pending', provider_reference: reference };
      }
      return {
        kind: 'succeeded',
        provider_reference: reference,
        settlement_amount: money(body.grossSettlementAmount),
        amount: money(body.refundAmount),
      };
    case 'F':
      if (isUndecided(result)) return { kind: 'unknown', reason: describe(result) };
      return {
        kind: 'failed',
        failure: failureFor(result.resultCode, result.resultMessage),
        provider_reference: reference,
      };
    default:
      return { kind: 'unknown', reason: describe(result) };
  }
}

export function refundInquiryOutcome(result: AntomResult, body: Json): RefundOutcome {
  if (result.resultStatus === 'F' && isNotFound(result)) return { kind: 'not_found' };
  if (result.resultStatus !== 'S') return { kind: 'unknown', reason: describe(result) };
  const reference = text(body.refundId);
  switch (REFUND_STATUS[text(body.refundStatus) ?? '']) {
    case 'succeeded':
      return {
        kind: 'succeeded',
        provider_reference: reference,
        settlement_amount: money(body.grossSettlementAmount),
        amount: money(body.refundAmount),
      };
    case 'pending':
      return { kind: 'pending', provider_reference: reference };
    case 'failed': {
      const code = text(body.refundResultCode) ?? text(body.resultCode) ?? 'PROCESS_FAIL';
      return {
        kind: 'failed',
        failure: failureFor(code, text(body.refundResultMessage) ?? ''),
        provider_reference: reference,
      };
    }
    default:
      return { kind: 'unknown', reason: `unrecognised refundStatus ${String(body.refundStatus)}` };
  }
}

// ─── facts: ids, wallet, FX ─────────────────────────────────────────────────────────────────────

/** Never recompute a provider's conversion: store what Antom sends (§11). */
export function paymentFacts(body: Json): PaymentFacts {
  const facts: PaymentFacts = {};
  const amount = money(body.paymentAmount);
  if (amount) facts.amount = amount;
  const paymentId = text(body.paymentId);
  if (paymentId) facts.provider_reference = paymentId;
  const psp = isRecord(body.pspCustomerInfo) ? text(body.pspCustomerInfo.pspName) : undefined;
  if (psp && plainId(psp)) facts.wallet_psp = psp;
  const paidAt = text(body.paymentTime);
  if (paidAt) {
    const date = new Date(paidAt);
    if (!Number.isNaN(date.getTime())) facts.paid_at = date;
  }
  const customer = money(body.actualPaymentAmount);
  if (customer) facts.customer_amount = customer;
  const rate = quote(body.paymentQuote)?.price;
  if (rate) facts.exchange_rate = rate;
  const settlement = money(body.grossSettlementAmount);
  if (settlement) facts.settlement_amount = settlement;
  const settlementRate = quote(body.settlementQuote)?.price;
  if (settlementRate) facts.settlement_rate = settlementRate;
  return facts;
}

/** `{currency, value}` with value in minor units, as a JSON string or a JSON number. */
export function money(value: unknown): Money | undefined {
  if (!isRecord(value)) return undefined;
  const currency = typeof value.currency === 'string' ? currencyFromCode(value.currency) : undefined;
  const raw = value.value;
  let minor: number | undefined;
  if (typeof raw === 'number' && Number.isSafeInteger(raw)) minor = raw;
  if (typeof raw === 'string' && /^\d{1,16}$/.test(raw.trim())) minor = Number(raw.trim());
  // Every amount Antom sends (charged, settled) is positive: a negative one is no amount of ours.
  if (!currency || minor === undefined || !Number.isSafeInteger(minor) || minor < 0) return undefined;
  return { value: minor, currency };
}

export interface Quote {
  /** Decimal string, e.g. "0.88156063". */
  price: string;
  /** Alpha codes of the pair, when it parses: `446/156` → MOP/CNY. */
  from?: string;
  to?: string;
  guaranteed?: boolean;
}

export function quote(value: unknown): Quote | undefined {
  if (!isRecord(value)) return undefined;
  const price = decimal(value.quotePrice);
  if (!price) return undefined;
  const result: Quote = { price };
  if (typeof value.quoteCurrencyPair === 'string') {
    const [from, to] = value.quoteCurrencyPair.split('/');
    const fromAlpha = from ? currencyFromCode(from) : undefined;
    const toAlpha = to ? currencyFromCode(to) : undefined;
    if (fromAlpha && toAlpha) Object.assign(result, { from: fromAlpha, to: toAlpha });
  }
  if (value.guaranteed === true || value.guaranteed === 'true') result.guaranteed = true;
  if (value.guaranteed === false || value.guaranteed === 'false') result.guaranteed = false;
  return result;
}

/**
 * A rate as a decimal string. A JSON number has already been through a double when JSON.parse
 * read it; its shortest round-trip form gives back the digits Antom wrote (trailing zeros aside).
 */
export function decimal(value: unknown): string | undefined {
  // A rate, not a novel: Antom's have a few digits on either side of the point.
  if (typeof value === 'string' && /^\d{1,12}(\.\d{1,18})?$/.test(value.trim())) return value.trim();
  if (typeof value === 'number' && Number.isFinite(value) && value > 0) {
    const shortest = String(value);
    if (!shortest.includes('e')) return shortest;
    return value.toFixed(20).replace(/0+$/, '').replace(/\.$/, '');
  }
  return undefined;
}

/** The `TEXT` code value is what the till renders as a QR; unknown display types are tolerated. */
export function orderCode(body: Json, fallbackExpiry: Date): QrCode | undefined {
  const form = isRecord(body.orderCodeForm) ? body.orderCodeForm : undefined;
  const details = Array.isArray(form?.codeDetails) ? form.codeDetails.filter(isRecord) : [];
  const chosen =
    details.find((d) => d.displayType === 'TEXT') ?? details.find((d) => typeof d.codeValue === 'string');
  const data = chosen ? text(chosen.codeValue) : undefined;
  if (!data) return undefined;
  const expiry = text(form?.expireTime);
  const expiresAt = expiry ? new Date(expiry) : fallbackExpiry;
  return { data, expires_at: Number.isNaN(expiresAt.getTime()) ? fallbackExpiry : expiresAt };
}

/** The `result` object of any Antom answer, or undefined when the body has none. */
export function resultOf(body: Json): AntomResult | undefined {
  const result = body.result;
  if (!isRecord(result)) return undefined;
  const status = text(result.resultStatus);
  if (!status) return undefined;
  return {
    resultStatus: status,
    resultCode: text(result.resultCode) ?? '',
    resultMessage: text(result.resultMessage) ?? '',
  };
}

/** An id or name as Antom writes them: at most 64 characters, none of them a control character. */
export function plainId(value: string): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is looked for
  return value.length <= 64 && !/[\u0000-\u001f\u007f]/.test(value);
}

export function text(value: unknown): string | undefined {
  if (typeof value === 'string' && value.length > 0) return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

export function isRecord(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
