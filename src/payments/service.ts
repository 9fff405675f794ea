/**
 * The payments core: it owns state and drives each payment to a final status. Adapters only
 * translate; every decision about what happens next (inquire, resend the identical request,
 * cancel at the end of the window, alert a human) is taken here, from their outcomes.
 */
import type {
  CancelOutcome,
  Failure,
  PaymentFacts,
  PaymentOutcome,
  PaymentRequest,
  ResolutionPolicy,
  Wallet,
} from '../../adapters/contract.ts';
import type { Context } from '../context.ts';
import { ApiError, idempotencyInProgress, idempotencyKeyReused } from '../errors.ts';
import { newId } from '../ids.ts';
import { enqueue, enqueueDue, ensureJob, queuesUnavailable, sweepEach } from '../jobs/queues.ts';
import {
  inTransaction,
  isInfrastructureError,
  lockUntilCommit,
  prepared,
  retryWhileUnavailable,
} from '../ledger/db.ts';
import { type PaymentRow, paymentRequestOf, UNRESOLVED } from '../ledger/payments.ts';
import { maskPaymentCode, open, seal } from '../secrets.ts';
import { CredentialsUnreadableError, type LoadedAccount } from './accounts.ts';
import type { Money } from './money.ts';
import { walletForPaymentCode } from './routing.ts';
import { FINAL, type PaymentPatch, recordEvent, transition, updatePayment } from './state-machine.ts';

export interface NewPayment {
  merchant_id: string;
  terminal_ref?: string;
  store_id?: string;
  terminal_id?: string;
  amount: Money;
  reference: string;
  mode: 'scan' | 'qr';
  payment_code?: string;
  wallet?: Wallet;
  description?: string;
  metadata?: Record<string, string>;
  idempotency_key: string;
  /** Hash of the request that carried the key: the same key with another request is refused. */
  request_hash: string;
}

type Ctx = Context;
type Source = 'pay' | 'inquiry' | 'notification' | 'resend' | 'cancel';

/** Longer than any adapter's request timeout: until then a new payment or refund may still be in its first send. */
export const IN_FLIGHT_GRACE_S = 30;

const paymentCodeContext = (paymentId: string) => `payment-code:${paymentId}`;

export function resolutionWindowS(
  policy: ResolutionPolicy,
  mode: 'scan' | 'qr',
  configured: number | undefined,
): number {
  if (mode === 'qr') return policy.qr_window_s;
  const { min, max } = policy.window_s;
  return Math.min(max, Math.max(min, configured ?? policy.window_s.default));
}

function chooseWallet(input: NewPayment): Wallet {
  if (input.mode === 'qr') {
    if (!input.wallet)
      throw new ApiError(
        'invalid_request',
        'parameter_missing',
        'wallet is required with mode "qr"',
        'wallet',
      );
    return input.wallet;
  }
  const detected = walletForPaymentCode(input.payment_code ?? '');
  if (input.wallet && input.wallet !== detected) {
    throw new ApiError(
      'invalid_request',
      'wallet_mismatch',
      `the payment code belongs to ${detected}, not ${input.wallet}`,
      'wallet',
    );
  }
  return input.wallet ?? detected;
}

export async function loadPayment(ctx: Ctx, paymentId: string): Promise<PaymentRow> {
  const { rows } = await ctx.db.query<PaymentRow>(
    prepared('SELECT * FROM payments WHERE id = $1', [paymentId]),
  );
  if (!rows[0]) throw new Error(`payment ${paymentId} vanished`);
  return rows[0];
}

function requestFor(ctx: Ctx, row: PaymentRow): PaymentRequest {
  const code = row.payment_code_sealed
    ? open(ctx.config.masterKey, row.payment_code_sealed, paymentCodeContext(row.id))
    : undefined;
  const expiresAt = row.mode === 'qr' && row.qr_expires_at ? row.qr_expires_at : row.resolve_by;
  return paymentRequestOf(row, code, expiresAt);
}

/** Wraps a provider call with latency metrics and turns a thrown bug into an unknown outcome. */
export async function callProvider<T extends { kind: string }>(
  ctx: Ctx,
  provider: string,
  operation: string,
  subject: { payment_id: string } | { refund_id: string },
  work: () => Promise<T>,
  onThrow: (e: Error) => T,
): Promise<T> {
  const stop = ctx.metrics.providerCallDuration.startTimer({ provider, operation });
  try {
    const result = await work();
    stop({ outcome: result.kind });
    return result;
  } catch (error) {
    stop({ outcome: 'error' });
    ctx.log.error(
      { err: error, provider, operation, ...subject },
      'adapter threw; treating the outcome as unknown',
    );
    return onThrow(error as Error);
  }
}

/** Sends the payment's pay request; a call that throws is an unknown outcome. */
function payWith(ctx: Ctx, account: LoadedAccount, request: PaymentRequest): Promise<PaymentOutcome> {
  return callProvider(
    ctx,
    account.row.provider,
    'pay',
    { payment_id: request.payment_id },
    () => account.module.adapter.pay(account.context, request),
    (e): PaymentOutcome => ({ kind: 'unknown', reason: e.message, reached: true }),
  );
}

const sameMoney = (money: Money, row: PaymentRow) =>
  money.value === row.amount_value && money.currency === row.currency;

/** What the provider reports paid, when it reports a success for another amount than the sale's. */
function otherAmount(outcome: PaymentOutcome, row: PaymentRow): Money | undefined {
  return outcome.kind === 'succeeded' && outcome.amount && !sameMoney(outcome.amount, row)
    ? outcome.amount
    : undefined;
}

/** The provider's final word on the sale: a success for another amount than the sale's is none. */
function decides(outcome: PaymentOutcome, row: PaymentRow): boolean {
  if (outcome.kind === 'succeeded') return otherAmount(outcome, row) === undefined;
  return outcome.kind === 'failed' || outcome.kind === 'canceled';
}

