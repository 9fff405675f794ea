/**
 * Outbound merchant webhooks: outbox rows fan out to subscribed endpoints as deliveries, each
 * sent through the job queue with exponential back-off and signed
 * `Tillbridge-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">`.
 */
import { send } from '../adapters/transport.ts';
import type { Context } from '../src/context.ts';
import { cappedBackoff, enqueue, ensureJob, queueDeadline, sweepEach } from '../src/jobs/queues.ts';
import { inTransaction } from '../src/ledger/db.ts';
import { paymentJson } from '../src/ledger/payments.ts';
import { webhookSecretContext } from '../src/payments/accounts.ts';
import { paymentRowFromSnapshot } from '../src/payments/state-machine.ts';
import { hmacSha256Hex, tryOpen } from '../src/secrets.ts';

const FIRST_BACKOFF_MS = 2000;
/** Retries come at most an hour apart, as an endpoint that is down for a day is likelier than one down for a minute. */
const LONGEST_BACKOFF_MS = 3_600_000;
/** A delivery is tried for this long before it is `failed` (the merchant may then ask for it again). */
export const DELIVERY_WINDOW_MS = 3 * 24 * 3_600_000;

/** The wait after a delivery's attempt number `attemptsMade` failed. */
export const deliveryWaitMs = (attemptsMade: number) =>
  cappedBackoff(attemptsMade, undefined, { delay: FIRST_BACKOFF_MS, cap: LONGEST_BACKOFF_MS });

/** As many attempts as fit in DELIVERY_WINDOW_MS with that back-off. */
export const DELIVERY_ATTEMPTS = (() => {
  let attempts = 1;
  for (let waited = 0; waited < DELIVERY_WINDOW_MS; attempts++) waited += deliveryWaitMs(attempts);
  return attempts;
})();

export function signatureHeader(secret: string, body: string, now = new Date()): string {
  const t = Math.floor(now.getTime() / 1000);
  return `t=${t},v1=${hmacSha256Hex(secret, `${t}.${body}`)}`;
}

interface OutboxRow {
  id: number;
  event_id: string;
  type: string;
  payload: Record<string, unknown>;
  payload_kind: 'event' | 'payment_row';
  created_at: Date;
}

/** The event envelope of API.md; a payment snapshot taken at the change is rendered as the API shows payments. */
function envelope(row: OutboxRow): Record<string, unknown> {
  if (row.payload_kind === 'event') return row.payload;
  return {
    id: row.event_id,
    type: row.type,
    created_at: row.created_at.toISOString(),
    data: { object: paymentJson(paymentRowFromSnapshot(row.payload)) },
  };
}

/**
 * Moves a batch of outbox events into deliveries, set-based: a few statements per batch, not per
 * event. Safe with many workers (SKIP LOCKED).
 */
