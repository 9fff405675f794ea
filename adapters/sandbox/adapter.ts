/**
 * The reference adapter: the sandbox provider, which needs no real protocol. It shows the shape
 * every adapter has: one `commit` path that signs, sends, verifies and classifies, and one table
 * from the provider's statuses to our outcomes.
 */
import { Readable } from 'node:stream';
import { z } from 'zod';
import {
  type AccountContext,
  type CancelOutcome,
  CredentialError,
  type FailureCode,
  type NotificationResult,
  type PaymentOutcome,
  type PaymentRequest,
  type ProviderAck,
  type RefundOutcome,
  type RefundRequest,
  type WalletAdapter,
} from '../contract.ts';
import { MAX_FETCHED_FILE_BYTES, send, TransportError } from '../transport.ts';
import {
  type SandboxPaymentView,
  type SandboxPayRequest,
  type SandboxRefundRequest,
  type SandboxRefundView,
  SIGNATURE_HEADER,
  sandboxSecret,
  signSandbox,
  verifySandbox,
} from './protocol.ts';
import { parseSandboxSettlement } from './settlement.ts';

/**
 * A notification's content, checked after its signature: a signed message that is not what the
 * protocol says (an id missing or absurdly long, an unknown status) is refused, never applied.
 */
const id = z.string().min(1).max(128);
const notificationSchema = z.discriminatedUnion('type', [
  z.object({
    notification_id: id,
    type: z.literal('payment'),
    payment: z.looseObject({
      request_id: id,
      status: z.enum(['succeeded', 'failed', 'processing', 'requires_customer', 'canceled', 'not_found']),
      transaction_id: id.optional(),
      failure_code: z.string().max(128).optional(),
      failure_message: z.string().max(1000).optional(),
      customer_amount: z.number().int().optional(),
      customer_currency: z
        .string()
        .regex(/^[A-Z]{3}$/)
        .optional(),
      exchange_rate: z.string().max(64).optional(),
      wallet_psp: z.string().max(128).optional(),
      paid_at: z.iso.datetime({ offset: true }).optional(),
    }),
  }),
  z.object({
    notification_id: id,
    type: z.literal('refund'),
    refund: z.looseObject({
      refund_request_id: id,
      status: z.enum(['succeeded', 'failed', 'processing', 'not_found']),
      refund_id: id.optional(),
      failure_code: z.string().max(128).optional(),
    }),
  }),
]);

export interface SandboxCredentials {
  /** Resolved at call time: the simulator's port changes on every start. */
  simulatorUrl: () => Promise<string>;
  secret: Buffer;
}

const TIMEOUT_MS = 5000;

const FAILURE_CODES: Record<string, FailureCode> = {
  insufficient_funds: 'insufficient_funds',
  invalid_payment_code: 'invalid_payment_code',
  user_canceled: 'user_canceled',
  expired: 'expired',
};

type Answer<T> = { ok: true; body: T } | { ok: false; reason: string; reached: boolean };

async function commit<T>(
  credentials: SandboxCredentials,
  path: string,
  payload: unknown,
): Promise<Answer<T>> {
  const body = JSON.stringify(payload);
  try {
    const res = await send({
      method: 'POST',
      url: `${await credentials.simulatorUrl()}${path}`,
      headers: {
        'content-type': 'application/json',
        [SIGNATURE_HEADER]: signSandbox(credentials.secret, body),
      },
      body,
      timeoutMs: TIMEOUT_MS,
    });
    const verified = verifySandbox(
      credentials.secret,
      res.headers[SIGNATURE_HEADER] as string | undefined,
      res.body,
    );
    if (!verified.ok) return { ok: false, reason: `unverified response: ${verified.reason}`, reached: true };
    const answer = JSON.parse(res.body.toString('utf8')) as T & { status?: unknown };
    // An answer is a 200, or a 404 saying the order is not found; any other status (a refusal of
    // our request, a failure of theirs) tells nothing of the sale.
    if (res.status === 200 || (res.status === 404 && answer.status === 'not_found'))
      return { ok: true, body: answer };
    return { ok: false, reason: `HTTP ${res.status}`, reached: true };
  } catch (error) {
    if (error instanceof TransportError) return { ok: false, reason: error.message, reached: error.reached };
    return { ok: false, reason: (error as Error).message, reached: true };
  }
}

function payRequestOf(
  account: AccountContext<SandboxCredentials>,
  payment: PaymentRequest,
): SandboxPayRequest {
  return {
    request_id: payment.provider_request_id,
    amount: payment.amount.value,
    currency: payment.amount.currency,
    mode: payment.mode,
    payment_code: payment.payment_code,
    notify_url: account.notify_url,
    created_at: payment.created_at.toISOString(),
    expires_at: payment.expires_at.toISOString(),
    store_id: payment.store_id,
  };
}