function alertAmountMismatch(ctx: Ctx, row: PaymentRow, amount: Money) {
  return alertOnce(
    ctx,
    'amount_mismatch',
    `the provider reports payment ${row.id} succeeded for ${amount.value} ${amount.currency}, not ${row.amount_value} ${row.currency}; it is not taken as paid`,
    { payment_id: row.id },
  );
}

/**
 * Inserts an alert with `insert` (an INSERT … WHERE NOT EXISTS an open one) under a lock on
 * `kind` and `scope`: the work that raises it is retried, and reports race (a notification beside
 * an inquiry, sales failing side by side), so the look and the insert hold a lock on what they
 * look at. Logged when raised.
 */
async function raiseUnlessOpen(
  ctx: Ctx,
  kind: string,
  scope: string,
  detail: string,
  logged: Record<string, string | null>,
  insert: { sql: string; params: unknown[] },
): Promise<void> {
  const raised = await inTransaction(ctx.db, async (client) => {
    await lockUntilCommit(client, `alert:${kind}:${scope}`);
    const { rowCount } = await client.query(insert.sql, insert.params);
    return rowCount === 1;
  });
  if (raised) ctx.log.error({ alert: kind, ...logged }, detail);
}

/** An alert of `kind` naming a payment, or a refund (and its payment), unless one is still open for it. */
export function alertOnce(
  ctx: Ctx,
  kind: string,
  detail: string,
  ids: { payment_id: string } | { refund_id: string },
): Promise<void> {
  const refundId = 'refund_id' in ids ? ids.refund_id : null;
  const paymentId = 'payment_id' in ids ? ids.payment_id : null;
  return raiseUnlessOpen(
    ctx,
    kind,
    refundId ?? (paymentId as string),
    detail,
    { payment_id: paymentId, refund_id: refundId },
    {
      sql: `INSERT INTO alerts (kind, payment_id, refund_id, detail)
            SELECT $1, COALESCE($2, (SELECT payment_id FROM refunds WHERE id = $3)), $3, $4
             WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE kind = $1 AND resolved_at IS NULL
                                  AND CASE WHEN $3::text IS NULL THEN payment_id = $2 AND refund_id IS NULL
                                           ELSE refund_id = $3 END)`,
      params: [kind, paymentId, refundId, detail],
    },
  );
}

/**
 * The provider refused the account's set-up: one alert an account (naming the first sale it
 * failed, or whose refund it failed) until a person resolves it, not one a sale.
 */
export function alertAccountRefused(ctx: Ctx, payment: PaymentRow, failure: Failure): Promise<void> {
  const kind = 'provider_configuration';
  const detail = `${payment.provider} refused provider account ${payment.provider_account_id} itself (${failure.provider_code}: ${failure.message}): every sale on it fails until its credentials or contract are fixed (PUT /v1/providers/${payment.provider})`;
  return raiseUnlessOpen(
    ctx,
    kind,
    payment.provider_account_id,
    detail,
    { payment_id: payment.id },
    {
      sql: `INSERT INTO alerts (kind, payment_id, detail)
          SELECT $1, $2, $3
           WHERE NOT EXISTS (SELECT 1 FROM alerts a JOIN payments p ON p.id = a.payment_id
                              WHERE a.kind = $1 AND a.resolved_at IS NULL AND p.provider_account_id = $4)`,
      params: [kind, payment.id, detail, payment.provider_account_id],
    },
  );
}

export async function raiseAlert(
  ctx: Ctx,
  kind: string,
  detail: string,
  ids: { payment_id?: string; refund_id?: string },
) {
  ctx.log.error({ alert: kind, ...ids }, detail);
  await ctx.db.query('INSERT INTO alerts (kind, payment_id, refund_id, detail) VALUES ($1, $2, $3, $4)', [
    kind,
    ids.payment_id ?? null,
    ids.refund_id ?? null,
    detail,
  ]);
}

/**
 * Idempotency-Key semantics of `POST /v1/payments`, kept on the payment itself: the same key
 * with another request is 422; while the first request is still running, 409; afterwards (or
 * once a dead request's lease has passed, or the sale is final) the payment as it is now.
 */
async function replayOf(ctx: Ctx, input: NewPayment): Promise<PaymentRow | undefined> {
  const { rows } = await ctx.db.query<PaymentRow & { lease_over: boolean }>(
    prepared(
      `SELECT *, created_at < now() - make_interval(secs => $3) AS lease_over
         FROM payments WHERE merchant_id = $1 AND idempotency_key = $2`,
      [input.merchant_id, input.idempotency_key, IN_FLIGHT_GRACE_S],
    ),
  );
  if (!rows[0]) return undefined;
  const { lease_over: leaseOver, ...existing } = rows[0];
  if (existing.request_hash !== input.request_hash) throw idempotencyKeyReused();
  // A sale already final (its request died, and the sweeper ended it) has nothing left to wait for.
  if (!existing.request_done && !leaseOver && !FINAL.has(existing.status)) throw idempotencyInProgress();
  return existing;
}

/**
 * A sale about to be refused: the retry of one already taken (before the wallet rules tightened,
 * the merchant's accounts changed or Redis went away) still gets that sale; a new one gets `refusal`.
 */
async function replayOrRefuse(
  ctx: Ctx,
  input: NewPayment,
  refusal: unknown,
): Promise<{ payment: PaymentRow; replayed: boolean }> {
  const replay = await replayOf(ctx, input);
  if (!replay) throw refusal;
  return { payment: replay, replayed: true };
}

