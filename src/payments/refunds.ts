/**
 * Refunds: the sum of non-failed refunds never exceeds what was captured, also under concurrent
 * requests, because the check and the insert happen under a row lock on the payment.
 */
import type { RefundOutcome, RefundRequest } from '../../adapters/contract.ts';
import type { Context } from '../context.ts';
import { ApiError } from '../errors.ts';
import { newId } from '../ids.ts';
import { enqueue, enqueueDue, ensureJob, sweepEach } from '../jobs/queues.ts';
import { inTransaction, type Queryable } from '../ledger/db.ts';
import {
  CAPTURED,
  type PaymentRow,
  type PaymentStatus,
  paymentRequestOf,
  type RefundRow,
  refundJson,
} from '../ledger/payments.ts';
import type { LoadedAccount } from './accounts.ts';
import type { Money } from './money.ts';
import {
  alertAccountRefused,
  alertOnce,
  callProvider,
  IN_FLIGHT_GRACE_S,
  loadPayment,
  raiseAlert,
  storeProviderAnswer,
} from './service.ts';
import { announce, recordEvent, transitionIn, writeOutbox } from './state-machine.ts';

const REFUND_POLL_S = [1, 2, 3, 5, 10, 30, 60];
/** After this many inquiries without an answer a human is told; polling goes on. */
const REFUND_ALERT_AFTER = 20;

/** The refund of a payment that a request with this Idempotency-Key made, if one did. */
export async function refundMadeWith(
  db: Queryable,
  paymentId: string,
  idempotencyKey: string,
): Promise<RefundRow | undefined> {
  const { rows } = await db.query<RefundRow>(
    'SELECT * FROM refunds WHERE payment_id = $1 AND idempotency_key = $2',
    [paymentId, idempotencyKey],
  );
  return rows[0];
}

/**
 * Makes a refund and sends it to the provider; `created` is false when the request's
 * Idempotency-Key already made one (its process died before answering): that refund is returned
 * as it is now, and the sweeper sees it through as it does any pending refund.
 */
export async function createRefund(
  ctx: Context,
  paymentId: string,
  amount: Money | undefined,
  reason: string | undefined,
  idempotencyKey: string,
): Promise<{ refund: RefundRow; created: boolean }> {
  const made = await inTransaction(ctx.db, async (client) => {
    const { rows } = await client.query<PaymentRow>('SELECT * FROM payments WHERE id = $1 FOR UPDATE', [
      paymentId,
    ]);
    const payment = rows[0];
    // Before any check: the refund left behind may have taken all that could be refunded.
    const left = await refundMadeWith(client, paymentId, idempotencyKey);
    if (left) return { refund: left, created: false };
    if (!CAPTURED.includes(payment.status)) {
      throw new ApiError(
        'conflict',
        'payment_not_captured',
        `payment ${paymentId} is ${payment.status}; only a succeeded payment can be refunded`,
      );
    }
    if (amount && amount.currency !== payment.currency) {
      throw new ApiError(
        'invalid_request',
        'currency_mismatch',
        `refund currency must be the payment's (${payment.currency})`,
        'amount.currency',
      );
    }
    const { rows: sums } = await client.query<{ reserved: number }>(
      `SELECT COALESCE(SUM(amount_value), 0)::bigint AS reserved FROM refunds WHERE payment_id = $1 AND status <> 'failed'`,
      [paymentId],
    );
    const remaining = payment.amount_value - sums[0].reserved;
    if (remaining <= 0)
      throw new ApiError(
        'conflict',
        'payment_fully_refunded',
        `payment ${paymentId} has nothing left to refund`,
      );
    const value = amount?.value ?? remaining;
    if (value > remaining) {
      throw new ApiError(
        'unprocessable',
        // Not `amount_too_large`, the 400 of an amount above the configured maximum: this one is
        // valid, only more than what is left of this payment.
        'amount_exceeds_refundable',
        `at most ${remaining} ${payment.currency} minor units can still be refunded`,
        'amount.value',
      );
    }
    const id = newId('re');
    const inserted = await client.query<RefundRow>(
      `INSERT INTO refunds (id, payment_id, merchant_id, amount_value, currency, status, reason, provider_request_id,
                            idempotency_key)
       VALUES ($1, $2, $3, $4, $5, 'pending', $6, $1, $7) RETURNING *`,
      [id, paymentId, payment.merchant_id, value, payment.currency, reason ?? null, idempotencyKey],
    );
    await recordEvent(
      client,
      paymentId,
      payment.status,
      payment.status,
      'refund requested',
      { amount: value },
      id,
    );
    return { refund: inserted.rows[0], created: true };
  });
  if (!made.created) return made;
  return { refund: await sendRefund(ctx, made.refund.id), created: true };
}