/** The one table from the sandbox's statuses to our outcomes. */
export function outcomeOf(view: SandboxPaymentView): PaymentOutcome {
  const facts = {
    provider_reference: view.transaction_id,
    wallet_psp: view.wallet_psp,
    customer_amount:
      view.customer_amount !== undefined && view.customer_currency
        ? { value: view.customer_amount, currency: view.customer_currency }
        : undefined,
    exchange_rate: view.exchange_rate,
    paid_at: view.paid_at ? new Date(view.paid_at) : undefined,
  };
  switch (view.status) {
    case 'succeeded':
      return { kind: 'succeeded', ...facts };
    case 'failed':
      return {
        kind: 'failed',
        failure: {
          code: FAILURE_CODES[view.failure_code ?? ''] ?? 'provider_error',
          message: view.failure_message ?? 'The payment failed',
          provider_code: view.failure_code,
        },
        ...facts,
      };
    case 'canceled':
      return { kind: 'canceled', ...facts };
    case 'processing':
      return { kind: 'pending', reason: 'customer is confirming', customer_acted: true, ...facts };
    case 'requires_customer':
      return {
        kind: 'pending',
        reason: 'waiting for the customer to scan',
        qr_code: view.qr_url
          ? { data: view.qr_url, expires_at: new Date(view.qr_expires_at ?? Date.now()) }
          : undefined,
        ...facts,
      };
    case 'not_found':
      return { kind: 'not_found' };
  }
}

function refundOutcomeOf(view: SandboxRefundView): RefundOutcome {
  switch (view.status) {
    case 'succeeded':
      return { kind: 'succeeded', provider_reference: view.refund_id };
    case 'failed':
      return {
        kind: 'failed',
        provider_reference: view.refund_id,
        failure: {
          code: 'provider_error',
          message: `refund refused: ${view.failure_code}`,
          provider_code: view.failure_code,
        },
      };
    case 'processing':
      return { kind: 'pending', provider_reference: view.refund_id };
    case 'not_found':
      return { kind: 'not_found' };
  }
}

/** Its error types and codes by status: the sandbox is our own protocol, so its refusals are API.md's shape. */
const REFUSALS: Record<number, [type: string, code: string]> = {
  400: ['invalid_request', 'notification_invalid'],
  401: ['authentication', 'signature_invalid'],
  404: ['not_found', 'resource_missing'],
};

/** A refused notification, in API.md's error shape. */
function refusal(status: number, message: string): ProviderAck {
  const [type, code] = REFUSALS[status] ?? (status >= 500 ? ['internal', 'internal_error'] : REFUSALS[400]);
  return { status, error: { type, code, message } };
}

