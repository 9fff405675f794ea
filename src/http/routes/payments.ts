import { type Request, Router } from 'express';
import type { Context } from '../../context.ts';
import { ApiError, notFound } from '../../errors.ts';
import { hasPrefix } from '../../ids.ts';
import { requireQueues } from '../../jobs/queues.ts';
import { prepared } from '../../ledger/db.ts';
import {
  type PaymentRow,
  paymentJson,
  type RefundRow,
  refundJson,
  UNRESOLVED,
} from '../../ledger/payments.ts';
import { createRefund, refundMadeWith } from '../../payments/refunds.ts';
import { createPayment, loadPayment, requestCancel } from '../../payments/service.ts';
import { requireMerchantOrTerminal } from '../auth.ts';
import { idempotencyKeyOf, idempotent, requestHash } from '../idempotency.ts';
import {
  createPaymentSchema,
  createRefundSchema,
  getPaymentQuerySchema,
  listPaymentsQuerySchema,
  listQuerySchema,
} from '../schemas.ts';
import { parse, refuseParameters, refuseQuery } from '../validate.ts';
import { type Condition, listPage } from './lists.ts';

/**
 * A terminal's payments are those taken at its store and till, whichever key created them (a back
 * office may start a sale for the till to follow); its key never sees another till's.
 */
function hiddenFromTerminal(
  principal: ReturnType<typeof requireMerchantOrTerminal>,
  payment: { store_id: string | null; terminal_id: string | null },
): boolean {
  return (
    principal.kind === 'terminal' &&
    (payment.store_id !== principal.store_id || payment.terminal_id !== principal.terminal_id)
  );
}

/** Loads a payment the caller may see; anything else is 404, never 403 (no existence leaks). */
async function visiblePayment(ctx: Context, req: Request, id: string): Promise<PaymentRow> {
  const principal = requireMerchantOrTerminal(req);
  if (!hasPrefix(id, 'pay')) throw notFound('payment', id);
  const { rows } = await ctx.db.query<PaymentRow>(
    prepared('SELECT * FROM payments WHERE id = $1 AND merchant_id = $2', [id, principal.merchant_id]),
  );
  const row = rows[0];
  if (!row || hiddenFromTerminal(principal, row)) throw notFound('payment', id);
  return row;
}

/** API.md: an amount above the configured maximum is a 400, in a payment as in a refund. */
function withinMaximum(ctx: Context, amount: { value: number }): void {
  if (amount.value > ctx.config.maxAmountMinor)
    throw new ApiError(
      'invalid_request',
      'amount_too_large',
      `amount.value must not exceed ${ctx.config.maxAmountMinor}`,
      'amount.value',
    );
}

/**
 * How long a QR sale's answer may wait for its code. API.md lets the create hold "a few seconds";
 * a till has nothing to show without a code, and one comes by inquiry, or by the one permitted
 * resend (Antom: two "not found" at least 2 s apart first), when the creating answer was lost.
 */
const QR_CODE_HOLD_MS = 10_000;

/**
 * A QR sale still `processing` without a code: held until it has one (`requires_customer`) or ends,
 * until QR_CODE_HOLD_MS after the sale began, so the till gets a code to show or an outcome, not a
 * sale it cannot use.
 */
async function codeOrOutcome(ctx: Context, payment: PaymentRow): Promise<PaymentRow> {
  const waitsForCode = (row: PaymentRow) => row.mode === 'qr' && row.status === 'processing' && !row.qr_data;
  // Counted from the sale's start: the provider's creating call has already taken its share.
  const deadline = payment.created_at.getTime() + QR_CODE_HOLD_MS;
  let row = payment;
  // A stopping process answers with the sale as it stands: the code comes by the till's next read.
  const held = () => waitsForCode(row) && ctx.updates.waitsLast;
  for (let left = deadline - Date.now(); held() && left > 0; left = deadline - Date.now()) {
    // Subscribed before the read, so a change in between is not missed.
    const subscription = await ctx.updates.subscribe(row.id, left);
    try {
      row = await loadPayment(ctx, row.id);
      if (!held()) break;
      await subscription.changed;
      row = await loadPayment(ctx, row.id);
    } finally {
      subscription.cancel();
    }
  }
  return row;
}

