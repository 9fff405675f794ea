/** Bearer keys: the admin key, merchant secret keys (sk_) and terminal keys (tk_), stored only as hashes. */
import type { NextFunction, Request, Response } from 'express';
import type { Context } from '../context.ts';
import { ApiError } from '../errors.ts';
import { hashKey, safeEqual } from '../secrets.ts';

export type Principal =
  | { kind: 'admin'; key_id: 'admin' }
  | { kind: 'merchant'; key_id: string; merchant_id: string }
  | {
      kind: 'terminal';
      key_id: string;
      merchant_id: string;
      terminal_ref: string;
      store_id: string;
      terminal_id: string;
      can_refund: boolean;
    };

declare module 'express-serve-static-core' {
  interface Request {
    principal?: Principal;
    requestId: string;
  }
}

interface KeyRow {
  id: string;
  merchant_id: string;
  kind: 'secret' | 'terminal';
  terminal_ref: string | null;
  store_id: string | null;
  terminal_id: string | null;
  can_refund: boolean | null;
}

/**
 * Hash lookups are cached briefly. A revocation is announced to every process through Redis; while
 * Redis cannot carry it, a key revoked on another process stops working within this time.
 */
const CACHE_MS = 10_000;
/** Bumped by every committed revocation, here or announced: the caches then forget what they hold. */
let revocations = 0;

/** Call after the revocation commits (before, a lookup in between would cache the key again). */
export async function forgetCachedKeys(ctx: Context): Promise<void> {
  revocations += 1;
  await ctx.updates.announceRevocation();
}

/** The random part of a merchant or terminal key (issueKey). */
export const KEY_TOKEN_LENGTH = 32;
/** What issueKey makes: anything else is no key of ours, refused without a query. */
const KEY_SHAPE = new RegExp(`^(sk|tk)_[0-9A-Za-z]{${KEY_TOKEN_LENGTH}}$`);
/** Cached lookups, each kind: at this size the cache starts again. */
const CACHE_ENTRIES = 10_000;

export function authenticator(ctx: Context) {
  type Entry = { principal: Principal | null; until: number; revocations: number };
  // Keys that open nothing are remembered apart: a flood of made-up keys fills only that cache,
  // and never empties the one that spares real keys their query.
  const known = new Map<string, Entry>();
  const unknown = new Map<string, Entry>();
  ctx.updates.onRevocation(() => {
    revocations += 1;
  });

  async function lookup(token: string): Promise<Principal | null> {
    const hash = hashKey(token).toString('base64');
    const hit = known.get(hash) ?? unknown.get(hash);
    if (hit && hit.until > Date.now() && hit.revocations === revocations) return hit.principal;
    // Read before the query: a revocation committed while it runs must not be cached over.
    const generation = revocations;
    const { rows } = await ctx.db.query<KeyRow>(
      `SELECT k.id, k.merchant_id, k.kind, k.terminal_ref, t.store_id, t.terminal_id, t.can_refund
         FROM api_keys k LEFT JOIN terminals t ON t.id = k.terminal_ref
        WHERE k.key_hash = $1 AND k.revoked_at IS NULL`,
      [hashKey(token)],
    );
    const row = rows[0];
    let principal: Principal | null = null;
    if (row?.kind === 'secret')
      principal = { kind: 'merchant', key_id: row.id, merchant_id: row.merchant_id };
    if (row?.kind === 'terminal' && row.terminal_ref && row.store_id && row.terminal_id) {
      principal = {
        kind: 'terminal',
        key_id: row.id,
        merchant_id: row.merchant_id,
        terminal_ref: row.terminal_ref,
        store_id: row.store_id,
        terminal_id: row.terminal_id,
        can_refund: row.can_refund === true,
      };
    }
    const [cache, other] = principal ? [known, unknown] : [unknown, known];
    if (cache.size >= CACHE_ENTRIES) cache.clear();
    cache.set(hash, { principal, until: Date.now() + CACHE_MS, revocations: generation });
    // A key revoked since: its stale entry would be found first, and the query made every time.
    other.delete(hash);
    return principal;
  }

  return async (req: Request, _res: Response, next: NextFunction) => {
    const header = req.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match)
      throw new ApiError(
        'authentication',
        'missing_api_key',
        'send your key as "Authorization: Bearer <key>"',
      );
    const token = match[1];
    if (safeEqual(token, ctx.config.adminApiKey)) {
      req.principal = { kind: 'admin', key_id: 'admin' };
    } else if (KEY_SHAPE.test(token)) {
      req.principal = (await lookup(token)) ?? undefined;
    }
    if (!req.principal) throw new ApiError('authentication', 'invalid_api_key', 'the API key is not valid');
    next();
  };
}

export function requireAdmin(req: Request): void {
  if (req.principal?.kind !== 'admin')
    throw new ApiError('permission', 'admin_only', 'this endpoint needs the admin key');
}

export function requireMerchant(req: Request): Extract<Principal, { kind: 'merchant' }> {
  const p = req.principal;
  if (p?.kind === 'merchant') return p;
  throw new ApiError('permission', 'secret_key_required', 'this endpoint needs a merchant secret key (sk_)');
}

export function requireMerchantOrTerminal(req: Request): Exclude<Principal, { kind: 'admin' }> {
  const p = req.principal;
  if (p && p.kind !== 'admin') return p;
  throw new ApiError('permission', 'merchant_key_required', 'this endpoint needs a merchant or terminal key');
}

/**
 * RATE_LIMIT_PER_KEY_RPS. Every API process counts in Redis so they share one budget, but no
 * request waits for Redis: the decision uses the larger of this process's own count and the
 * latest shared count Redis returned for this second.
 */
export function rateLimiter(ctx: Context) {
  const limit = ctx.config.rateLimitPerKeyRps;
  let second = 0;
  const counts = new Map<string, { local: number; shared: number }>();
  return (req: Request, _res: Response, next: NextFunction) => {
    const keyId = req.principal?.key_id;
    if (!keyId) return next();
    const now = Math.floor(Date.now() / 1000);
    if (now !== second) {
      second = now;
      counts.clear();
    }
    const count = counts.get(keyId) ?? { local: 0, shared: 0 };
    counts.set(keyId, count);
    count.local += 1;
    const redisKey = `${ctx.config.redisPrefix}:rate:${keyId}:${now}`;
    ctx.redis.incr(redisKey).then(
      (shared) => {
        count.shared = Math.max(count.shared, shared);
        if (shared === 1) void ctx.redis.expire(redisKey, 2).catch(() => {});
      },
      () => {},
    );
    if (Math.max(count.local, count.shared) > limit) {
      throw new ApiError(
        'rate_limited',
        'rate_limited',
        `more than ${limit} requests per second for this key`,
        undefined,
        429,
        {
          'Retry-After': '1',
        },
      );
    }
    next();
  };
}