export async function createPayment(
  ctx: Ctx,
  input: NewPayment,
): Promise<{ payment: PaymentRow; replayed: boolean }> {
  let wallet: Wallet;
  try {
    wallet = chooseWallet(input);
  } catch (error) {
    return replayOrRefuse(ctx, input, error);
  }
  let candidates: LoadedAccount[];
  try {
    candidates = await ctx.accounts.candidates(input.merchant_id, wallet, input.amount.currency, input.mode);
  } catch (error) {
    // A retry of a sale taken before the key was lost still gets its payment.
    if (error instanceof CredentialsUnreadableError) return replayOrRefuse(ctx, input, error);
    throw error;
  }
  if (candidates.length === 0)
    return replayOrRefuse(
      ctx,
      input,
      new ApiError(
        'unprocessable',
        'no_provider_account',
        `no provider account serves ${wallet} in ${input.amount.currency} for mode "${input.mode}"`,
        'wallet',
      ),
    );
  if (!ctx.queues.reachable()) return replayOrRefuse(ctx, input, queuesUnavailable());
  const first = candidates[0];
  const id = newId('pay');
  const windowS = resolutionWindowS(
    first.module.adapter.resolution,
    input.mode,
    ctx.config.resolutionWindowS,
  );
  // One statement stores the payment and its first event; a retry whose first attempt died after
  // storing it (same Idempotency-Key) finds that payment instead of creating another.
  const { rows } = await ctx.db.query<PaymentRow>(
    prepared(
      `WITH p AS (
       INSERT INTO payments (id, merchant_id, terminal_ref, store_id, terminal_id, provider_account_id, provider, wallet,
         mode, status, amount_value, currency, reference, description, metadata, payment_code_masked,
         payment_code_sealed, provider_request_id, resolve_by, pay_answered, next_check_at, idempotency_key,
         request_hash, request_done)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'processing', $10, $11, $12, $13, $14, $15, $16, $1,
               now() + make_interval(secs => $17), false, now() + make_interval(secs => $18), $19, $20, false)
       ON CONFLICT (merchant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
       RETURNING *),
     e AS (
       INSERT INTO payment_events (payment_id, to_status, cause, detail)
       SELECT id, 'processing', 'created', jsonb_build_object('provider_account_id', provider_account_id) FROM p)
     SELECT * FROM p`,
      [
        id,
        input.merchant_id,
        input.terminal_ref ?? null,
        input.store_id ?? null,
        input.terminal_id ?? null,
        first.row.id,
        first.row.provider,
        wallet,
        input.mode,
        input.amount.value,
        input.amount.currency,
        input.reference,
        input.description ?? null,
        input.metadata ?? {},
        input.payment_code ? maskPaymentCode(input.payment_code) : null,
        input.payment_code ? seal(ctx.config.masterKey, input.payment_code, paymentCodeContext(id)) : null,
        windowS,
        // The sweeper leaves the payment alone while this request may still be talking to the
        // provider, but not past its window: a request that died must not keep it open longer.
        Math.min(IN_FLIGHT_GRACE_S, windowS),
        input.idempotency_key,
        input.request_hash,
      ],
    ),
  );
  const row = rows[0];
  if (!row) {
    const replay = await replayOf(ctx, input);
    if (!replay) throw new Error(`payment with Idempotency-Key ${input.idempotency_key} vanished`);
    return { payment: replay, replayed: true };
  }
  return { payment: await sendToProvider(ctx, row, candidates, input.payment_code), replayed: false };
}

/** Sends the payment, failing over only while the request provably never reached a provider. */
async function sendToProvider(
  ctx: Ctx,
  row: PaymentRow,
  candidates: LoadedAccount[],
  code?: string,
): Promise<PaymentRow> {
  let current = row;
  for (const [index, account] of candidates.entries()) {
    if (index > 0) {
      const windowS = resolutionWindowS(
        account.module.adapter.resolution,
        row.mode,
        ctx.config.resolutionWindowS,
      );
      current =
        (await updatePayment(ctx.db, row.id, {
          provider_account_id: account.row.id,
          provider: account.row.provider,
          resolve_by: new Date(row.created_at.getTime() + windowS * 1000),
        })) ?? current;
      await recordEvent(ctx.db, row.id, 'processing', 'processing', 'failover', {
        provider_account_id: account.row.id,
      });
    }
    const request = paymentRequestOf(current, code, current.resolve_by);
    const send = () => payWith(ctx, account, request);
    let outcome = await send();
    if (row.mode === 'qr')
      outcome = await retryQrCreation(ctx, row, account.module.adapter.resolution, outcome, send);
    if (outcome.kind === 'unknown' && !outcome.reached) {
      ctx.log.warn(
        { payment_id: row.id, account: account.row.id, reason: outcome.reason },
        'provider unreachable',
      );
      continue;
    }
    // The provider may have taken the money: a moment without PostgreSQL must not turn what it
    // said into a 503 for the till and a sale left open until the sweeper finds it.
    return storeProviderAnswer(ctx, () => applyOutcome(ctx, current, account, outcome, 'pay'), {
      payment_id: row.id,
    });
  }
  // No provider was reached at all, so nobody can have charged the customer: say so at once.
  const unreachable: PaymentOutcome = {
    kind: 'failed',
    failure: { code: 'provider_error', message: 'no payment provider could be reached; nothing was charged' },
  };
  return applyOutcome(ctx, current, candidates[candidates.length - 1], unreachable, 'pay');
}

/**
 * Longer than a cancel attempt with its inquiry may take: the check queued when a cancel starts
 * (and one brought forward for an outcome held meanwhile) comes after it, never beside it.
 */
const CANCEL_ATTEMPT_S = 15;

/** How long a provider's answer to a pay or refund is retried into a PostgreSQL out of reach, the till waiting. */
const OUTCOME_STORE_BUDGET_MS = 5_000;

/** How long it is retried after that, the till answered 503: beyond the 30 s a dead request's lock lasts. */
const OUTCOME_STORE_LATER_MS = 60_000;

/**
 * Stores a provider's answer to a pay or refund, retried while PostgreSQL is out of reach. Past
 * OUTCOME_STORE_BUDGET_MS the till gets its 503, and the answer is still stored as soon as
 * PostgreSQL is back: the till's retry then finds the request done (a replay with the outcome)
 * rather than held (409 until its lock lapses) and the sale waiting for the sweeper to ask again.
 */