export async function dispatchOutbox(ctx: Context, batch = 500): Promise<number> {
  const deliveries = await inTransaction(ctx.db, async (client) => {
    const { rows } = await client.query<OutboxRow>(
      `SELECT id, event_id, type, payload, payload_kind, created_at FROM outbox WHERE dispatched_at IS NULL
        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
      [batch],
    );
    if (rows.length === 0) return undefined;
    await client.query(
      `UPDATE outbox o SET payload = r.payload, payload_kind = 'event', dispatched_at = now()
         FROM unnest($1::bigint[], $2::jsonb[]) AS r(id, payload) WHERE o.id = r.id`,
      [rows.map((r) => r.id), rows.map((r) => JSON.stringify(envelope(r)))],
    );
    const inserted = await client.query<{ id: string }>(
      `INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, next_attempt_at)
       SELECT 'del_' || substr(md5(e.id || o.event_id), 1, 22), e.id, o.event_id, o.type, 'pending', now()
         FROM outbox o JOIN webhook_endpoints e
           ON e.merchant_id = o.merchant_id AND e.deleted_at IS NULL AND o.type = ANY(e.events)
        WHERE o.id = ANY($1)
       ON CONFLICT DO NOTHING RETURNING id`,
      [rows.map((r) => r.id)],
    );
    return { count: rows.length, deliveryIds: inserted.rows.map((r) => r.id) };
  });
  if (!deliveries) return 0;
  for (const id of deliveries.deliveryIds) await queueDelivery(ctx, id);
  return deliveries.count;
}

/** Queues a delivery's job; its id is the delivery's, so queueing one that exists changes nothing. */
function queueDelivery(ctx: Context, deliveryId: string): Promise<void> {
  return enqueue(
    ctx.queues,
    'deliver',
    { delivery_id: deliveryId },
    {
      jobId: `deliver:${deliveryId}`,
      attempts: DELIVERY_ATTEMPTS,
      backoffMs: FIRST_BACKOFF_MS,
      backoffCapMs: LONGEST_BACKOFF_MS,
    },
  );
}

/**
 * A delivery sent again now: its next try at once when it waits for one, a new job when its own has
 * ended. Undefined while a try is under way: its job cannot be promoted or replaced then, so the
 * next try would wait for its back-off (or, after a last try, for the sweeper); the merchant asks
 * again once it has ended.
 */
export async function deliverAgain<T>(
  ctx: Context,
  deliveryId: string,
  /** Sets the delivery `pending` again, before its job is touched; what it returns is returned. */
  markPending: () => Promise<T>,
): Promise<T | undefined> {
  const jobId = `deliver:${deliveryId}`;
  const job = await queueDeadline(ctx.queues, ctx.queues.deliver.getJob(jobId), `looking up job ${jobId}`);
  const state = job && (await queueDeadline(ctx.queues, job.getState(), `reading job ${jobId}`));
  if (state === 'active') return undefined;
  const marked = await markPending();
  if (job && state === 'delayed')
    // Its next try may be an hour away. A job that moved on meanwhile is left as it is.
    await queueDeadline(ctx.queues, job.promote(), `promoting job ${jobId}`).catch(() => undefined);
  else await ensureJob(ctx.queues, 'deliver', jobId, () => queueDelivery(ctx, deliveryId));
  return marked;
}

/**
 * Deliveries stored while Redis could not take their job (or whose job a Redis flush lost) would
 * wait for ever: the sweeper queues every pending one again. A job still queued or retrying keeps
 * its place (same job id), so this only revives the lost. Returns how many were looked at.
 */
export async function requeuePendingDeliveries(ctx: Context, graceMs = 30_000): Promise<number> {
  const { rows } = await ctx.db.query<{ id: string }>(
    `SELECT id FROM webhook_deliveries
      WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
      ORDER BY updated_at LIMIT 500`,
    [graceMs / 1000],
  );
  return sweepEach(
    ctx,
    rows,
    'a delivery',
    async ({ id }) =>
      (await ensureJob(ctx.queues, 'deliver', `deliver:${id}`, () => queueDelivery(ctx, id))) === 'added',
  );
}

/**
 * One delivery attempt; throws on failure so the queue retries with back-off, after `retryInMs`
 * (null: this was the last try).
 */
export async function deliver(ctx: Context, deliveryId: string, retryInMs: number | null): Promise<void> {
  const { rows } = await ctx.db.query<{
    url: string;
    secret_sealed: Buffer;
    endpoint_id: string;
    payload: unknown;
    status: string;
    resends: number;
    deleted: boolean;
  }>(
    `SELECT e.url, e.secret_sealed, d.endpoint_id, o.payload, d.status, d.resends, e.deleted_at IS NOT NULL AS deleted
       FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN outbox o ON o.event_id = d.event_id
      WHERE d.id = $1`,
    [deliveryId],
  );
  const row = rows[0];
  if (row?.status !== 'pending') return;
  const fail = (reason: string) =>
    ctx.db.query(
      `UPDATE webhook_deliveries SET status = 'failed', last_error = $2, next_attempt_at = NULL, updated_at = now()
        WHERE id = $1`,
      [deliveryId, reason],
    );
  // The merchant deleted the endpoint: its retries stop here.
  if (row.deleted) return void (await fail('the endpoint was deleted'));
  const secret = tryOpen(ctx.config.masterKey, row.secret_sealed, webhookSecretContext(row.endpoint_id));
  if (secret === undefined) {
    // Sealed under another master key: no retry can sign it. The merchant sees why, and makes a new endpoint.
    ctx.log.error({ delivery_id: deliveryId, endpoint_id: row.endpoint_id }, 'webhook secret unreadable');
    return void (await fail(
      "the endpoint's secret does not open with this gateway's master key; create the endpoint again",
    ));
  }
  const body = JSON.stringify(row.payload);
  let statusCode: number | null = null;
  let error: string | null = null;
  try {
    const res = await send({
      publicOnly: ctx.config.production,
      method: 'POST',
      url: row.url,
      headers: {
        'content-type': 'application/json',
        'tillbridge-signature': signatureHeader(secret, body),
        'user-agent': 'tillbridge-webhooks/1',
      },
      body,
      timeoutMs: 10_000,
      // A merchant's 2xx is the receipt, whatever (and however much) it says after it.
      statusOnly: true,
    });
    statusCode = res.status;
    if (res.status < 200 || res.status >= 300) error = `HTTP ${res.status}`;
  } catch (e) {
    error = (e as Error).message;
  }
  const status = error === null ? 'succeeded' : retryInMs === null ? 'failed' : 'pending';
  // Sent again by the merchant during this try: the delivery stays pending for the try that asked.
  await ctx.db.query(
    `UPDATE webhook_deliveries SET attempts = attempts + 1, last_status_code = $3, last_error = $4, updated_at = now(),
            status = CASE WHEN resends = $5 THEN $2 ELSE status END,
            next_attempt_at = CASE WHEN resends <> $5 THEN now()
                                   WHEN $2 = 'pending' THEN now() + make_interval(secs => $6::float8 / 1000) END
      WHERE id = $1`,
    [deliveryId, status, statusCode, error, row.resends, retryInMs],
  );
  if (error !== null) throw new Error(`delivery ${deliveryId} failed: ${error}`);
}
