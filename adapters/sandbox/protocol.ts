/**
 * The sandbox provider's own small protocol: JSON bodies, each request and response signed with
 * `Sandbox-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">` under a secret both sides
 * derive from the sandbox seed.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'sandbox-signature';
export const TOLERANCE_S = 300;

export function sandboxSecret(seed: Buffer): Buffer {
  return createHmac('sha256', seed).update('sandbox-provider-secret').digest();
}

export function signSandbox(secret: Buffer, body: string, now = new Date()): string {
  const t = Math.floor(now.getTime() / 1000);
  const v1 = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  return `t=${t},v1=${v1}`;
}

export function verifySandbox(
  secret: Buffer,
  header: string | undefined,
  body: Buffer | string,
  now = new Date(),
): { ok: true } | { ok: false; reason: string } {
  if (!header) return { ok: false, reason: 'missing Sandbox-Signature header' };
  const parts = new Map(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.get('t'));
  const v1 = parts.get('v1');
  // Exactly as signSandbox writes them: Buffer.from(hex) would stop quietly at a stray character.
  if (!/^\d{1,12}$/.test(parts.get('t') ?? '') || !v1 || !/^[0-9a-f]{64}$/i.test(v1))
    return { ok: false, reason: 'malformed Sandbox-Signature header' };
  if (Math.abs(now.getTime() / 1000 - t) > TOLERANCE_S)
    return { ok: false, reason: 'stale signature timestamp' };
  const expected = createHmac('sha256', secret).update(`${t}.`).update(body).digest();
  const given = Buffer.from(v1, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return { ok: false, reason: 'signature does not match' };
  }
  return { ok: true };
}

export type SandboxStatus =
  | 'succeeded'
  | 'failed'
  | 'processing'
  | 'requires_customer'
  | 'canceled'
  | 'not_found';

export interface SandboxPayRequest {
  request_id: string;
  amount: number;
  currency: string;
  mode: 'scan' | 'qr';
  payment_code?: string;
  notify_url: string;
  created_at: string;
  expires_at: string;
  store_id?: string;
}

export interface SandboxPaymentView {
  request_id: string;
  status: SandboxStatus;
  transaction_id?: string;
  failure_code?: string;
  failure_message?: string;
  qr_url?: string;
  qr_expires_at?: string;
  customer_amount?: number;
  customer_currency?: string;
  exchange_rate?: string;
  wallet_psp?: string;
  paid_at?: string;
}

export interface SandboxRefundRequest {
  refund_request_id: string;
  request_id: string;
  amount: number;
  currency: string;
  /** The payment's original request, as inquiries carry it: a restarted simulator rebuilds the order. */
  original?: SandboxPayRequest;
}

export interface SandboxRefundView {
  refund_request_id: string;
  status: 'succeeded' | 'failed' | 'processing' | 'not_found';
  refund_id?: string;
  failure_code?: string;
}

export interface SandboxNotification {
  notification_id: string;
  type: 'payment' | 'refund';
  payment?: SandboxPaymentView;
  refund?: SandboxRefundView;
}

/** The outcome the last two minor digits of the amount pick (API.md's sandbox table). */
export type Scenario =
  | 'success'
  | 'insufficient_funds'
  | 'confirm_then_success'
  | 'confirm_then_fail'
  | 'no_answer'
  | 'error_then_ok'
  | 'invalid_code'
  | 'forever_processing';

export function scenarioFor(amount: number): Scenario {
  const digits = amount % 100;
  if (digits <= 50) return 'success';
  const table: Record<number, Scenario> = {
    51: 'insufficient_funds',
    52: 'confirm_then_success',
    53: 'confirm_then_fail',
    54: 'no_answer',
    55: 'error_then_ok',
    56: 'invalid_code',
    57: 'forever_processing',
  };
  return table[digits] ?? 'success';
}