export async function storeProviderAnswer<T>(
  ctx: Ctx,
  write: () => Promise<T>,
  about: { payment_id: string } | { refund_id: string },
): Promise<T> {
  try {
    return await retryWhileUnavailable(write, OUTCOME_STORE_BUDGET_MS);
  } catch (error) {
    if (isInfrastructureError(error)) {
      const late = retryWhileUnavailable(write, OUTCOME_STORE_LATER_MS)
        .then(
          () => ctx.log.info(about, "provider's answer stored after PostgreSQL came back"),
          (later: unknown) =>
            ctx.log.error(
              { ...about, err: later },
              "provider's answer not stored; the sweeper will ask again",
            ),
        )
        .finally(() => ctx.lateWrites.delete(late));
      ctx.lateWrites.add(late);
    }
    throw error;
  }
}

/** A QR code's creation that the till is still waiting on gets a retry budget of this long. */
const QR_RETRY_BUDGET_MS = 5_000;

/**
 * A QR code's creation whose answer is unknown or has no code is sent again, identical, up to the
 * provider's `qr_create_retries` times while the till waits (alipay.md §9). Marked `resent`: the
 * one resend after "not found" inquiries has then been made.
 */
async function retryQrCreation(
  ctx: Ctx,
  row: PaymentRow,
  policy: ResolutionPolicy,
  first: PaymentOutcome,
  send: () => Promise<PaymentOutcome>,
): Promise<PaymentOutcome> {
  const withoutCode = (o: PaymentOutcome) =>
    (o.kind === 'unknown' && o.reached) || (o.kind === 'pending' && !o.qr_code);
  let outcome = first;
  for (let attempt = 1; attempt <= (policy.qr_create_retries ?? 0) && withoutCode(outcome); attempt++) {
    if (Date.now() - row.created_at.getTime() > QR_RETRY_BUDGET_MS) break;
    const claimed = await ctx.db.query(
      `UPDATE payments SET resent = true
        WHERE id = $1 AND status = 'processing' AND cancel_requested_at IS NULL`,
      [row.id],
    );
    if (!claimed.rowCount) break;
    await recordEvent(
      ctx.db,
      row.id,
      'processing',
      'processing',
      `resend: QR code creation sent again (${outcome.kind === 'unknown' ? outcome.reason : 'no code'}), attempt ${attempt}`,
    );
    outcome = await send();
    // A retry follows an attempt that reached the provider: refused now, the sale still reached it
    // (no failover, no "nothing was charged").
    if (outcome.kind === 'unknown' && !outcome.reached) outcome = { ...outcome, reached: true };
  }
  return outcome;
}

function factsPatch(facts: PaymentFacts): PaymentPatch {
  return {
    provider_reference: facts.provider_reference,
    wallet_psp: facts.wallet_psp,
    customer_amount_value: facts.customer_amount?.value,
    customer_currency: facts.customer_amount?.currency,
    exchange_rate: facts.exchange_rate,
    settlement_amount_value: facts.settlement_amount?.value,
    settlement_currency: facts.settlement_amount?.currency,
    settlement_rate: facts.settlement_rate,
    paid_at: facts.paid_at,
  };
}

/**
 * What an answer to the creating request (or its resend) settles beyond the status: any answer,
 * even one that decides nothing, proves the pay arrived, so a later "not found" is no reason to
 * resend; and the creating request is done, so from now on a retry with its key is a replay.
 */
function answeredPatch(outcome: PaymentOutcome, source: Source): PaymentPatch {
  const creating = source === 'pay' || source === 'resend';
  const decided = outcome.kind !== 'unknown';
  return {
    ...(creating && decided ? { pay_answered: true } : {}),
    ...(creating && (decided || outcome.answered) ? { pay_reached: true } : {}),
    ...(source === 'pay' ? { request_done: true } : {}),
  };
}

/** Applies what a provider said; a no-op when the payment has already moved on. */
export async function applyOutcome(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  outcome: PaymentOutcome,
  source: Source,
  /** The outcome was learnt by the cancel under way (its inquiry): it ends that cancel. */
  decidesCancel = false,
): Promise<PaymentRow> {
  const answered = answeredPatch(outcome, source);
  const current = await applyStatus(ctx, row, account, outcome, source, answered, decidesCancel);
  // A notification may have moved the sale before the creating request's own answer was applied:
  // its transition was then a no-op, and the request must still be marked answered and done, or a
  // till retrying it would wait out the lock (409) for a sale that has long succeeded.
  const pending =
    (answered.request_done && !current.request_done) ||
    (answered.pay_answered && !current.pay_answered) ||
    (answered.pay_reached && !current.pay_reached);
  return pending ? ((await updatePayment(ctx.db, row.id, answered)) ?? current) : current;
}

