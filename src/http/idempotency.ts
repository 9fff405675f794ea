/**
 * Idempotency-Key semantics (API.md): the first request runs; a replay gets the stored
 * response with `Idempotent-Replayed: true`; the same key with another body gets 422; a retry
 * while the first is still running gets 409. The lock is a PostgreSQL row with a 30 s lease,
 * so a lock left by a process that died frees itself. Records are kept at least 24 h.
 */
import { createHash } from 'node:crypto';
import type { Request, Response } from 'express';
import type { Context } from '../context.ts';
import { ApiError, idempotencyInProgress, idempotencyKeyReused } from '../errors.ts';
import { inTransaction, lockUntilCommit, prepared } from '../ledger/db.ts';
import { idempotencyKeySchema } from './schemas.ts';

export const LOCK_LEASE_S = 30;
export const RETENTION_H = 48;

export interface HandlerResult {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

interface Row {
  request_hash: string;
  response_status: number | null;
  response_body: unknown;
  locked: boolean;
}

export function idempotencyKeyOf(req: Request, required: true): string;
export function idempotencyKeyOf(req: Request, required: boolean): string | undefined;
export function idempotencyKeyOf(req: Request, required: boolean): string | undefined {
  const key = req.get('Idempotency-Key');
  if (key === undefined) {
    if (required) {
      throw new ApiError(
        'invalid_request',
        'idempotency_key_missing',
        'the Idempotency-Key header is required',
        'Idempotency-Key',
      );
    }
    return undefined;
  }
  // Node joins a header sent twice with ", ": two keys are no key.
  if ((req.headersDistinct['idempotency-key']?.length ?? 0) > 1) {
    throw new ApiError(
      'invalid_request',
      'idempotency_key_invalid',
      'Idempotency-Key must be sent once',
      'Idempotency-Key',
    );
  }
  if (!idempotencyKeySchema.safeParse(key).success) {
    throw new ApiError(
      'invalid_request',
      'idempotency_key_invalid',
      'Idempotency-Key must be 1 to 255 printable ASCII characters',
      'Idempotency-Key',
    );
  }
  return key;
}

/**
 * The merchant ($3) used the key ($2) for a payment, or for a request under another scope than
 * $1: written once, for the claim and for telling a refused claim's reason.
 */
const KEY_USED_ELSEWHERE = `(EXISTS (SELECT 1 FROM payments WHERE merchant_id = $3 AND idempotency_key = $2)
  OR EXISTS (SELECT 1 FROM idempotency_keys o
              WHERE o.key = $2 AND o.scope <> $1 AND split_part(o.scope, ':', 1) = $3))`;

async function keyUsedElsewhere(
  ctx: Context,
  merchantId: string,
  scope: string,
  key: string,
): Promise<boolean> {
  const { rows } = await ctx.db.query<{ used: boolean }>(`SELECT ${KEY_USED_ELSEWHERE} AS used`, [
    scope,
    key,
    merchantId,
  ]);
  return rows[0].used;
}

function send(res: Response, result: HandlerResult, replayed: boolean): void {
  if (replayed) res.set('Idempotent-Replayed', 'true');
  if (result.headers) res.set(result.headers);
  res.status(result.status).json(result.body);
}

/**
 * What "the same request" means for an Idempotency-Key: method, path, body (its keys in any
 * order) and who sends it. A terminal's key used by another terminal, or by the merchant's secret
 * key, is another request (422), never a replay of a payment that caller may not see.
 */
export function requestHash(req: Request): string {
  const principal = req.principal;
  const caller = principal?.kind === 'terminal' ? `terminal ${principal.terminal_ref}` : 'merchant';
  return requestHashOf(req.method, routeOf(req), caller, req.body ?? null);
}

/**
 * The route a request reached, with its parameters: routing ignores case and a trailing slash, so
 * a retry to `/v1/payments/` is the same request as the first to `/v1/payments`.
 */
function routeOf(req: Request): string {
  const pattern: unknown = req.route?.path;
  if (typeof pattern !== 'string') return req.path;
  return pattern.replace(/:(\w+)/g, (_, name: string) => String(req.params[name] ?? ''));
}

export function requestHashOf(method: string, path: string, caller: string, body: unknown): string {
  return createHash('sha256')
    .update(`${method} ${path} ${caller}\n${canonicalJson(body)}`)
    .digest('hex');
}

/**
 * JSON with every object's keys sorted, so that key order never makes two bodies differ, and without
 * null fields, which the API takes as left out (validate.ts).
 */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined && v !== null)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** How a retry is answered from the object a key's first request made, rather than from its stored answer. */