async function loadRefundWithPayment(ctx: Context, refundId: string) {
  const { rows } = await ctx.db.query<RefundRow>('SELECT * FROM refunds WHERE id = $1', [refundId]);
  const refund = rows[0];
  const payment = (
    await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [refund.payment_id])
  ).rows[0];
  const account = await ctx.accounts.get(payment.provider_account_id);
  if (!account) throw new Error(`payment ${payment.id} has no provider account`);
  return { refund, payment, account };
}

function refundRequestOf(refund: RefundRow, payment: PaymentRow): RefundRequest {
  return {
    refund_id: refund.id,
    provider_request_id: refund.provider_request_id,
    payment: paymentRequestOf(payment, undefined, payment.resolve_by),
    amount: { value: refund.amount_value, currency: refund.currency },
    reason: refund.reason ?? undefined,
    created_at: refund.created_at,
    provider_reference: refund.provider_reference ?? undefined,
  };
}

function askProvider(
  ctx: Context,
  account: LoadedAccount,
  op: 'refund' | 'inquireRefund',
  request: RefundRequest,
): Promise<RefundOutcome> {
  return callProvider(
    ctx,
    account.row.provider,
    op,
    { refund_id: request.refund_id },
    () => account.module.adapter[op](account.context, request),
    (e): RefundOutcome => ({ kind: 'unknown', reason: e.message }),
  );
}

/** Sends (or re-sends, with the same request id) a pending refund. */
export async function sendRefund(ctx: Context, refundId: string): Promise<RefundRow> {
  const { refund, payment, account } = await loadRefundWithPayment(ctx, refundId);
  if (refund.status !== 'pending') return refund;
  const outcome = await askProvider(ctx, account, 'refund', refundRequestOf(refund, payment));
  return storeProviderAnswer(ctx, () => applyRefundOutcome(ctx, refund.id, outcome, 'refund'), {
    refund_id: refund.id,
  });
}

/** One check of a pending refund; `step` is the poll step its job was queued for. */
export async function resolveRefund(ctx: Context, refundId: string, step?: number): Promise<void> {
  const { refund, payment, account } = await loadRefundWithPayment(ctx, refundId);
  if (refund.status !== 'pending') return;
  // Only the job of the current step acts (see resolvePayment).
  if (step !== undefined && step !== refund.poll_step) return;
  const outcome = await askProvider(ctx, account, 'inquireRefund', refundRequestOf(refund, payment));
  // The provider never saw it: sending the identical request (same refund id) again is safe.
  if (outcome.kind === 'not_found') {
    await sendRefund(ctx, refundId);
    return;
  }
  await applyRefundOutcome(ctx, refundId, outcome, 'inquiry');
}

/**
 * A success the ledger cannot take as it is, for an operator: the provider says it refunded another
 * amount than asked (the refund is recorded as asked; the settlement file will show what moved), or
 * it reports a success for a refund the ledger holds as failed, whose customer may be repaid twice
 * if the merchant repays by other means. `applied`: whether this success just decided `refund`.
 */
async function alertOddSuccess(
  ctx: Context,
  outcome: Extract<RefundOutcome, { kind: 'succeeded' }>,
  refund: RefundRow | undefined,
  applied: boolean,
): Promise<void> {
  if (!refund) return;
  const reported = outcome.amount;
  if (reported && (reported.value !== refund.amount_value || reported.currency !== refund.currency))
    await alertOnce(
      ctx,
      'refund_amount_mismatch',
      `the provider reports refund ${refund.id} of ${refund.amount_value} ${refund.currency} (minor units) as a refund of ${reported.value} ${reported.currency}`,
      { refund_id: refund.id },
    );
  if (!applied && refund.status === 'failed')
    await alertOnce(
      ctx,
      'late_refund_success',
      `the provider reports refund ${refund.id} as succeeded, but it failed here (${refund.failure_code}): the customer may have been repaid`,
      { refund_id: refund.id },
    );
}