/** The status change an outcome makes, with `answered` written in the same statement where one is. */
async function applyStatus(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  outcome: PaymentOutcome,
  source: Source,
  answered: PaymentPatch,
  decidesCancel: boolean,
): Promise<PaymentRow> {
  const reported = otherAmount(outcome, row);
  if (reported) {
    // A success for another amount than the sale's is not this sale's success: it stays open (and
    // is cancelled, reversing the charge, if nothing better comes by the end of its window), and a
    // person is told. A sale already canceled or failed has that charge reversed now.
    await alertAmountMismatch(ctx, row, reported);
    const now = await loadPayment(ctx, row.id);
    if (now.status === 'canceled' || now.status === 'failed') {
      await reverseLateSuccess(ctx, now, account, source);
      return now;
    }
    return applyStatus(
      ctx,
      row,
      account,
      { kind: 'pending', reason: 'success for another amount', customer_acted: true },
      source,
      answered,
      decidesCancel,
    );
  }
  const cause = `${source}: ${outcome.kind}`;
  // While a cancel is under way its answer decides: a success or failure taken from elsewhere now
  // would be a final answer the till sees, then overturned by that cancel a moment later.
  const onlyIfNoCancel = { unlessCancelRequested: source !== 'cancel' && !decidesCancel };
  switch (outcome.kind) {
    case 'succeeded': {
      const patch = {
        ...answered,
        ...factsPatch(outcome),
        paid_at: outcome.paid_at ?? new Date(),
        payment_code_sealed: null,
      };
      const moved = await transition(ctx, row.id, 'succeeded', cause, patch, {}, onlyIfNoCancel);
      if (moved) return moved;
      const now = await loadPayment(ctx, row.id);
      if (now.status === 'canceled' || now.status === 'failed')
        await reverseLateSuccess(ctx, now, account, source);
      else if (heldByCancel(now)) return holdOutcome(ctx, now, account, cause, answered);
      return now;
    }
    case 'failed': {
      const patch = {
        ...answered,
        ...factsPatch(outcome),
        failure_code: outcome.failure.code,
        failure_message: outcome.failure.message,
        payment_code_sealed: null,
      };
      const failed = await transition(
        ctx,
        row.id,
        'failed',
        cause,
        patch,
        { provider_code: outcome.failure.provider_code },
        onlyIfNoCancel,
      );
      if (failed && outcome.failure.configuration) await alertAccountRefused(ctx, failed, outcome.failure);
      if (failed) return failed;
      const now = await loadPayment(ctx, row.id);
      // Held like a success (after a held success, a failure taken would leave a charge standing).
      if (heldByCancel(now)) return holdOutcome(ctx, now, account, cause, answered);
      return now;
    }
    case 'canceled':
      return (
        (await transition(ctx, row.id, 'canceled', cause, {
          ...answered,
          ...factsPatch(outcome),
          payment_code_sealed: null,
        })) ?? loadPayment(ctx, row.id)
      );
    case 'pending': {
      const patch: PaymentPatch = {
        ...answered,
        ...factsPatch(outcome),
        ...(outcome.qr_code
          ? { qr_data: outcome.qr_code.data, qr_expires_at: outcome.qr_code.expires_at }
          : {}),
      };
      let next: PaymentRow | undefined;
      // A QR sale whose creating answer was lost or did not verify: the till never had a code. From
      // `row`, which may be older than the answer being stored right now: the writes that act on
      // it check the payment as it is.
      const codeNeverShown =
        row.mode === 'qr' && row.status === 'processing' && !row.qr_data && !row.pay_answered;
      const fromCreation = source === 'pay' || source === 'resend';
      if (outcome.qr_code && row.status === 'processing' && (fromCreation || codeNeverShown)) {
        // The QR code from the creating request, from its resend when the first never arrived, or
        // from an inquiry when the creating answer was lost (then only while no code is stored).
        next = await transition(
          ctx,
          row.id,
          'requires_customer',
          cause,
          patch,
          {},
          {
            onlyWithoutCode: !fromCreation,
          },
        );
      } else if (
        (codeNeverShown && source === 'inquiry' && !outcome.customer_acted) ||
        (fromCreation && row.mode === 'qr' && row.status === 'processing' && !outcome.qr_code)
      ) {
        // The order exists, but its code was only in the answer we lost (or the creating answer
        // had none), so nobody can pay it: the sale ends now (cancelled at the provider), not when
        // the code would have expired.
        await updatePayment(ctx.db, row.id, patch);
        next = await endUnshownQrSale(ctx, row.id, fromCreation);
      } else if (outcome.customer_acted && row.status === 'requires_customer') {
        // Scanned: the till shows the sale as being confirmed, and from now on it gets the window
        // of a sale being confirmed, not what was left of the QR code's.
        const windowS = resolutionWindowS(
          account.module.adapter.resolution,
          'scan',
          ctx.config.resolutionWindowS,
        );
        next = await transition(ctx, row.id, 'processing', cause, {
          ...patch,
          resolve_by: new Date(Date.now() + windowS * 1000),
        });
      } else {
        // What a sale was decided with stays: a late "still pending" (a notification sent before
        // the outcome) changes nothing shown on a final one, only what says its request was answered.
        next =
          (await updatePayment(ctx.db, row.id, patch, { whileUnresolved: true })) ??
          (await updatePayment(ctx.db, row.id, answered));
      }
      const current = next ?? (await loadPayment(ctx, row.id));
      if (UNRESOLVED.includes(current.status))
        await scheduleCheck(ctx, current, account.module.adapter.resolution);
      return current;
    }
    case 'unknown': {
      let current = await loadPayment(ctx, row.id);
      ctx.log.warn(
        { payment_id: row.id, source, reason: outcome.reason },
        'payment outcome unknown; will inquire',
      );
      if (outcome.stop_inquiring && source === 'inquiry' && UNRESOLVED.includes(current.status)) {
        // Its window closes now, so the check planned below cancels it at once.
        current = (await updatePayment(ctx.db, row.id, { resolve_by: new Date() })) ?? current;
      } else if ((source === 'pay' || source === 'resend') && codeOnlyFromCreation(current, account)) {
        // Sent again as often as allowed and still no code: nobody can pay this sale.
        current = (await endUnshownQrSale(ctx, row.id, false)) ?? current;
      }
      if (UNRESOLVED.includes(current.status)) {
        return scheduleCheck(ctx, current, account.module.adapter.resolution, undefined, answered);
      }
      return current;
    }
    case 'not_found': {
      const current = await loadPayment(ctx, row.id);
      if (UNRESOLVED.includes(current.status))
        await scheduleCheck(ctx, current, account.module.adapter.resolution);
      return current;
    }
  }
}

/** An outcome the transition refused because a cancel is under way, not because the sale is final. */
const heldByCancel = (row: PaymentRow): boolean =>
  UNRESOLVED.includes(row.status) && row.cancel_requested_at !== null;

/**
 * An outcome (success or failure) reported while a cancel of the sale is under way: the cancel
 * reverses or closes the sale, or learns how it ended, and only then does the till get its one
 * final answer. The provider evidently knows the order, so no "not found" may later pass for
 * proof that the pay never arrived.
 */
async function holdOutcome(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  cause: string,
  answered: PaymentPatch,
): Promise<PaymentRow> {
  let updated = (await updatePayment(ctx.db, row.id, { ...answered, pay_reached: true })) ?? row;
  await recordEvent(ctx.db, row.id, row.status, row.status, `${cause}; held: the cancel under way decides`);
  // The cancel's next attempt comes soon, not a minute later at the end of its schedule; not at
  // once either, while the attempt under way may still answer.
  const soon = Date.now() + CANCEL_ATTEMPT_S * 1000;
  if (!updated.next_check_at || updated.next_check_at.getTime() > soon)
    updated = await checkAfterCancel(ctx, updated, account);
  return updated;
}