export function paymentsRouter(ctx: Context): Router {
  const router = Router();

  router.post('/v1/payments', async (req, res) => {
    const principal = requireMerchantOrTerminal(req);
    const key = idempotencyKeyOf(req, true);
    const body = parse(createPaymentSchema, req.body);
    withinMaximum(ctx, body.amount);
    let scope = {
      store_id: body.store_id,
      terminal_id: body.terminal_id,
      terminal_ref: undefined as string | undefined,
    };
    if (principal.kind === 'terminal') {
      for (const field of ['store_id', 'terminal_id'] as const) {
        if (body[field] !== undefined && body[field] !== principal[field]) {
          throw new ApiError(
            'invalid_request',
            'terminal_mismatch',
            `${field} differs from the terminal key's ${field}`,
            field,
          );
        }
      }
      scope = {
        store_id: principal.store_id,
        terminal_id: principal.terminal_id,
        terminal_ref: principal.terminal_ref,
      };
    }
    // Payments keep their Idempotency-Key on the payment row itself (one statement, no extra round trip).
    const { payment, replayed } = await createPayment(ctx, {
      ...body,
      ...scope,
      merchant_id: principal.merchant_id,
      idempotency_key: key,
      request_hash: requestHash(req),
    });
    if (replayed) res.set('Idempotent-Replayed', 'true');
    res.status(replayed ? 200 : 201).json(paymentJson(await codeOrOutcome(ctx, payment)));
  });

  router.get('/v1/payments/:id', async (req, res) => {
    const { wait = 0 } = parse(getPaymentQuerySchema, req.query, 'query');
    const endsAt = Date.now() + wait * 1000;
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let subscription = wait > 0 ? await ctx.updates.subscribe(req.params.id, wait * 1000) : undefined;
    const cancelWait = () => subscription?.cancel();
    res.on('close', cancelWait);
    try {
      let row = await visiblePayment(ctx, req, req.params.id);
      const seen = { status: row.status, at: row.updated_at.getTime() };
      while (subscription && UNRESOLVED.includes(row.status)) {
        const published = await subscription.changed;
        subscription.cancel();
        if (!published) {
          row = await visiblePayment(ctx, req, row.id);
          break;
        }
        const news = JSON.parse(published) as { status: string; updated_at: string };
        if (news.status !== seen.status && Date.parse(news.updated_at) > seen.at) {
          res.type('application/json').send(published);
          return;
        }
        // News of a change made before the read (its publish is not awaited, and may come after
        // it): nothing the till does not know, so the wait goes on for what is left of it.
        const left = endsAt - Date.now();
        subscription = left > 0 ? await ctx.updates.subscribe(row.id, left) : undefined;
        row = await visiblePayment(ctx, req, row.id);
        if (row.status !== seen.status || res.closed) break;
      }
      res.json(paymentJson(row));
    } finally {
      res.off('close', cancelWait);
      subscription?.cancel();
    }
  });

  router.get('/v1/payments', async (req, res) => {
    const principal = requireMerchantOrTerminal(req);
    const query = parse(listPaymentsQuerySchema, req.query, 'query');
    const owner: Condition[] = [['merchant_id = ?', principal.merchant_id]];
    if (principal.kind === 'terminal')
      owner.push(['store_id = ?', principal.store_id], ['terminal_id = ?', principal.terminal_id]);
    const filters: Condition[] = [];
    if (query.status) filters.push(['status = ?', query.status]);
    if (query.store_id) filters.push(['store_id = ?', query.store_id]);
    if (query.terminal_id) filters.push(['terminal_id = ?', query.terminal_id]);
    if (query.created_gte) filters.push(['created_at >= ?', new Date(query.created_gte)]);
    if (query.created_lt) filters.push(['created_at < ?', new Date(query.created_lt)]);
    res.json(await listPage<PaymentRow>(ctx, 'payments', { owner, filters }, query, paymentJson));
  });

  router.post('/v1/payments/:id/cancel', async (req, res) => {
    const payment = await visiblePayment(ctx, req, req.params.id);
    const key = idempotencyKeyOf(req, false);
    refuseParameters(req.body);
    await idempotent(ctx, req, res, payment.merchant_id, `cancel:${payment.id}`, key, async (tookOver) => {
      try {
        const { payment: after, confirmed } = await requestCancel(ctx, payment);
        return { status: confirmed ? 200 : 202, body: paymentJson(after) };
      } catch (error) {
        // The retry of a cancel whose process died unanswered: the sale it asked to cancel was
        // cancelled meanwhile (by that very cancel, carried on by the worker), which is its answer,
        // not the 409 of a cancel that came too late.
        const now = tookOver && error instanceof ApiError ? await loadPayment(ctx, payment.id) : undefined;
        if (now?.status === 'canceled') return { status: 200, body: paymentJson(now) };
        throw error;
      }
    });
  });

  router.post('/v1/payments/:id/refunds', async (req, res) => {
    const payment = await visiblePayment(ctx, req, req.params.id);
    const principal = req.principal;
    if (principal?.kind === 'terminal' && !principal.can_refund) {
      throw new ApiError(
        'permission',
        'refunds_not_allowed',
        'this terminal key was not created with can_refund',
      );
    }
    const key = idempotencyKeyOf(req, true);
    const body = parse(createRefundSchema, req.body ?? {});
    if (body.amount) withinMaximum(ctx, body.amount);
    await idempotent(
      ctx,
      req,
      res,
      payment.merchant_id,
      `refunds:${payment.id}`,
      key,
      async () => {
        // Inside, so a retry of a refund already made gets its stored answer, not this refusal.
        requireQueues(ctx.queues);
        const { refund, created } = await createRefund(ctx, payment.id, body.amount, body.reason, key);
        if (created) return { status: 201, body: refundJson(refund) };
        // Made by this key's first request, whose process died before it answered.
        return { status: 200, body: refundJson(refund), headers: { 'Idempotent-Replayed': 'true' } };
      },
      {
        // A till retrying a refund learns how it ended, as a payment's replay does.
        current: async (stored) => {
          const { rows } = await ctx.db.query<RefundRow>('SELECT * FROM refunds WHERE id = $1', [
            (stored as { id: string }).id,
          ]);
          return rows[0] ? refundJson(rows[0]) : stored;
        },
        decided: async () => {
          const made = await refundMadeWith(ctx.db, payment.id, key);
          // A pending refund's first answer is stored once its checks are scheduled (poll_step).
          return made && (made.status !== 'pending' || made.poll_step > 0) ? refundJson(made) : undefined;
        },
      },
    );
  });

  // A payment's refunds, newest first (an addition to API.md): what a till that lost a refund's
  // answer, or a merchant's back office, looks at.
  router.get('/v1/payments/:id/refunds', async (req, res) => {
    const payment = await visiblePayment(ctx, req, req.params.id);
    const query = parse(listQuerySchema, req.query, 'query');
    const owner: Condition[] = [
      ['merchant_id = ?', payment.merchant_id],
      ['payment_id = ?', payment.id],
    ];
    res.json(await listPage<RefundRow>(ctx, 'refunds', { owner }, query, refundJson));
  });

  router.get('/v1/refunds/:id', async (req, res) => {
    const principal = requireMerchantOrTerminal(req);
    refuseQuery(req.query);
    const id = req.params.id;
    const { rows } = await ctx.db.query<RefundRow & { store_id: string | null; terminal_id: string | null }>(
      `SELECT r.*, p.store_id, p.terminal_id FROM refunds r JOIN payments p ON p.id = r.payment_id
        WHERE r.id = $1 AND r.merchant_id = $2`,
      [id, principal.merchant_id],
    );
    const row = rows[0];
    if (!row || hiddenFromTerminal(principal, row)) throw notFound('refund', id);
    res.json(refundJson(row));
  });

  return router;
}
