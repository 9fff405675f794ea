/** Admin and merchant set-up: merchants, provider accounts, terminals, webhook endpoints. */
import { Router } from 'express';
import { nonPublicHost } from '../../../adapters/addresses.ts';
import { CredentialError, type Wallet } from '../../../adapters/contract.ts';
import { PLANNED_PROVIDERS, providerModule } from '../../../adapters/index.ts';
import { deliverAgain } from '../../../webhooks/outbound.ts';
import type { Context } from '../../context.ts';
import { ApiError, notFound, providerNotSupported } from '../../errors.ts';
import { newId, randomToken } from '../../ids.ts';
import { requireQueues } from '../../jobs/queues.ts';
import { inTransaction, lockUntilCommit, type Queryable } from '../../ledger/db.ts';
import {
  credentialsContext,
  type ProviderAccountRow,
  webhookPath,
  webhookSecretContext,
} from '../../payments/accounts.ts';
import { hashKey, seal } from '../../secrets.ts';
import { forgetCachedKeys, KEY_TOKEN_LENGTH, requireAdmin, requireMerchant } from '../auth.ts';
import {
  createMerchantSchema,
  createTerminalSchema,
  createWebhookEndpointSchema,
  listQuerySchema,
  providerAccountCommon,
  WEBHOOK_EVENTS,
} from '../schemas.ts';
import { parse, refuseParameters, refuseQuery } from '../validate.ts';
import { listPage } from './lists.ts';

interface MerchantRow {
  id: string;
  name: string;
  settlement_currency: string;
  country: string;
  created_at: Date;
}

interface TerminalRow {
  id: string;
  merchant_id: string;
  store_id: string;
  terminal_id: string;
  can_refund: boolean;
  created_at: Date;
}

interface EndpointRow {
  id: string;
  merchant_id: string;
  url: string;
  events: string[];
  created_at: Date;
}

const merchantJson = (m: MerchantRow) => ({
  id: m.id,
  object: 'merchant',
  name: m.name,
  settlement_currency: m.settlement_currency,
  country: m.country,
  created_at: m.created_at.toISOString(),
});

const terminalJson = (t: TerminalRow) => ({
  id: t.id,
  object: 'terminal',
  store_id: t.store_id,
  terminal_id: t.terminal_id,
  can_refund: t.can_refund,
  created_at: t.created_at.toISOString(),
});

const accountJson = (a: ProviderAccountRow) => ({
  id: a.id,
  object: 'provider_account',
  provider: a.provider,
  wallets: a.wallets,
  priority: a.priority,
  currencies: a.currencies,
  sandbox: a.sandbox,
  webhook_url: webhookPath(a.provider, a.id),
  settings: a.public_view,
  created_at: a.created_at.toISOString(),
  updated_at: a.updated_at.toISOString(),
});

/** After a change of a merchant's provider accounts commits: this process's caches, then every other's. */
async function forgetAccounts(ctx: Context, merchantId: string): Promise<void> {
  ctx.accounts.forgetRoutes(merchantId);
  await ctx.updates.announceAccountChange(merchantId);
}

/** In production the gateway sends nothing (signed requests, webhooks) to loopback or private addresses. */
function refuseNonPublic(ctx: Context, url: string, param: 'endpoint' | 'url'): void {
  if (ctx.config.production && nonPublicHost(new URL(url)))
    throw new ApiError(
      'invalid_request',
      `${param}_not_public`,
      `${param} must reach the public internet: loopback and private addresses are refused in production`,
      param,
    );
}

const endpointJson = (e: EndpointRow) => ({
  id: e.id,
  object: 'webhook_endpoint',
  url: e.url,
  events: e.events,
  created_at: e.created_at.toISOString(),
});

/** Creates a key, stores only its hash, and returns the key itself (shown once). */
export async function issueKey(
  db: Queryable,
  merchantId: string,
  kind: 'secret' | 'terminal',
  terminalRef?: string,
): Promise<string> {
  const key = `${kind === 'secret' ? 'sk' : 'tk'}_${randomToken(KEY_TOKEN_LENGTH)}`;
  await db.query(
    'INSERT INTO api_keys (id, merchant_id, kind, terminal_ref, key_hash, key_hint) VALUES ($1, $2, $3, $4, $5, $6)',
    [
      newId('key'),
      merchantId,
      kind,
      terminalRef ?? null,
      hashKey(key),
      `${key.slice(0, 3)}…${key.slice(-4)}`,
    ],
  );
  return key;
}