export interface Replay {
  /** What a replay answers in place of the stored body: the object as it is now. */
  current?: (stored: unknown) => Promise<unknown>;
  /**
   * The object the first request made, once its outcome is stored, though that request has not
   * answered: PostgreSQL was lost past its wait, and the till got a 503. Its retry is then a replay
   * with the outcome, not a 409 until the request's lock lapses.
   */
  decided?: () => Promise<unknown>;
}

/**
 * Runs `handler` at most once per (merchant, action, key): the row is kept under the scope
 * `<merchant>:<action>`. A key names one request of the merchant, so the same key already used
 * under another action (a refund of another payment, a cancel) or to create a payment (kept on the
 * payment itself) is 422. Validation must happen before, so a 400 is never stored.
 */
export async function idempotent(
  ctx: Context,
  req: Request,
  res: Response,
  merchantId: string,
  action: string,
  key: string | undefined,
  /** `tookOver`: the key's first request died unanswered, and this retry runs in its place. */
  handler: (tookOver: boolean) => Promise<HandlerResult>,
  replay: Replay = {},
): Promise<void> {
  if (key === undefined) return send(res, await handler(false), false);
  const scope = `${merchantId}:${action}`;
  const hash = requestHash(req);
  const claimed = await inTransaction(ctx.db, async (client) => {
    // The unique (scope, key) does not stop two scopes claiming one key at once (refunds of two
    // payments): each would find the other's claim not committed yet. Claims of the merchant's key
    // take turns, and the claim's own statement, run after the lock, sees the one before it.
    await lockUntilCommit(client, `idempotency:${merchantId}:${key}`);
    return client.query(
      prepared(
        `INSERT INTO idempotency_keys (scope, key, request_hash, locked_until)
         SELECT $1, $2, $4, now() + make_interval(secs => $5) WHERE NOT ${KEY_USED_ELSEWHERE}
         ON CONFLICT DO NOTHING`,
        [scope, key, merchantId, hash, LOCK_LEASE_S],
      ),
    );
  });
  const tookOver = claimed.rowCount === 0;
  if (tookOver) {
    const { rows } = await ctx.db.query<Row>(
      `SELECT request_hash, response_status, response_body, locked_until > now() AS locked
         FROM idempotency_keys WHERE scope = $1 AND key = $2`,
      [scope, key],
    );
    const row = rows[0];
    if (!row && (await keyUsedElsewhere(ctx, merchantId, scope, key))) throw idempotencyKeyReused();
    if (!row)
      throw new ApiError(
        'idempotency',
        'idempotency_key_in_use',
        'this Idempotency-Key is being released; retry',
        undefined,
        409,
      );
    if (row.request_hash !== hash) {
      throw idempotencyKeyReused();
    }
    if (row.response_status !== null) {
      // API.md: a replay of a creation answers 200, not 201 — nothing new was created.
      const status = row.response_status === 201 ? 200 : row.response_status;
      const body = replay.current ? await replay.current(row.response_body) : row.response_body;
      return send(res, { status, body }, true);
    }
    if (row.locked) {
      const decided = await replay.decided?.();
      if (decided !== undefined) return send(res, { status: 200, body: decided }, true);
      throw idempotencyInProgress();
    }
    // The first request's process died: take the lease over.
    const taken = await ctx.db.query(
      `UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3)
        WHERE scope = $1 AND key = $2 AND response_status IS NULL AND locked_until <= now()`,
      [scope, key, LOCK_LEASE_S],
    );
    if (taken.rowCount === 0) {
      throw idempotencyInProgress();
    }
  }
  let result: HandlerResult;
  try {
    result = await handler(tookOver);
  } catch (error) {
    // A refused request (a 4xx, or 503 before anything was done) moved nothing: free the key so
    // a corrected retry can use it.
    if (error instanceof ApiError && (error.status < 500 || error.type === 'unavailable')) {
      await ctx.db.query(
        'DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND response_status IS NULL',
        [scope, key],
      );
    }
    throw error;
  }
  await ctx.db.query(
    prepared(
      `UPDATE idempotency_keys SET response_status = $3, response_body = $4, locked_until = NULL
        WHERE scope = $1 AND key = $2`,
      [scope, key, result.status, JSON.stringify(result.body)],
    ),
  );
  send(res, result, false);
}
