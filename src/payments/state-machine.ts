/**
 * Payment state changes: each one a compare-and-set UPDATE on the current status, an event in
 * the append-only history and, for changes merchants hear about, an outbox row, all in one
 * PostgreSQL transaction. Tills waiting on the payment are woken after the commit.
 */
import type { Context } from '../context.ts';
import { newId } from '../ids.ts';
import { type Db, prepared, type Queryable } from '../ledger/db.ts';
import { type PaymentRow, type PaymentStatus, paymentJson, UNRESOLVED_SQL } from '../ledger/payments.ts';

const TRANSITIONS: Record<PaymentStatus, readonly PaymentStatus[]> = {
  processing: ['requires_customer', 'succeeded', 'failed', 'canceled'],
  requires_customer: ['processing', 'succeeded', 'failed', 'canceled'],
  succeeded: ['partially_refunded', 'refunded'],
  partially_refunded: ['partially_refunded', 'refunded'],
  refunded: [],
  failed: [],
  canceled: [],
};

export const FINAL: ReadonlySet<PaymentStatus> = new Set([
  'succeeded',
  'failed',
  'canceled',
  'partially_refunded',
  'refunded',
]);

export function isFinal(status: PaymentStatus): boolean {
  return FINAL.has(status);
}

/** The statuses a payment may move to `to` from. */
export function sourcesOf(to: PaymentStatus): PaymentStatus[] {
  return (Object.keys(TRANSITIONS) as PaymentStatus[]).filter((from) => TRANSITIONS[from].includes(to));
}

const EVENT_FOR: Partial<Record<PaymentStatus, string>> = {
  succeeded: 'payment.succeeded',
  failed: 'payment.failed',
  canceled: 'payment.canceled',
};

/** poll_step only ever counts up, in SQL (updatePayment's `nextPollStep`). */
export type PaymentPatch = Partial<
  Omit<PaymentRow, 'id' | 'merchant_id' | 'status' | 'created_at' | 'updated_at' | 'poll_step'>
>;

function setClause(
  patch: Record<string, unknown>,
  firstParam: number,
): { sql: string; keys: string[]; values: unknown[] } {
  const keys = Object.keys(patch).filter((k) => patch[k] !== undefined);
  return {
    sql: keys.map((k, i) => `, ${k} = $${firstParam + i}`).join(''),
    keys,
    values: keys.map((k) => patch[k]),
  };
}

export async function writeOutbox(
  client: Queryable,
  merchantId: string,
  type: string,
  object: unknown,
): Promise<void> {
  const id = newId('evt');
  const payload = { id, type, created_at: new Date().toISOString(), data: { object } };
  await client.query('INSERT INTO outbox (event_id, merchant_id, type, payload) VALUES ($1, $2, $3, $4)', [
    id,
    merchantId,
    type,
    payload,
  ]);
}

export async function recordEvent(
  client: Queryable,
  paymentId: string,
  from: PaymentStatus | null,
  to: PaymentStatus,
  cause: string,
  detail: Record<string, unknown> = {},
  refundId?: string,
): Promise<void> {
  await client.query(
    `INSERT INTO payment_events (payment_id, refund_id, from_status, to_status, cause, detail)
     VALUES ($1, $2, $3, $4, $5, $6)`,
    [paymentId, refundId ?? null, from, to, cause, detail],
  );
}

export interface TransitionOptions {
  /** Only while the payment has no QR code stored: a copy read earlier may be out of date. */
  onlyWithoutCode?: boolean;
  /** Only while nobody asked to cancel the sale: a cancel under way decides its outcome itself. */
  unlessCancelRequested?: boolean;
  /** Only while nothing has shown the pay reached the provider (a success held meanwhile has). */
  unlessPayReached?: boolean;
  /**
   * The provider confirmed it cancelled the sale, which reverses a paid one: this holds even where
   * a success reached us first (the customer's payment and the till's cancel crossed), so the move
   * is made from `succeeded` too.
   */
  reversal?: boolean;
}

/**
 * Moves the payment to `to` if its current status allows it, and records the event and (for
 * changes merchants hear about) the outbox row, all in ONE statement: atomic on its own, inside
 * or outside a transaction, and one round trip. The outbox row holds a snapshot of the updated
 * row, rendered into the event envelope when it is dispatched. Returns the updated row, or
 * undefined when the compare-and-set found another status.
 */