export async function applyRefundOutcome(
  ctx: Context,
  refundId: string,
  outcome: RefundOutcome,
  source: string,
): Promise<RefundRow> {
  if (outcome.kind === 'succeeded' || outcome.kind === 'failed') {
    const result = await inTransaction(ctx.db, async (client) => {
      const status = outcome.kind;
      const { rows } = await client.query<RefundRow>(
        `UPDATE refunds SET status = $2, provider_reference = COALESCE($3, provider_reference),
                failure_code = $4, failure_message = $5, next_check_at = NULL, updated_at = now()
          WHERE id = $1 AND status = 'pending' RETURNING *`,
        [
          refundId,
          status,
          outcome.provider_reference ?? null,
          outcome.kind === 'failed' ? outcome.failure.code : null,
          outcome.kind === 'failed' ? outcome.failure.message : null,
        ],
      );
      const refund = rows[0];
      if (!refund) return { refund: undefined, payment: undefined };
      await writeOutbox(client, refund.merchant_id, `refund.${status}`, refundJson(refund));
      if (status === 'failed') {
        // The payment stays as it is (succeeded, or partly refunded by an earlier refund).
        const { rows: held } = await client.query<{ status: PaymentStatus }>(
          'SELECT status FROM payments WHERE id = $1',
          [refund.payment_id],
        );
        await recordEvent(
          client,
          refund.payment_id,
          held[0].status,
          held[0].status,
          `${source}: refund failed`,
          {},
          refund.id,
        );
        return { refund, payment: undefined };
      }
      const { rows: paid } = await client.query<PaymentRow>(
        'UPDATE payments SET amount_refunded = amount_refunded + $2 WHERE id = $1 RETURNING *',
        [refund.payment_id, refund.amount_value],
      );
      const to = paid[0].amount_refunded >= paid[0].amount_value ? 'refunded' : 'partially_refunded';
      const payment = await transitionIn(
        client,
        refund.payment_id,
        to,
        `${source}: refund ${refund.id} succeeded`,
        {},
        {
          refund_id: refund.id,
          amount: refund.amount_value,
        },
      );
      return { refund, payment };
    });
    if (result.payment) announce(ctx, result.payment);
    const refund =
      result.refund ??
      (await ctx.db.query<RefundRow>('SELECT * FROM refunds WHERE id = $1', [refundId])).rows[0];
    if (outcome.kind === 'succeeded')
      await alertOddSuccess(ctx, outcome, refund, result.refund !== undefined);
    if (outcome.kind === 'failed' && outcome.failure.configuration && result.refund)
      await alertAccountRefused(ctx, await loadPayment(ctx, result.refund.payment_id), outcome.failure);
    return refund;
  }
  // pending or unknown: inquire later, on a widening schedule, never giving up.
  const { rows } = await ctx.db.query<RefundRow>(
    `UPDATE refunds SET poll_step = poll_step + 1, provider_reference = COALESCE($2, provider_reference),
            next_check_at = now() + make_interval(secs => ($3::int[])[LEAST(poll_step + 1, cardinality($3::int[]))]),
            -- Moved only by what the refund shows, not by the polling (a replay shows what was answered).
            updated_at = CASE WHEN $2::text IS DISTINCT FROM provider_reference AND $2 IS NOT NULL
                              THEN now() ELSE updated_at END
      WHERE id = $1 AND status = 'pending' RETURNING *`,
    [refundId, 'provider_reference' in outcome ? (outcome.provider_reference ?? null) : null, REFUND_POLL_S],
  );
  const refund = rows[0];
  if (!refund)
    return (await ctx.db.query<RefundRow>('SELECT * FROM refunds WHERE id = $1', [refundId])).rows[0];
  const delayS = REFUND_POLL_S[Math.min(refund.poll_step, REFUND_POLL_S.length) - 1];
  if (refund.poll_step === REFUND_ALERT_AFTER) {
    await raiseAlert(ctx, 'refund_unknown', `refund still unresolved after ${REFUND_ALERT_AFTER} inquiries`, {
      payment_id: refund.payment_id,
      refund_id: refund.id,
    });
  }
  await enqueueDue(
    ctx,
    'resolve',
    { refund_id: refund.id, step: refund.poll_step },
    { delayMs: delayS * 1000, jobId: `refund:${refund.id}:${refund.poll_step}` },
  );
  return refund;
}

/**
 * The sweeper's share of refunds: a pending refund whose next check is long overdue lost its job
 * (crash, Redis outage or flush), and one never checked at all lost the request that created it.
 * Either is inquired again; a refund the provider never saw is then sent, under the same id.
 */
export async function sweepPendingRefunds(ctx: Context, graceMs = 5000): Promise<number> {
  const { rows } = await ctx.db.query<{ id: string; poll_step: number }>(
    `SELECT id, poll_step FROM refunds
      WHERE status = 'pending'
        AND COALESCE(next_check_at, created_at + make_interval(secs => $2)) < now() - make_interval(secs => $1)
      ORDER BY created_at LIMIT 500`,
    [graceMs / 1000, IN_FLIGHT_GRACE_S],
  );
  return sweepEach(ctx, rows, 'a refund', async (row) => {
    await ctx.db.query('UPDATE refunds SET next_check_at = now() WHERE id = $1', [row.id]);
    // The job of the refund's current step (as scheduled above): revived if lost, left alone if
    // still queued or running, so the refund is never inquired or sent twice at once.
    const jobId = `refund:${row.id}:${row.poll_step}`;
    const job = await ensureJob(ctx.queues, 'resolve', jobId, () =>
      enqueue(ctx.queues, 'resolve', { refund_id: row.id, step: row.poll_step }, { jobId }),
    );
    return job === 'added';
  });
}