export const sandboxAdapter: WalletAdapter<SandboxCredentials> = {
  provider: 'sandbox',
  wallets: ['alipay', 'wechatpay', 'alipayplus'],
  modes: ['scan', 'qr'],
  resolution: {
    poll_schedule_s: [1, 1, 1, 2, 2, 3],
    window_s: { min: 2, default: 30, max: 120 },
    qr_window_s: 120,
    cancel_schedule_s: [1, 2, 3, 5, 5],
    resend_after_not_found_s: 1,
    settlement_delay_days: 1,
  },

  async configure(input) {
    const unknown = Object.keys(input).filter((k) => k !== 'sandbox');
    if (unknown.length)
      throw new CredentialError(unknown[0], `the sandbox provider takes no credentials (got ${unknown[0]})`);
    return { credentials: { sandbox: true }, public_view: { simulator: 'built-in' } };
  },

  load(_stored, sandbox) {
    return sandboxCredentials(sandbox.seed, () => sandbox.simulatorUrl());
  },

  async pay(account, payment) {
    const answer = await commit<SandboxPaymentView>(
      account.credentials,
      '/v1/pay',
      payRequestOf(account, payment),
    );
    if (!answer.ok) return { kind: 'unknown', reason: answer.reason, reached: answer.reached };
    return outcomeOf(answer.body);
  },

  async inquire(account, payment) {
    const answer = await commit<SandboxPaymentView>(account.credentials, '/v1/inquire', {
      request_id: payment.provider_request_id,
      original: payRequestOf(account, payment),
    });
    if (!answer.ok) return { kind: 'unknown', reason: answer.reason, reached: answer.reached };
    return outcomeOf(answer.body);
  },

  async cancel(account, payment): Promise<CancelOutcome> {
    const answer = await commit<SandboxPaymentView>(account.credentials, '/v1/cancel', {
      request_id: payment.provider_request_id,
      original: payRequestOf(account, payment),
    });
    if (!answer.ok) return { kind: 'unknown', reason: answer.reason };
    if (answer.body.status === 'canceled') return { kind: 'canceled' };
    if (answer.body.status === 'not_found')
      return { kind: 'not_found', reason: 'the simulator has no such order' };
    return { kind: 'failed', reason: `cancel answered ${answer.body.status}` };
  },

  async refund(account, refund: RefundRequest) {
    const answer = await commit<SandboxRefundView>(account.credentials, '/v1/refund', {
      refund_request_id: refund.provider_request_id,
      request_id: refund.payment.provider_request_id,
      amount: refund.amount.value,
      currency: refund.amount.currency,
      original: payRequestOf(account, refund.payment),
    } satisfies SandboxRefundRequest);
    if (!answer.ok) return { kind: 'unknown', reason: answer.reason };
    return refundOutcomeOf(answer.body);
  },

  async inquireRefund(account, refund) {
    const answer = await commit<SandboxRefundView>(account.credentials, '/v1/inquire-refund', {
      refund_request_id: refund.provider_request_id,
    });
    if (!answer.ok) return { kind: 'unknown', reason: answer.reason };
    return refundOutcomeOf(answer.body);
  },

  notificationRefusal: (status, message) => refusal(status, message),

  async handleNotification(account, request): Promise<NotificationResult> {
    const header = request.headers[SIGNATURE_HEADER];
    const verified = verifySandbox(
      account.credentials.secret,
      typeof header === 'string' ? header : undefined,
      request.raw_body,
      request.received_at,
    );
    if (!verified.ok) {
      return {
        ok: false,
        reason: verified.reason,
        ack: refusal(401, verified.reason),
      };
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(request.raw_body.toString('utf8'));
    } catch {
      return {
        ok: false,
        reason: 'body is not JSON',
        ack: refusal(400, 'the body is not JSON'),
      };
    }
    const ack = { status: 200, body: JSON.stringify({ received: true }) };
    const kind = (parsed as { type?: unknown } | null)?.type;
    if (kind !== 'payment' && kind !== 'refund') {
      // A message of a kind this gateway does not know is acknowledged, or it would come back forever.
      const notificationId = (parsed as { notification_id?: unknown } | null)?.notification_id;
      if (typeof notificationId === 'string' && id.safeParse(notificationId).success)
        return {
          ok: true,
          ack,
          event: { kind: 'ignored', dedupe_key: notificationId, reason: 'unknown type' },
        };
    }
    const checked = notificationSchema.safeParse(parsed);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      const reason = `malformed notification: ${issue.path.join('.') || 'body'}: ${issue.message}`;
      return { ok: false, reason, ack: refusal(400, `not a sandbox notification: ${reason}`) };
    }
    const message = checked.data;
    if (message.type === 'payment')
      return {
        ok: true,
        ack,
        event: {
          kind: 'payment',
          dedupe_key: message.notification_id,
          provider_request_id: message.payment.request_id,
          outcome: outcomeOf(message.payment),
        },
      };
    return {
      ok: true,
      ack,
      event: {
        kind: 'refund',
        dedupe_key: message.notification_id,
        provider_request_id: message.refund.refund_request_id,
        outcome: refundOutcomeOf(message.refund),
      },
    };
  },

  parseSettlement(file: Readable) {
    return parseSandboxSettlement(file);
  },

  /** The simulator serves each UTC day's settlement file; a real sandbox provider would be asked the same way. */
  async fetchSettlement(account, date) {
    const url = `${await account.credentials.simulatorUrl()}/v1/settlements/${encodeURIComponent(date)}?notify_url=${encodeURIComponent(account.notify_url)}`;
    try {
      const res = await send({
        method: 'GET',
        url,
        timeoutMs: 30_000,
        maxResponseBytes: MAX_FETCHED_FILE_BYTES,
      });
      if (res.status === 404) return null;
      if (res.status !== 200)
        throw new Error(`the simulator answered HTTP ${res.status} for settlements ${date}`);
      return Readable.from([res.body]);
    } catch (error) {
      if (error instanceof TransportError) throw new Error(`settlement fetch failed: ${error.message}`);
      throw error;
    }
  },
};

/** Sandbox credentials are never stored: both sides derive them from the sandbox seed. */
export function sandboxCredentials(seed: Buffer, simulatorUrl: () => Promise<string>): SandboxCredentials {
  return { simulatorUrl, secret: sandboxSecret(seed) };
}