/**
 * Revokes the merchant's secret key or a terminal's key, so that a new one can take its place.
 * The caller calls forgetCachedKeys once its transaction has committed.
 */
async function revokeKeys(
  db: Queryable,
  merchantId: string,
  which: { kind: 'secret' } | { kind: 'terminal'; terminalRef: string },
): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE api_keys SET revoked_at = now()
      WHERE merchant_id = $1 AND kind = $2 AND terminal_ref IS NOT DISTINCT FROM $3 AND revoked_at IS NULL`,
    [merchantId, which.kind, which.kind === 'terminal' ? which.terminalRef : null],
  );
  return rowCount ?? 0;
}

export async function createMerchant(
  ctx: Pick<Context, 'db'>,
  input: { name: string; settlement_currency: string; country: string },
) {
  return inTransaction(ctx.db, async (client) => {
    const { rows } = await client.query<MerchantRow>(
      'INSERT INTO merchants (id, name, settlement_currency, country) VALUES ($1, $2, $3, $4) RETURNING *',
      [newId('mer'), input.name, input.settlement_currency, input.country],
    );
    const secretKey = await issueKey(client, rows[0].id, 'secret');
    return { ...merchantJson(rows[0]), secret_key: secretKey };
  });
}

export async function createTerminal(
  ctx: Pick<Context, 'db'>,
  merchantId: string,
  input: { store_id: string; terminal_id: string; can_refund?: boolean },
) {
  return inTransaction(ctx.db, async (client) => {
    const { rows } = await client.query<TerminalRow>(
      `INSERT INTO terminals (id, merchant_id, store_id, terminal_id, can_refund) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (merchant_id, store_id, terminal_id) DO NOTHING RETURNING *`,
      [newId('trm'), merchantId, input.store_id, input.terminal_id, input.can_refund ?? false],
    );
    if (!rows[0]) {
      throw new ApiError(
        'conflict',
        'terminal_exists',
        `terminal ${input.terminal_id} already exists in store ${input.store_id}`,
      );
    }
    const terminalKey = await issueKey(client, merchantId, 'terminal', rows[0].id);
    return { ...terminalJson(rows[0]), terminal_key: terminalKey };
  });
}

export function setupRouter(ctx: Context): Router {
  const router = Router();

  router.post('/v1/admin/merchants', async (req, res) => {
    requireAdmin(req);
    res.status(201).json(await createMerchant(ctx, parse(createMerchantSchema, req.body)));
  });

  router.get('/v1/admin/merchants', async (req, res) => {
    requireAdmin(req);
    res.json(
      await listPage<MerchantRow>(
        ctx,
        'merchants',
        { owner: [] },
        parse(listQuerySchema, req.query, 'query'),
        merchantJson,
      ),
    );
  });

  // A leaked secret key: the merchant gets a new one and the old one stops working.
  router.post('/v1/admin/merchants/:id/secret-key', async (req, res) => {
    requireAdmin(req);
    refuseParameters(req.body);
    const result = await inTransaction(ctx.db, async (client) => {
      const { rows } = await client.query<MerchantRow>('SELECT * FROM merchants WHERE id = $1 FOR UPDATE', [
        req.params.id,
      ]);
      if (!rows[0]) throw notFound('merchant', req.params.id);
      await revokeKeys(client, rows[0].id, { kind: 'secret' });
      return { ...merchantJson(rows[0]), secret_key: await issueKey(client, rows[0].id, 'secret') };
    });
    await forgetCachedKeys(ctx);
    res.status(201).json(result);
  });

  // What the gateway could not settle by itself (a cancel whose result stays unknown, a success
  // reported after a final failure, a refund that never resolves): for an operator to act on.
  router.get('/v1/admin/alerts', async (req, res) => {
    requireAdmin(req);
    const query = parse(listQuerySchema, req.query, 'query');
    const after = query.starting_after === undefined ? undefined : alertNumber(query.starting_after);
    // Anything but an alert's id is no alert, said as every list says it.
    if (after === null)
      throw new ApiError(
        'invalid_request',
        'parameter_invalid',
        `starting_after: no such object ${query.starting_after}`,
        'starting_after',
      );
    res.json(
      await listPage<AlertRow>(
        ctx,
        'alerts',
        { owner: [], filters: [['resolved_at IS NULL']] },
        { ...query, starting_after: after },
        alertJson,
      ),
    );
  });

  // An operator has dealt with it: it leaves the list (resolving twice changes nothing).
  router.post('/v1/admin/alerts/:id/resolve', async (req, res) => {
    requireAdmin(req);
    const id = req.params.id;
    const number = alertNumber(id);
    if (number === null) throw notFound('alert', id);
    const { rows } = await ctx.db.query<AlertRow>(
      `UPDATE alerts SET resolved_at = COALESCE(resolved_at, now()) WHERE id = $1 RETURNING *`,
      [number],
    );
    if (!rows[0]) throw notFound('alert', id);
    res.json(alertJson(rows[0]));
  });

  router.put('/v1/providers/:provider', async (req, res) => {
    const merchant = requireMerchant(req);
    const provider = req.params.provider;
    const module = providerModule(provider);
    if (!module && PLANNED_PROVIDERS.includes(provider)) throw providerNotSupported(provider);
    if (!module) throw notFound('provider', provider);
    if (req.body === undefined || typeof req.body !== 'object' || Array.isArray(req.body)) {
      throw new ApiError('invalid_request', 'invalid_body', 'the request body must be a JSON object');
    }
    const { sandbox, wallets, priority, currencies, ...credentials } = req.body as Record<string, unknown>;
    const common = parse(providerAccountCommon, { sandbox, wallets, priority, currencies });
    const adapter = module.adapter;
    const servedWallets: Wallet[] = common.wallets ?? [...adapter.wallets];
    const unsupported = servedWallets.find((w) => !adapter.wallets.includes(w));
    if (unsupported)
      throw new ApiError(
        'invalid_request',
        'parameter_invalid',
        `${provider} does not serve wallet ${unsupported}`,
        'wallets',
      );
    const isSandbox = provider === 'sandbox' || common.sandbox === true;
    // A simulator answers "paid" without taking any money: a live till must never be pointed at one.
    if (isSandbox && ctx.config.production)
      throw new ApiError(
        'invalid_request',
        'sandbox_unavailable',
        'simulated providers are not available when NODE_ENV=production; configure real credentials',
        provider === 'sandbox' ? undefined : 'sandbox',
      );
    // A merchant key must not aim the gateway's signed requests at the services beside it.
    const { endpoint } = credentials;
    if (typeof endpoint === 'string' && URL.canParse(endpoint)) refuseNonPublic(ctx, endpoint, 'endpoint');
    const result = await inTransaction(ctx.db, async (client) => {
      // One configuration of a merchant's provider at a time: two first PUTs at once would both
      // insert (and each build its credentials for an id of its own).
      await lockUntilCommit(client, `provider-account:${merchant.merchant_id}:${provider}`);
      // The account keeps its id when it is configured again (and so does a sandbox identity made from it).
      const existing = await client.query<{ id: string }>(
        'SELECT id FROM provider_accounts WHERE merchant_id = $1 AND provider = $2 AND deleted_at IS NULL FOR UPDATE',
        [merchant.merchant_id, provider],
      );
      const id = existing.rows[0]?.id ?? newId('pva');
      let configured: Awaited<ReturnType<typeof adapter.configure>>;
      try {
        configured = await adapter.configure(
          common.sandbox === undefined ? credentials : { ...credentials, sandbox: common.sandbox },
          ctx.sandbox.env(provider),
          id,
        );
      } catch (error) {
        if (error instanceof CredentialError)
          throw new ApiError('invalid_request', 'invalid_credentials', error.message, error.param);
        throw error;
      }
      const sealed = seal(
        ctx.config.masterKey,
        JSON.stringify(configured.credentials),
        credentialsContext(id),
      );
      const values = [
        id,
        merchant.merchant_id,
        provider,
        servedWallets,
        currencies ?? null,
        common.priority ?? 0,
        isSandbox,
        sealed,
        configured.public_view,
      ];
      const { rows } = existing.rows[0]
        ? await client.query<ProviderAccountRow>(
            `UPDATE provider_accounts SET wallets = $4, currencies = $5, priority = $6, sandbox = $7, credentials = $8,
                    public_view = $9, updated_at = clock_timestamp()
              WHERE id = $1 AND merchant_id = $2 AND provider = $3 RETURNING *`,
            values,
          )
        : await client.query<ProviderAccountRow>(
            `INSERT INTO provider_accounts (id, merchant_id, provider, wallets, currencies, priority, sandbox, credentials, public_view)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *`,
            values,
          );
      return { row: rows[0], created: !existing.rows[0] };
    });
    await forgetAccounts(ctx, merchant.merchant_id);
    res.status(result.created ? 201 : 200).json(accountJson(result.row));
  });

  router.get('/v1/providers', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listQuerySchema, req.query, 'query');
    res.json(
      await listPage<ProviderAccountRow>(
        ctx,
        'provider_accounts',
        { owner: [['merchant_id = ?', merchant.merchant_id]], filters: [['deleted_at IS NULL']] },
        query,
        accountJson,
      ),
    );
  });

  router.get('/v1/providers/:provider', async (req, res) => {
    const merchant = requireMerchant(req);
    refuseQuery(req.query);
    const { rows } = await ctx.db.query<ProviderAccountRow>(
      'SELECT * FROM provider_accounts WHERE merchant_id = $1 AND provider = $2 AND deleted_at IS NULL',
      [merchant.merchant_id, req.params.provider],
    );
    if (!rows[0]) throw notFound('provider account', req.params.provider);
    res.json(accountJson(rows[0]));
  });

  router.delete('/v1/providers/:provider', async (req, res) => {
    const merchant = requireMerchant(req);
    const { rows } = await ctx.db.query<ProviderAccountRow>(
      `UPDATE provider_accounts SET deleted_at = now(), updated_at = clock_timestamp()
        WHERE merchant_id = $1 AND provider = $2 AND deleted_at IS NULL RETURNING *`,
      [merchant.merchant_id, req.params.provider],
    );
    if (!rows[0]) throw notFound('provider account', req.params.provider);
    await forgetAccounts(ctx, merchant.merchant_id);
    res.json({ ...accountJson(rows[0]), deleted: true });
  });

  router.post('/v1/terminals', async (req, res) => {
    const merchant = requireMerchant(req);
    res
      .status(201)
      .json(await createTerminal(ctx, merchant.merchant_id, parse(createTerminalSchema, req.body)));
  });

  // A till lost or stolen: its key stops working (on every API process: forgetCachedKeys); a new
  // key for a replacement till is issued by the POST, which revokes the old one too.
  const ownedTerminal = async (db: Queryable, merchantId: string, id: string) => {
    const { rows } = await db.query<TerminalRow>(
      'SELECT * FROM terminals WHERE id = $1 AND merchant_id = $2 FOR UPDATE',
      [id, merchantId],
    );
    if (!rows[0]) throw notFound('terminal', id);
    return rows[0];
  };

  router.post('/v1/terminals/:id/key', async (req, res) => {
    const merchant = requireMerchant(req);
    refuseParameters(req.body);
    const result = await inTransaction(ctx.db, async (client) => {
      const terminal = await ownedTerminal(client, merchant.merchant_id, req.params.id);
      await revokeKeys(client, merchant.merchant_id, { kind: 'terminal', terminalRef: terminal.id });
      const terminalKey = await issueKey(client, merchant.merchant_id, 'terminal', terminal.id);
      return { ...terminalJson(terminal), terminal_key: terminalKey };
    });
    await forgetCachedKeys(ctx);
    res.status(201).json(result);
  });

  router.delete('/v1/terminals/:id/key', async (req, res) => {
    const merchant = requireMerchant(req);
    const result = await inTransaction(ctx.db, async (client) => {
      const terminal = await ownedTerminal(client, merchant.merchant_id, req.params.id);
      const revoked = await revokeKeys(client, merchant.merchant_id, {
        kind: 'terminal',
        terminalRef: terminal.id,
      });
      return { ...terminalJson(terminal), keys_revoked: revoked };
    });
    await forgetCachedKeys(ctx);
    res.json(result);
  });

  router.get('/v1/terminals', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listQuerySchema, req.query, 'query');
    res.json(
      await listPage<TerminalRow>(
        ctx,
        'terminals',
        { owner: [['merchant_id = ?', merchant.merchant_id]] },
        query,
        terminalJson,
      ),
    );
  });

  router.post('/v1/webhook-endpoints', async (req, res) => {
    const merchant = requireMerchant(req);
    const body = parse(createWebhookEndpointSchema, req.body);
    refuseNonPublic(ctx, body.url, 'url');
    const id = newId('whe');
    const secret = `whsec_${randomToken(32)}`;
    const { rows } = await ctx.db.query<EndpointRow>(
      `INSERT INTO webhook_endpoints (id, merchant_id, url, events, secret_sealed) VALUES ($1, $2, $3, $4, $5) RETURNING *`,
      [
        id,
        merchant.merchant_id,
        body.url,
        [...new Set(body.events ?? WEBHOOK_EVENTS)],
        seal(ctx.config.masterKey, secret, webhookSecretContext(id)),
      ],
    );
    res.status(201).json({ ...endpointJson(rows[0]), secret });
  });

  router.get('/v1/webhook-endpoints', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listQuerySchema, req.query, 'query');
    res.json(
      await listPage<EndpointRow>(
        ctx,
        'webhook_endpoints',
        { owner: [['merchant_id = ?', merchant.merchant_id]], filters: [['deleted_at IS NULL']] },
        query,
        endpointJson,
      ),
    );
  });

  router.get('/v1/webhook-endpoints/:id', async (req, res) => {
    const merchant = requireMerchant(req);
    refuseQuery(req.query);
    const { rows } = await ctx.db.query<EndpointRow>(
      'SELECT * FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL',
      [req.params.id, merchant.merchant_id],
    );
    if (!rows[0]) throw notFound('webhook endpoint', req.params.id);
    res.json(endpointJson(rows[0]));
  });

  router.delete('/v1/webhook-endpoints/:id', async (req, res) => {
    const merchant = requireMerchant(req);
    const { rows } = await ctx.db.query<EndpointRow>(
      'UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL RETURNING *',
      [req.params.id, merchant.merchant_id],
    );
    if (!rows[0]) throw notFound('webhook endpoint', req.params.id);
    res.json({ ...endpointJson(rows[0]), deleted: true });
  });

  router.get('/v1/webhook-endpoints/:id/deliveries', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listQuerySchema, req.query, 'query');
    const owned = await ctx.db.query('SELECT 1 FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2', [
      req.params.id,
      merchant.merchant_id,
    ]);
    if (owned.rowCount === 0) throw notFound('webhook endpoint', req.params.id);
    res.json(
      await listPage<DeliveryRow>(
        ctx,
        'webhook_deliveries',
        { owner: [['endpoint_id = ?', req.params.id]] },
        query,
        deliveryJson,
      ),
    );
  });

  // An addition to API.md: a delivery sent again at the merchant's word, when its three days of
  // tries ended or the merchant lost what it received; one waiting for its next try is tried now.
  router.post('/v1/webhook-endpoints/:id/deliveries/:delivery_id/retry', async (req, res) => {
    const merchant = requireMerchant(req);
    refuseParameters(req.body);
    requireQueues(ctx.queues);
    const found = await ctx.db.query<{ id: string }>(
      `SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.id = $1 AND d.endpoint_id = $2 AND e.merchant_id = $3 AND e.deleted_at IS NULL`,
      [req.params.delivery_id, req.params.id, merchant.merchant_id],
    );
    if (!found.rows[0]) throw notFound('webhook delivery', req.params.delivery_id);
    const id = found.rows[0].id;
    const pending = await deliverAgain(ctx, id, async () => {
      const { rows } = await ctx.db.query<DeliveryRow>(
        `UPDATE webhook_deliveries SET status = 'pending', resends = resends + 1, next_attempt_at = now(), updated_at = now()
          WHERE id = $1 RETURNING *`,
        [id],
      );
      return rows[0];
    });
    if (!pending)
      throw new ApiError(
        'conflict',
        'delivery_in_progress',
        'a try of this delivery is under way; ask again once it has ended',
      );
    res.status(202).json(deliveryJson(pending));
  });

  return router;
}

interface AlertRow {
  id: string;
  kind: string;
  payment_id: string | null;
  refund_id: string | null;
  detail: string;
  created_at: Date;
  resolved_at: Date | null;
}

/** An alert's id, `alr_` and its row's number (API.md: ids carry their type): the number, or null. */
const alertNumber = (id: string) => /^alr_(\d{1,18})$/.exec(id)?.[1] ?? null;

const alertJson = (a: AlertRow) => ({
  id: `alr_${a.id}`,
  object: 'alert',
  kind: a.kind,
  payment_id: a.payment_id,
  refund_id: a.refund_id,
  detail: a.detail,
  created_at: a.created_at.toISOString(),
  resolved_at: a.resolved_at?.toISOString() ?? null,
});

interface DeliveryRow {
  id: string;
  endpoint_id: string;
  event_id: string;
  event_type: string;
  status: string;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  next_attempt_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

const deliveryJson = (d: DeliveryRow) => ({
  id: d.id,
  object: 'webhook_delivery',
  endpoint_id: d.endpoint_id,
  event_id: d.event_id,
  event_type: d.event_type,
  status: d.status,
  attempts: d.attempts,
  last_status_code: d.last_status_code,
  last_error: d.last_error,
  next_attempt_at: d.next_attempt_at?.toISOString() ?? null,
  created_at: d.created_at.toISOString(),
  updated_at: d.updated_at.toISOString(),
});