/**
 * The provider reports a success for a sale that ended canceled or failed (its pay overtook our
 * cancel, or a resend arrived late): the customer was charged for a sale the till shows as unpaid.
 * So it is cancelled (reversed) at the provider again, which for one already reversed changes
 * nothing. A provider may refuse to cancel an order twice (Antom: ORDER_IS_CANCELED), so a refused
 * cancel is followed by an inquiry: only an order still paid needs a person to refund the
 * customer, who would otherwise be repaid twice. A cancel whose answer was lost (or put off) may
 * still be reversing the order, so no inquiry now could tell: the person is told to look first.
 */
async function reverseLateSuccess(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  source: Source,
): Promise<void> {
  const outcome = await cancelWith(ctx, row, account);
  const answered = outcome.kind === 'failed' || outcome.kind === 'not_found';
  const reversed =
    outcome.kind === 'canceled' || (answered && (await inquire(ctx, row, account)).kind === 'canceled');
  if (reversed) {
    await recordEvent(
      ctx.db,
      row.id,
      row.status,
      row.status,
      `${source}: success reported after the payment became ${row.status}; reversed at the provider`,
    );
    return;
  }
  await raiseAlert(
    ctx,
    'late_success',
    `provider reports success after the payment became ${row.status}, and reversing it was not confirmed (${outcome.kind}): ${
      outcome.kind === 'unknown' || outcome.kind === 'deferred'
        ? 'a reversal may still be under way; check the order at the provider, and refund the customer only if it is still paid'
        : 'refund the customer'
    }`,
    { payment_id: row.id },
  );
}

/**
 * A QR sale without a code whose creation was already sent again (`resent`) at a provider whose
 * inquiries never carry the code (it resends a creation instead, `qr_create_retries`): no code can
 * come any more.
 */
function codeOnlyFromCreation(row: PaymentRow, account: LoadedAccount): boolean {
  return (
    row.mode === 'qr' &&
    row.resent &&
    !row.qr_data &&
    (account.module.adapter.resolution.qr_create_retries ?? 0) > 0
  );
}

/**
 * Ends at once (its window closed now, so the next check cancels it) a QR sale whose code the till
 * never had: only while, as the payment is now, no code was stored and — unless `creating`, the
 * creating request itself, whose answer had no code — no answer came.
 */
async function endUnshownQrSale(
  ctx: Ctx,
  paymentId: string,
  creating: boolean,
): Promise<PaymentRow | undefined> {
  const { rows } = await ctx.db.query<PaymentRow>(
    prepared(
      `UPDATE payments SET resolve_by = now()
        WHERE id = $1 AND mode = 'qr' AND status = 'processing' AND qr_data IS NULL
          AND (NOT pay_answered OR $2)
        RETURNING *`,
      [paymentId, creating],
    ),
  );
  return rows[0];
}

/** Plans the next inquiry on the provider's schedule, never past the end of the window. */
export async function scheduleCheck(
  ctx: Ctx,
  row: PaymentRow,
  policy: ResolutionPolicy,
  delayS?: number,
  patch: PaymentPatch = {},
): Promise<PaymentRow> {
  const schedule = policy.poll_schedule_s;
  const planned = delayS ?? schedule[Math.min(row.poll_step, schedule.length - 1)];
  const untilWindowEnd = (row.resolve_by.getTime() - Date.now()) / 1000;
  const delay = Math.max(
    0,
    Math.min(planned, row.cancel_requested_at ? planned : Math.max(untilWindowEnd, 0)),
  );
  const updated = await updatePayment(
    ctx.db,
    row.id,
    { ...patch, next_check_at: new Date(Date.now() + delay * 1000) },
    { nextPollStep: true },
  );
  if (!updated) return row;
  const step = updated.poll_step;
  await enqueueDue(
    ctx,
    'resolve',
    { payment_id: row.id, step },
    { delayMs: delay * 1000, jobId: `resolve:${row.id}:${step}` },
  );
  return updated;
}

/**
 * One step of resolution for an unresolved payment: inquire, resend once, or cancel at the window's
 * end. `step` is the poll step its job was queued for.
 */
export async function resolvePayment(ctx: Ctx, paymentId: string, step?: number): Promise<void> {
  const row = await loadPayment(ctx, paymentId);
  if (!UNRESOLVED.includes(row.status)) return;
  // Only the job of the current step acts: an older one (overtaken by a notification's check, or
  // revived by the sweeper while the late original ran) would start a second chain of checks.
  if (step !== undefined && step !== row.poll_step) return;
  const account = await ctx.accounts.get(row.provider_account_id);
  if (!account) throw new Error(`payment ${row.id} has no provider account`);
  if (row.cancel_requested_at) {
    await cancelAtProvider(ctx, row, account, 'cancel requested');
    return;
  }
  const outcome = await inquire(ctx, row, account);
  if (Date.now() >= row.resolve_by.getTime()) {
    // The window is for an outcome nobody knows: one the provider has decided, however late it is
    // learnt (a gateway down past the window), is the outcome, not a sale to reverse.
    if (decides(outcome, row)) {
      await applyOutcome(ctx, row, account, outcome, 'inquiry');
      return;
    }
    // Charged another amount than the sale's: reversed, as an undecided sale is cancelled.
    const reported = otherAmount(outcome, row);
    if (reported) await alertAmountMismatch(ctx, row, reported);
    const cancelling = await markCancelRequested(ctx, row.id);
    if (cancelling)
      await cancelAtProvider(
        ctx,
        await checkAfterCancel(ctx, cancelling, account),
        account,
        'resolution window ended',
      );
    return;
  }
  if (outcome.kind === 'not_found' && !row.pay_reached && !row.resent) {
    await handleNotFound(ctx, row, account);
    return;
  }
  if (outcome.kind === 'not_found' && codeOnlyFromCreation(row, account) && !payMayBeUnderWay(row)) {
    // Its creation was sent again as often as allowed, and the provider has no such order: no
    // code can come any more, so nobody can pay it (the process that made it may have died).
    const ended = await endUnshownQrSale(ctx, row.id, false);
    if (ended) await scheduleCheck(ctx, ended, account.module.adapter.resolution);
    return;
  }
  await applyOutcome(ctx, row, account, outcome, 'inquiry');
}

