/**
 * Outbound merchant webhooks: outbox rows fan out to subscribed endpoints as deliveries, each
 * sent through the job queue with exponential back-off and signed
 * `Tillbridge-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">`.
 */
import { send } from '../adapters/transport.ts';
import type { Context } from '../src/context.ts';
import { newId } from '../src/ids.ts';
import { enqueue } from '../src/jobs/queues.ts';
import { inTransaction } from '../src/ledger/db.ts';
import { hmacSha256Hex, open } from '../src/secrets.ts';

export const DELIVERY_ATTEMPTS = 12;
const FIRST_BACKOFF_MS = 2000;

export function signatureHeader(secret: string, body: string, now = new Date()): string {
  const t = Math.floor(now.getTime() / 1000);
  return `t=${t},v1=${hmacSha256Hex(secret, `${t}.${body}`)}`;
}

/** Moves a batch of outbox events into deliveries; safe with many workers (SKIP LOCKED). */
export async function dispatchOutbox(ctx: Context, batch = 200): Promise<number> {
  const deliveries: string[] = [];
  const count = await inTransaction(ctx.db, async (client) => {
    const { rows } = await client.query<{ id: number; event_id: string; merchant_id: string; type: string }>(
      `SELECT id, event_id, merchant_id, type FROM outbox WHERE dispatched_at IS NULL
        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
      [batch],
    );
    for (const event of rows) {
      const { rows: endpoints } = await client.query<{ id: string }>(
        `SELECT id FROM webhook_endpoints WHERE merchant_id = $1 AND deleted_at IS NULL AND $2 = ANY(events)`,
        [event.merchant_id, event.type],
      );
      for (const endpoint of endpoints) {
        const id = newId('del');
        const inserted = await client.query(
          `INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status) VALUES ($1, $2, $3, $4, 'pending')
           ON CONFLICT DO NOTHING`,
          [id, endpoint.id, event.event_id, event.type],
        );
        if (inserted.rowCount) deliveries.push(id);
      }
    }
    if (rows.length)
      await client.query('UPDATE outbox SET dispatched_at = now() WHERE id = ANY($1)', [
        rows.map((r) => r.id),
      ]);
    return rows.length;
  });
  for (const id of deliveries) {
    await enqueue(
      ctx.queues,
      'deliver',
      { delivery_id: id },
      { jobId: `deliver:${id}`, attempts: DELIVERY_ATTEMPTS, backoffMs: FIRST_BACKOFF_MS },
    );
  }
  return count;
}

/** One delivery attempt; throws on failure so the queue retries with back-off. */
export async function deliver(ctx: Context, deliveryId: string, isLastAttempt: boolean): Promise<void> {
  const { rows } = await ctx.db.query<{
    url: string;
    secret_sealed: Buffer;
    endpoint_id: string;
    payload: unknown;
    status: string;
  }>(
    `SELECT e.url, e.secret_sealed, d.endpoint_id, o.payload, d.status
       FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN outbox o ON o.event_id = d.event_id
      WHERE d.id = $1`,
    [deliveryId],
  );
  const row = rows[0];
  if (!row || row.status === 'succeeded') return;
  const secret = open(ctx.config.masterKey, row.secret_sealed, `webhook-endpoint:${row.endpoint_id}`);
  const body = JSON.stringify(row.payload);
  let statusCode: number | null = null;
  let error: string | null = null;
  try {
    const res = await send({
      method: 'POST',
      url: row.url,
      headers: {
        'content-type': 'application/json',
        'tillbridge-signature': signatureHeader(secret, body),
        'user-agent': 'tillbridge-webhooks/1',
      },
      body,
      timeoutMs: 10_000,
    });
    statusCode = res.status;
    if (res.status < 200 || res.status >= 300) error = `HTTP ${res.status}`;
  } catch (e) {
    error = (e as Error).message;
  }
  const status = error === null ? 'succeeded' : isLastAttempt ? 'failed' : 'pending';
  await ctx.db.query(
    `UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2, last_status_code = $3, last_error = $4, updated_at = now()
      WHERE id = $1`,
    [deliveryId, status, statusCode, error],
  );
  if (error !== null) throw new Error(`delivery ${deliveryId} failed: ${error}`);
}
