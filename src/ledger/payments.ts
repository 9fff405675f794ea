/** Payment and refund rows, and their public JSON shapes (API.md). */
import type { Mode, PaymentRequest, Wallet } from '../../adapters/contract.ts';
import type { Money } from '../payments/money.ts';

/** A payment's statuses (API.md), once: the type, the list filter and the document derive from it. */
export const PAYMENT_STATUSES = [
  'requires_customer',
  'processing',
  'succeeded',
  'failed',
  'canceled',
  'partially_refunded',
  'refunded',
] as const;

export type PaymentStatus = (typeof PAYMENT_STATUSES)[number];

export const UNRESOLVED: readonly PaymentStatus[] = ['processing', 'requires_customer'];
/** UNRESOLVED as an SQL list, for statements that must name it literally (a partial index's predicate). */
export const UNRESOLVED_SQL = UNRESOLVED.map((status) => `'${status}'`).join(', ');
export const CAPTURED: readonly PaymentStatus[] = ['succeeded', 'partially_refunded', 'refunded'];

export interface PaymentRow {
  id: string;
  merchant_id: string;
  terminal_ref: string | null;
  store_id: string | null;
  terminal_id: string | null;
  provider_account_id: string;
  provider: string;
  wallet: Wallet;
  wallet_psp: string | null;
  mode: Mode;
  status: PaymentStatus;
  amount_value: number;
  currency: string;
  amount_refunded: number;
  customer_amount_value: number | null;
  customer_currency: string | null;
  exchange_rate: string | null;
  settlement_amount_value: number | null;
  settlement_currency: string | null;
  settlement_rate: string | null;
  reference: string;
  description: string | null;
  metadata: Record<string, string>;
  payment_code_masked: string | null;
  payment_code_sealed: Buffer | null;
  provider_request_id: string;
  provider_reference: string | null;
  qr_data: string | null;
  qr_expires_at: Date | null;
  failure_code: string | null;
  failure_message: string | null;
  resolve_by: Date;
  next_check_at: Date | null;
  poll_step: number;
  pay_answered: boolean;
  pay_reached: boolean;
  not_found_since: Date | null;
  not_found_count: number;
  resent: boolean;
  cancel_requested_at: Date | null;
  cancel_attempts: number;
  paid_at: Date | null;
  finalized_at: Date | null;
  idempotency_key: string | null;
  request_hash: string | null;
  request_done: boolean;
  created_at: Date;
  updated_at: Date;
}

export type RefundStatus = 'pending' | 'succeeded' | 'failed';

export interface RefundRow {
  id: string;
  payment_id: string;
  merchant_id: string;
  amount_value: number;
  currency: string;
  status: RefundStatus;
  reason: string | null;
  provider_request_id: string;
  provider_reference: string | null;
  failure_code: string | null;
  failure_message: string | null;
  next_check_at: Date | null;
  poll_step: number;
  created_at: Date;
  updated_at: Date;
}

const money = (value: number, currency: string): Money => ({ value, currency });

export function paymentJson(row: PaymentRow): Record<string, unknown> {
  return {
    id: row.id,
    object: 'payment',
    status: row.status,
    amount: money(row.amount_value, row.currency),
    ...(row.customer_amount_value !== null && row.customer_currency
      ? { customer_amount: money(row.customer_amount_value, row.customer_currency) }
      : {}),
    ...(row.exchange_rate ? { exchange_rate: row.exchange_rate } : {}),
    wallet: row.wallet,
    ...(row.wallet_psp ? { wallet_psp: row.wallet_psp } : {}),
    provider: row.provider,
    mode: row.mode,
    reference: row.reference,
    store_id: row.store_id,
    terminal_id: row.terminal_id,
    ...(row.payment_code_masked ? { payment_code: row.payment_code_masked } : {}),
    ...(row.mode === 'qr'
      ? {
          qr_code: row.qr_data
            ? { data: row.qr_data, expires_at: row.qr_expires_at?.toISOString() ?? null }
            : null,
        }
      : {}),
    ...(row.failure_code ? { failure: { code: row.failure_code, message: row.failure_message ?? '' } } : {}),
    amount_refunded: money(row.amount_refunded, row.currency),
    ...(row.provider_reference ? { provider_reference: row.provider_reference } : {}),
    ...(row.description ? { description: row.description } : {}),
    metadata: row.metadata,
    ...(row.cancel_requested_at ? { cancel_requested_at: row.cancel_requested_at.toISOString() } : {}),
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

export function refundJson(row: RefundRow): Record<string, unknown> {
  return {
    id: row.id,
    object: 'refund',
    payment_id: row.payment_id,
    amount: money(row.amount_value, row.currency),
    status: row.status,
    ...(row.reason ? { reason: row.reason } : {}),
    ...(row.provider_reference ? { provider_reference: row.provider_reference } : {}),
    ...(row.failure_code ? { failure: { code: row.failure_code, message: row.failure_message ?? '' } } : {}),
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

/** What an adapter is told about a stored payment. */
export function paymentRequestOf(
  row: PaymentRow,
  paymentCode: string | undefined,
  expiresAt: Date,
): PaymentRequest {
  return {
    payment_id: row.id,
    provider_request_id: row.provider_request_id,
    amount: money(row.amount_value, row.currency),
    mode: row.mode,
    wallet: row.wallet,
    payment_code: paymentCode,
    reference: row.reference,
    description: row.description ?? undefined,
    store_id: row.store_id ?? undefined,
    terminal_id: row.terminal_id ?? undefined,
    merchant_id: row.merchant_id,
    created_at: row.created_at,
    expires_at: expiresAt,
    provider_reference: row.provider_reference ?? undefined,
  };
}