export async function transitionIn(
  client: Queryable,
  paymentId: string,
  to: PaymentStatus,
  cause: string,
  patch: PaymentPatch = {},
  detail: Record<string, unknown> = {},
  options: TransitionOptions = {},
): Promise<PaymentRow | undefined> {
  const set = setClause(patch, 8);
  const guard =
    (options.onlyWithoutCode ? ' AND p.qr_data IS NULL' : '') +
    (options.unlessCancelRequested ? ' AND p.cancel_requested_at IS NULL' : '') +
    (options.unlessPayReached ? ' AND NOT p.pay_reached' : '');
  const finalizing = FINAL.has(to)
    ? ', finalized_at = COALESCE(finalized_at, now()), next_check_at = NULL'
    : '';
  const { rows } = await client.query<PaymentRow & { from_status: PaymentStatus }>(
    prepared(
      `WITH prev AS (SELECT status FROM payments WHERE id = $1 FOR UPDATE),
     upd AS (
       UPDATE payments p SET status = $2, updated_at = now()${finalizing}${set.sql}
         FROM prev WHERE p.id = $1 AND prev.status = ANY($3)${guard}
       RETURNING p.*, prev.status AS from_status),
     ev AS (
       INSERT INTO payment_events (payment_id, from_status, to_status, cause, detail)
       SELECT id, from_status, $2, $4, $5 FROM upd),
     ob AS (
       INSERT INTO outbox (event_id, merchant_id, type, payload, payload_kind)
       SELECT $6, merchant_id, $7, to_jsonb(upd) - 'payment_code_sealed' - 'from_status', 'payment_row' FROM upd
        WHERE $7::text IS NOT NULL AND upd.from_status <> $2)
     SELECT * FROM upd`,
      [
        paymentId,
        to,
        options.reversal ? [...sourcesOf(to), 'succeeded'] : sourcesOf(to),
        cause,
        detail,
        newId('evt'),
        EVENT_FOR[to] ?? null,
        ...set.values,
      ],
    ),
  );
  const row = rows[0];
  if (!row) return undefined;
  const { from_status: _from, ...payment } = row;
  return payment;
}

const TIMESTAMP_COLUMNS = [
  'qr_expires_at',
  'resolve_by',
  'next_check_at',
  'not_found_since',
  'cancel_requested_at',
  'paid_at',
  'finalized_at',
  'created_at',
  'updated_at',
] as const;

/** A payment row as `to_jsonb` wrote it into the outbox, back into a row. */
export function paymentRowFromSnapshot(snapshot: Record<string, unknown>): PaymentRow {
  const row = { ...snapshot } as Record<string, unknown>;
  for (const column of TIMESTAMP_COLUMNS) {
    if (typeof row[column] === 'string') row[column] = new Date(row[column] as string);
  }
  return row as unknown as PaymentRow;
}

/** One transition, then wake the tills and count it. */
export async function transition(
  ctx: Pick<Context, 'db' | 'updates' | 'metrics'>,
  paymentId: string,
  to: PaymentStatus,
  cause: string,
  patch: PaymentPatch = {},
  detail: Record<string, unknown> = {},
  options: TransitionOptions = {},
): Promise<PaymentRow | undefined> {
  const row = await transitionIn(ctx.db, paymentId, to, cause, patch, detail, options);
  if (row) announce(ctx, row);
  return row;
}

/** Counts the change and wakes long-polling tills; the publish is not awaited (a miss costs a wait, never money). */
export function announce(ctx: Pick<Context, 'updates' | 'metrics'>, row: PaymentRow): void {
  ctx.metrics.paymentsByOutcome.inc({ provider: row.provider, status: row.status });
  void ctx.updates.publish(row.id, JSON.stringify(paymentJson(row)));
}

/**
 * The columns paymentJson shows (or that decide what it shows). Only a patch touching one of them
 * moves updated_at: polling bookkeeping alone must not, or a replay of the POST, or a read, would
 * show a payment the till has already seen with a new updated_at and nothing else changed.
 */
const SHOWN_COLUMNS = new Set<string>([
  'amount_value',
  'currency',
  'customer_amount_value',
  'customer_currency',
  'exchange_rate',
  'wallet',
  'wallet_psp',
  'provider',
  'mode',
  'reference',
  'store_id',
  'terminal_id',
  'payment_code_masked',
  'qr_data',
  'qr_expires_at',
  'failure_code',
  'failure_message',
  'amount_refunded',
  'provider_reference',
  'description',
  'metadata',
  'cancel_requested_at',
]);

/**
 * Facts that do not change the status (provider reference, QR, polling bookkeeping). With
 * `nextPollStep`, the poll step is also counted up in the row itself, never from a copy that a
 * concurrent check may have overtaken.
 */
export async function updatePayment(
  db: Db | Queryable,
  paymentId: string,
  patch: PaymentPatch,
  options: { nextPollStep?: boolean; whileUnresolved?: boolean } = {},
): Promise<PaymentRow | undefined> {
  const set = setClause(patch, 2);
  const guard = options.whileUnresolved ? ` AND status IN (${UNRESOLVED_SQL})` : '';
  const step = options.nextPollStep ? ', poll_step = poll_step + 1' : '';
  if (!set.sql && !step) return undefined;
  // A shown column given the value it already has (a provider reference each poll repeats) is no change.
  const changes = set.keys
    .map((key, i) => (SHOWN_COLUMNS.has(key) ? `${key} IS DISTINCT FROM $${i + 2}` : undefined))
    .filter((change) => change !== undefined);
  const updatedAt = changes.length
    ? `CASE WHEN ${changes.join(' OR ')} THEN now() ELSE updated_at END`
    : 'updated_at';
  const { rows } = await db.query<PaymentRow>(
    prepared(
      `UPDATE payments SET updated_at = ${updatedAt}${step}${set.sql} WHERE id = $1${guard} RETURNING *`,
      [paymentId, ...set.values],
    ),
  );
  return rows[0];
}