/** Asks the provider how the payment stands; a call that throws is an unknown outcome. */
function inquire(ctx: Ctx, row: PaymentRow, account: LoadedAccount): Promise<PaymentOutcome> {
  return callProvider(
    ctx,
    row.provider,
    'inquire',
    { payment_id: row.id },
    () => account.module.adapter.inquire(account.context, requestFor(ctx, row)),
    (e): PaymentOutcome => ({ kind: 'unknown', reason: e.message, reached: true }),
  );
}

/** Asks the provider to cancel (or reverse) the payment; a call that throws is an unknown outcome. */
function cancelWith(ctx: Ctx, row: PaymentRow, account: LoadedAccount): Promise<CancelOutcome> {
  return callProvider(
    ctx,
    row.provider,
    'cancel',
    { payment_id: row.id },
    () => account.module.adapter.cancel(account.context, requestFor(ctx, row)),
    (e): CancelOutcome => ({ kind: 'unknown', reason: e.message }),
  );
}

/**
 * While the creating request may still be sending its pay (or its resend), "no such order" proves
 * nothing: the pay can land right after.
 */
const payMayBeUnderWay = (row: PaymentRow): boolean =>
  !row.request_done && Date.now() - row.created_at.getTime() < IN_FLIGHT_GRACE_S * 1000;

/**
 * One more "no such order" after a `pay` that got no answer: the count, since when, and whether two
 * far enough apart now prove the request never arrived.
 */
function notFoundAgain(
  row: PaymentRow,
  policy: ResolutionPolicy,
): { count: number; since: Date | null; proven: boolean } {
  // The count starts once the creating request is over (or long dead).
  if (payMayBeUnderWay(row)) return { count: row.not_found_count, since: row.not_found_since, proven: false };
  const since = row.not_found_since ?? new Date();
  const count = row.not_found_count + 1;
  const apartMs = (policy.resend_after_not_found_s ?? Number.POSITIVE_INFINITY) * 1000;
  return { count, since, proven: count >= 2 && Date.now() - since.getTime() >= apartMs };
}

/**
 * After a `pay` that got no answer, two "no such order" inquiries far enough apart prove the
 * request never arrived: then, and only once, the identical request is sent again (PROVIDERS.md rule 1).
 */
async function handleNotFound(ctx: Ctx, row: PaymentRow, account: LoadedAccount): Promise<void> {
  const policy = account.module.adapter.resolution;
  const { count, since, proven } = notFoundAgain(row, policy);
  if (proven) {
    // Only while the sale is open and nobody asked to cancel it, checked in the same statement that
    // claims the resend: a pay sent after the till's cancel could charge a sale shown as canceled.
    const { rows } = await ctx.db.query<PaymentRow>(
      `UPDATE payments SET resent = true, not_found_count = $2
        WHERE id = $1 AND status = ANY($3) AND cancel_requested_at IS NULL AND NOT resent
        RETURNING *`,
      [row.id, count, UNRESOLVED],
    );
    const updated = rows[0];
    if (!updated) {
      // Cancelled or ended meanwhile: its own check goes on from the row as it is now.
      const current = await loadPayment(ctx, row.id);
      if (UNRESOLVED.includes(current.status)) await scheduleCheck(ctx, current, policy);
      return;
    }
    await recordEvent(
      ctx.db,
      row.id,
      row.status,
      row.status,
      'resend: identical request after two not-found inquiries',
    );
    const outcome = await payWith(ctx, account, requestFor(ctx, updated));
    await applyOutcome(ctx, updated, account, outcome, 'resend');
    return;
  }
  const updated =
    (await updatePayment(ctx.db, row.id, { not_found_count: count, not_found_since: since })) ?? row;
  await scheduleCheck(ctx, updated, policy);
}

/** Cancels or reverses at the provider; a result that stays unknown is retried and finally raised to a human. */
async function cancelAtProvider(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  reason: string,
): Promise<PaymentRow> {
  const { adapter } = account.module;
  const outcome = await cancelWith(ctx, row, account);
  switch (outcome.kind) {
    case 'canceled': {
      const moved = await transition(
        ctx,
        row.id,
        'canceled',
        `cancel: ${reason}`,
        { payment_code_sealed: null },
        {},
        { reversal: true },
      );
      if (moved) return moved;
      const now = await loadPayment(ctx, row.id);
      if (now.status === 'partially_refunded' || now.status === 'refunded')
        await raiseAlert(
          ctx,
          'reversal_unrecorded',
          `the provider confirmed cancelling payment ${row.id}, which is ${now.status} here: the customer may have been repaid twice`,
          { payment_id: row.id },
        );
      return now;
    }
    case 'already_succeeded':
      return applyOutcome(ctx, row, account, { kind: 'succeeded', ...outcome.facts }, 'cancel');
    case 'deferred':
      await scheduleCheck(ctx, row, adapter.resolution, outcome.retry_after_s);
      return row;
    case 'not_found': {
      const policy = adapter.resolution;
      if (!row.pay_reached && policy.resend_after_not_found_s !== undefined) {
        // Counted with the inquiries' "not found": once two far enough apart say so, the pay never
        // arrived and nothing can be charged.
        const { count, since, proven } = notFoundAgain(row, policy);
        if (proven) {
          // Not if a success was heard (and held) while this cancel was out: then the pay did arrive.
          const ended = await transition(
            ctx,
            row.id,
            'canceled',
            `cancel: ${reason}; the pay never reached the provider`,
            { payment_code_sealed: null },
            {},
            { unlessPayReached: true },
          );
          if (ended) return ended;
          const now = await loadPayment(ctx, row.id);
          return UNRESOLVED.includes(now.status)
            ? cancelUnconfirmed(ctx, now, account, outcome.reason, true)
            : now;
        }
        const updated =
          (await updatePayment(ctx.db, row.id, { not_found_count: count, not_found_since: since })) ?? row;
        await scheduleCheck(ctx, updated, policy, policy.resend_after_not_found_s);
        return updated;
      }
      // An answered pay the provider cannot find: as unknown as any other answer. The cancel was
      // answered, though: it cannot reverse the order later.
      return cancelUnconfirmed(ctx, row, account, outcome.reason, true);
    }
    case 'unknown':
    case 'failed':
      return cancelUnconfirmed(ctx, row, account, outcome.reason, outcome.kind === 'failed');
  }
}

/**
 * A cancel the provider did not confirm: the customer's payment may have won the race, so ask
 * before trying again; retried on the provider's schedule, then raised to a human, never dropped.
 * A success found is the outcome only when the provider `answered` the cancel (refused it, or
 * found no order): one whose answer was lost may still reach the paid order and reverse it
 * (Antom's cancel refunds a paid order), so it is sent again until the provider answers it.
 */
async function cancelUnconfirmed(
  ctx: Ctx,
  row: PaymentRow,
  account: LoadedAccount,
  reason: string,
  answered: boolean,
): Promise<PaymentRow> {
  const { adapter } = account.module;
  const inquiry = await inquire(ctx, row, account);
  const paid = inquiry.kind === 'succeeded';
  if (decides(inquiry, row) && (answered || !paid))
    return applyOutcome(ctx, row, account, inquiry, 'inquiry', true);
  const reported = otherAmount(inquiry, row);
  if (reported) await alertAmountMismatch(ctx, row, reported);
  const attempts = row.cancel_attempts + 1;
  const schedule = adapter.resolution.cancel_schedule_s;
  // A paid order was reached: no later "not found" may pass for proof that the pay never arrived.
  const updated =
    (await updatePayment(ctx.db, row.id, {
      cancel_attempts: attempts,
      ...(paid && { pay_reached: true }),
    })) ?? row;
  if (attempts === schedule.length) {
    await raiseAlert(ctx, 'cancel_unknown', `cancel result unknown after ${attempts} attempts: ${reason}`, {
      payment_id: row.id,
    });
  }
  // Never dropped: after the schedule runs out, keep trying once a minute.
  await scheduleCheck(ctx, updated, adapter.resolution, schedule[attempts - 1] ?? 60);
  return updated;
}

/** POST /v1/payments/{id}/cancel: 200 when the provider confirmed at once, else 202 and the job goes on. */
export async function requestCancel(
  ctx: Ctx,
  row: PaymentRow,
): Promise<{ payment: PaymentRow; confirmed: boolean }> {
  if (!UNRESOLVED.includes(row.status)) {
    throw new ApiError('conflict', 'payment_final', `payment ${row.id} is already ${row.status}`);
  }
  const requested = await markCancelRequested(ctx, row.id);
  if (!requested) {
    const now = await loadPayment(ctx, row.id);
    throw new ApiError('conflict', 'payment_final', `payment ${row.id} is already ${now.status}`);
  }
  const account = await ctx.accounts.get(requested.provider_account_id);
  if (!account) throw new Error(`payment ${row.id} has no provider account`);
  const after = await cancelAtProvider(
    ctx,
    await checkAfterCancel(ctx, requested, account),
    account,
    'cancel requested by the till',
  );
  if (after.status === 'canceled') return { payment: after, confirmed: true };
  if (FINAL.has(after.status)) {
    throw new ApiError('conflict', 'payment_final', `payment ${row.id} is already ${after.status}`);
  }
  return { payment: after, confirmed: false };
}

/**
 * Queues the sale's next check for after the cancel about to be sent: the checks queued before
 * are stale from now on, so none sends a second cancel beside this one (its answer could reverse
 * a sale this one finds paid), and the cancel goes on if this process dies during it.
 */
function checkAfterCancel(ctx: Ctx, row: PaymentRow, account: LoadedAccount): Promise<PaymentRow> {
  return scheduleCheck(ctx, row, account.module.adapter.resolution, CANCEL_ATTEMPT_S);
}

/**
 * Marks a cancel as under way, if the sale is still open: from then on only the cancel's own
 * answers decide it (a success reported meanwhile is held). Undefined when the sale has ended.
 */
async function markCancelRequested(ctx: Ctx, paymentId: string): Promise<PaymentRow | undefined> {
  const { rows } = await ctx.db.query<PaymentRow>(
    `UPDATE payments SET cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now()
      WHERE id = $1 AND status = ANY($2) RETURNING *`,
    [paymentId, UNRESOLVED],
  );
  return rows[0];
}

/** The sweeper: payments whose next check is long overdue lost their job (crash, Redis flush). */
export async function sweepStragglers(ctx: Ctx, graceMs = 5000): Promise<number> {
  const { rows } = await ctx.db.query<PaymentRow>(
    `SELECT * FROM payments
      WHERE status IN ('processing', 'requires_customer')
        AND COALESCE(next_check_at, created_at) < now() - make_interval(secs => $1)
      ORDER BY created_at LIMIT 500`,
    [graceMs / 1000],
  );
  return sweepEach(ctx, rows, 'a payment', async (row) => {
    await updatePayment(ctx.db, row.id, { next_check_at: new Date() });
    // The job of the payment's current step (scheduleCheck's id): revived if lost, left alone if
    // still queued or running, so two checks of one payment never run at once.
    const jobId = `resolve:${row.id}:${row.poll_step}`;
    const job = await ensureJob(ctx.queues, 'resolve', jobId, () =>
      enqueue(ctx.queues, 'resolve', { payment_id: row.id, step: row.poll_step }, { jobId }),
    );
    return job === 'added';
  });
}
