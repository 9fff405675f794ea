/**
 * Settlements and reconciliation (API.md): file imports and fetches, the jobs that reconcile them,
 * settlement batches and their lines, discrepancies, reports, and the dashboard page.
 */
import { EventEmitter, once } from 'node:events';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip, createInflate } from 'node:zlib';
import { type Request, Router } from 'express';
import { z } from 'zod';
import { isCalendarDate, SettlementFormatError } from '../../../adapters/contract.ts';
import { PLANNED_PROVIDERS, providerModule } from '../../../adapters/index.ts';
import type { Context } from '../../context.ts';
import { dashboardRouter } from '../../dashboard/page.ts';
import { ApiError, notFound, providerNotSupported } from '../../errors.ts';
import { hasPrefix } from '../../ids.ts';
import { leaveToSweeper, requireQueues } from '../../jobs/queues.ts';
import { deriveSecret, numberOfOpaque, opaqueNumber } from '../../secrets.ts';
import { fetchable, queueFetch } from '../../settlements/fetch.ts';
import { type ImportRow, jobJson, queueReconcile } from '../../settlements/imports.ts';
import { EmptyFileError, FileBrokenOffError, receiveFile } from '../../settlements/receive.ts';
import { DISCREPANCY_KINDS } from '../../settlements/reconcile.ts';
import { ReaderGone, settlementReport, streamSettlementReportCsv } from '../../settlements/reports.ts';
import { requireMerchant } from '../auth.ts';
import { registerOperations } from '../openapi.ts';
import { DEFAULT_LIST_LIMIT, listQuerySchema } from '../schemas.ts';
import { parse, refuseQuery } from '../validate.ts';
import { type ListScope, listPage } from './lists.ts';

const providerName = z.string().regex(/^[a-z0-9_]{1,32}$/, 'must be a provider name such as alipay');
const isoDate = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}$/, 'must be a date YYYY-MM-DD')
  .refine(isCalendarDate, 'is not a calendar date');

export const importQuerySchema = z.strictObject({ provider: providerName });
export const fetchBodySchema = z.strictObject({ provider: providerName, date: isoDate });
export const listSettlementsQuerySchema = listQuerySchema.extend({
  provider: providerName.optional(),
  status: z.enum(['reconciled', 'discrepancies']).optional(),
});
export const listLinesQuerySchema = listQuerySchema.extend({
  result: z.enum(['matched', 'pending', ...DISCREPANCY_KINDS]).optional(),
});
export const listDiscrepanciesQuerySchema = listQuerySchema.extend({
  kind: z.enum(DISCREPANCY_KINDS).optional(),
  provider: providerName.optional(),
  settlement_id: z.string().min(1).max(64).optional(),
  /** An addition: `open` (the default), `closed` (superseded or resolved, with closed_at) or `all`. */
  status: z.enum(['open', 'closed', 'all']).optional(),
});
export const reportQuerySchema = z
  .strictObject({
    from: isoDate,
    to: isoDate,
    format: z.enum(['json', 'csv']).optional(),
    group_by: z.enum(['day', 'store', 'wallet']).optional(),
    provider: providerName.optional(),
  })
  .refine((q) => q.from <= q.to, { message: 'must not be after to', path: ['from'] });

/** The adapter of a provider a file is imported or fetched for. */
function knownProvider(name: string, param: string) {
  const module = providerModule(name);
  if (module) return module;
  if (PLANNED_PROVIDERS.includes(name)) throw providerNotSupported(name, param);
  throw new ApiError('invalid_request', 'provider_unknown', `${param}: unknown provider ${name}`, param);
}

/** A list filter may name any provider of API.md: one not built yet has nothing to list. */
function providerFilter(name: string | undefined, param = 'provider'): void {
  if (name !== undefined && !providerModule(name) && !PLANNED_PROVIDERS.includes(name))
    throw new ApiError('invalid_request', 'provider_unknown', `${param}: unknown provider ${name}`, param);
}

async function accountOf(ctx: Context, merchantId: string, provider: string) {
  const { rows } = await ctx.db.query<{ id: string; merchant_id: string; provider: string }>(
    `SELECT id, merchant_id, provider FROM provider_accounts
      WHERE merchant_id = $1 AND provider = $2 AND deleted_at IS NULL`,
    [merchantId, provider],
  );
  return rows[0];
}

const SETTLEMENT_VIEW = '(SELECT s.*, tb_settlement_json(s) AS json FROM settlements s) v';
const CLOSED_FILTER: Record<'open' | 'closed' | 'all', [string][]> = {
  open: [['closed_at IS NULL']],
  closed: [['closed_at IS NOT NULL']],
  all: [],
};
const DISCREPANCY_VIEW = '(SELECT d.*, tb_discrepancy_json(d) AS json FROM reconciliation_discrepancies d) v';

/**
 * A batch's current lines with their results (migration 104): a line without a result row is a
 * payment matched by its provider reference.
 */
const LINES_SQL = `
  SELECT l.*,
         COALESCE(l.result_payment_id, (SELECT p.id FROM payments p
                                         WHERE NOT l.has_result AND p.merchant_id = l.merchant_id AND p.provider = l.provider
                                           AND p.provider_reference = l.provider_reference LIMIT 1)) AS payment_id
    FROM settlement_current_lines l`;

/**
 * The ids of a page of a batch's current lines: of batch $1, after line id $2, $3 of them, with
 * `result` ($4 unless it is `matched`). Read in order from an index and stopped after the page (through
 * settlement_current_lines, a batch of a million lines had every line joined and sorted for each
 * page). A result other than `matched` has a row of its own (migration 104): those are read instead.
 */
const linePageSql = (result: string | undefined) =>
  result && result !== 'matched'
    ? `SELECT x.line_id AS id
         FROM settlements s
         JOIN settlement_line_results x ON x.settlement_id = s.id AND x.import_id = s.import_id
        WHERE s.id = $1 AND x.result = $4 AND x.line_id > $2
        ORDER BY x.line_id LIMIT $3`
    : `WITH batch AS MATERIALIZED (
         SELECT s.import_id, s.provider_batch_id, s.currency, i.first_line_id, i.last_line_id
           FROM settlements s JOIN settlement_imports i ON i.id = s.import_id
          WHERE s.id = $1
       )
       SELECT l.id FROM settlement_lines l
        WHERE l.id > $2
          AND l.id >= (SELECT first_line_id FROM batch) AND l.id <= (SELECT last_line_id FROM batch)
          AND l.import_id = (SELECT import_id FROM batch) AND l.batch_ref = (SELECT provider_batch_id FROM batch)
          AND l.settlement_currency = (SELECT currency FROM batch)
          ${result === 'matched' ? "AND NOT EXISTS (SELECT 1 FROM settlement_line_results x WHERE x.line_id = l.id AND x.result <> 'matched')" : ''}
        ORDER BY l.id LIMIT $3`;

interface LineRow {
  id: number;
  settlement_id: string;
  line_no: number;
  type: string;
  provider_reference: string;
  original_provider_reference: string | null;
  provider_request_id: string | null;
  transaction_value: number;
  transaction_currency: string;
  settlement_value: number;
  settlement_currency: string;
  signed_value: number;
  signed_fee: number;
  exchange_rate: string | null;
  settled_at: Date;
  transacted_at: Date | null;
  store_id: string | null;
  wallet_psp: string | null;
  payment_id: string | null;
  refund_id: string | null;
  result: string;
}

/** A line's id: its row number, which counts every merchant's lines, is not shown as it is. */
const LINE_IDS = 'settlement line ids';

const lineJson = (lineIdKey: Buffer) => (l: LineRow) => ({
  id: `ln_${opaqueNumber(lineIdKey, BigInt(l.id))}`,
  object: 'settlement_line',
  settlement_id: l.settlement_id,
  line_no: l.line_no,
  type: l.type,
  provider_reference: l.provider_reference,
  ...(l.original_provider_reference ? { original_provider_reference: l.original_provider_reference } : {}),
  ...(l.provider_request_id ? { provider_request_id: l.provider_request_id } : {}),
  amount: { value: l.transaction_value, currency: l.transaction_currency },
  settlement_amount: { value: l.settlement_value, currency: l.settlement_currency },
  // Signed as it counts (migration 105): a cancel's fee is given back.
  fee: { value: l.signed_fee, currency: l.settlement_currency },
  net: { value: l.signed_value - l.signed_fee, currency: l.settlement_currency },
  ...(l.exchange_rate ? { exchange_rate: l.exchange_rate } : {}),
  settled_at: l.settled_at.toISOString(),
  ...(l.transacted_at ? { transacted_at: l.transacted_at.toISOString() } : {}),
  ...(l.store_id ? { store_id: l.store_id } : {}),
  ...(l.wallet_psp ? { wallet_psp: l.wallet_psp } : {}),
  payment_id: l.payment_id,
  refund_id: l.refund_id,
  result: l.result,
});

async function visibleSettlement(ctx: Context, req: Request, id: string) {
  const merchant = requireMerchant(req);
  if (!hasPrefix(id, 'stl')) throw notFound('settlement', id);
  const { rows } = await ctx.db.query<{ json: Record<string, unknown> }>(
    'SELECT tb_settlement_json(s) AS json FROM settlements s WHERE id = $1 AND merchant_id = $2',
    [id, merchant.merchant_id],
  );
  if (!rows[0]) throw notFound('settlement', id);
  return rows[0].json;
}

/** The merchant's rows, narrowed by equality on each of `fields` the query gives (ours, never input). */
function merchantScope<F extends string>(
  merchantId: string,
  query: Partial<Record<F, unknown>>,
  fields: readonly F[],
): ListScope {
  return {
    owner: [['merchant_id = ?', merchantId]],
    filters: fields
      .filter((field) => query[field] !== undefined)
      .map((field) => [`${field} = ?`, query[field]]),
  };
}

/**
 * Uploads received at once by this process. Each holds a connection of the long-statement pool
 * (ctx.bulkDb, 10) for as long as its client takes to send the file; the rest stays for the
 * reconcile jobs and reports, however many slow uploads arrive.
 */
const MAX_RECEIVING = 4;
/** So that one merchant's uploads leave room for the others'. */
const MAX_RECEIVING_PER_MERCHANT = 3;
/** An upload finding no place waits this long for one (a day's files sent at once take turns). */
const PLACE_WAIT_MS = 3_000;
/** The raw body as the file itself: a compressed upload (`Content-Encoding`) is inflated as it arrives. */
function uploadedFile(req: Request): Readable {
  const encoding = String(req.headers['content-encoding'] ?? 'identity')
    .trim()
    .toLowerCase();
  if (encoding === 'identity') return req;
  const inflate = encoding === 'gzip' ? createGunzip() : encoding === 'deflate' ? createInflate() : undefined;
  if (!inflate)
    throw new ApiError(
      'invalid_request',
      'content_encoding_unsupported',
      `Content-Encoding ${encoding} is not taken: send the file as it is, or gzip or deflate it`,
    );
  // An upload that breaks off breaks the inflated file off too (FileBrokenOffError). Its errors are
  // the receiving's to report (copyLines watches the stream); one that comes once that has given up
  // (the rest of a bad body) has nobody left to tell.
  pipeline(req, inflate, () => {});
  inflate.on('error', () => {});
  return inflate;
}

export function settlementsRouter(ctx: Context): Router {
  const router = Router();
  const lineIdKey = deriveSecret(ctx.config.masterKey, LINE_IDS);
  let receiving = 0;
  const receivingFor = new Map<string, number>();
  const placeFreed = new EventEmitter().setMaxListeners(0);
  /** Takes a place for one of the merchant's uploads, waiting PLACE_WAIT_MS at most; false if none. */
  async function takePlace(merchantId: string): Promise<boolean> {
    const deadline = Date.now() + PLACE_WAIT_MS;
    for (;;) {
      const ours = receivingFor.get(merchantId) ?? 0;
      if (receiving < MAX_RECEIVING && ours < MAX_RECEIVING_PER_MERCHANT) {
        receiving++;
        receivingFor.set(merchantId, ours + 1);
        return true;
      }
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await once(placeFreed, 'freed', { signal: AbortSignal.timeout(left) }).catch(() => {});
    }
  }
  function freePlace(merchantId: string): void {
    receiving--;
    const left = (receivingFor.get(merchantId) ?? 1) - 1;
    if (left) receivingFor.set(merchantId, left);
    else receivingFor.delete(merchantId);
    placeFreed.emit('freed');
  }

  router.post('/v1/settlements/imports', async (req, res) => {
    const merchant = requireMerchant(req);
    const { provider } = parse(importQuerySchema, req.query, 'query');
    knownProvider(provider, 'provider');
    const account = await accountOf(ctx, merchant.merchant_id, provider);
    requireQueues(ctx.queues);
    if (!(await takePlace(merchant.merchant_id)))
      throw new ApiError(
        'rate_limited',
        'imports_busy',
        (receivingFor.get(merchant.merchant_id) ?? 0) >= MAX_RECEIVING_PER_MERCHANT
          ? `${MAX_RECEIVING_PER_MERCHANT} of your settlement files are being received already; send this one again when one is done`
          : `${MAX_RECEIVING} settlement files are being received already; send this one again shortly`,
        undefined,
        429,
        { 'Retry-After': '5' },
      );
    // An upload that has stopped sending lets its connection, and our database connection, go.
    const idleMs = ctx.config.uploadIdleTimeoutMs;
    req.setTimeout(idleMs, () => req.destroy(new Error(`nothing received for ${idleMs} ms`)));
    // The file is parsed while it arrives: a malformed one is refused here, with nothing stored.
    let id: string;
    try {
      const file = uploadedFile(req);
      ({ id } = await receiveFile(
        ctx,
        {
          merchant_id: merchant.merchant_id,
          provider,
          provider_account_id: account?.id ?? null,
          source: 'upload',
        },
        file,
      ));
    } catch (error) {
      // Whatever is still arriving is read and dropped, so the client gets to read the answer.
      req.unpipe();
      req.resume();
      if (error instanceof EmptyFileError)
        throw new ApiError(
          'invalid_request',
          'settlement_file_empty',
          "send the provider's settlement file as the raw request body",
        );
      if (error instanceof SettlementFormatError)
        throw new ApiError('invalid_request', 'settlement_file_invalid', error.message);
      if (error instanceof FileBrokenOffError && isZlibError(error.cause))
        throw new ApiError(
          'invalid_request',
          'settlement_file_invalid',
          `the body is not ${req.headers['content-encoding']} data as its Content-Encoding says: ${(error.cause as Error).message}`,
        );
      if (error instanceof FileBrokenOffError)
        throw new ApiError(
          'invalid_request',
          'upload_incomplete',
          'the request body ended before the file did (the upload broke off); send the whole file again',
        );
      throw error;
    } finally {
      freePlace(merchant.merchant_id);
    }
    await leaveToSweeper(ctx, queueReconcile(ctx, id), { import_id: id });
    res.status(202).json({ id, object: 'job', status: 'queued' });
  });

  router.post('/v1/settlements/fetches', async (req, res) => {
    const merchant = requireMerchant(req);
    const body = parse(fetchBodySchema, req.body);
    const module = knownProvider(body.provider, 'provider');
    if (!module.adapter.fetchSettlement)
      throw new ApiError(
        'invalid_request',
        'fetch_unsupported',
        `provider ${body.provider} offers no settlement data to fetch; import its files instead`,
        'provider',
      );
    const account = await accountOf(ctx, merchant.merchant_id, body.provider);
    if (!account)
      throw new ApiError(
        'invalid_request',
        'provider_not_configured',
        `no ${body.provider} account is configured`,
        'provider',
      );
    const loaded = await ctx.accounts.get(account.id);
    if (loaded && !fetchable(loaded))
      throw new ApiError(
        'invalid_request',
        'fetch_unsupported',
        `this ${body.provider} account's settlement files are not fetched by this gateway; import them instead`,
        'provider',
      );
    requireQueues(ctx.queues);
    const id = await queueFetch(ctx, account, body.date);
    res.status(202).json({ id, object: 'job', status: 'queued' });
  });

  router.get('/v1/settlements/imports', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listQuerySchema, req.query, 'query');
    res.json(
      await listPage<ImportRow>(
        ctx,
        'settlement_imports',
        { owner: [['merchant_id = ?', merchant.merchant_id]] },
        query,
        jobJson,
      ),
    );
  });

  router.get('/v1/jobs/:id', async (req, res) => {
    const merchant = requireMerchant(req);
    refuseQuery(req.query);
    const id = String(req.params.id);
    if (!hasPrefix(id, 'job')) throw notFound('job', id);
    const { rows } = await ctx.db.query<ImportRow>(
      'SELECT * FROM settlement_imports WHERE id = $1 AND merchant_id = $2',
      [id, merchant.merchant_id],
    );
    if (!rows[0]) throw notFound('job', id);
    res.json(jobJson(rows[0]));
  });

  router.get('/v1/settlements', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listSettlementsQuerySchema, req.query, 'query');
    providerFilter(query.provider);
    const scope = merchantScope(merchant.merchant_id, query, ['provider', 'status'] as const);
    res.json(
      await listPage<{ id: string; json: unknown }>(ctx, SETTLEMENT_VIEW, scope, query, (r) => r.json),
    );
  });

  router.get('/v1/settlements/:id', async (req, res) => {
    requireMerchant(req);
    refuseQuery(req.query);
    const json = await visibleSettlement(ctx, req, String(req.params.id));
    const { rows } = await ctx.db.query(
      `SELECT version, import_id, content_hash, count, discrepancies,
              gross, fees, net,
              tb_utc(created_at) AS created_at, tb_utc(superseded_at) AS superseded_at, superseded_by
         FROM settlement_versions WHERE settlement_id = $1 ORDER BY version`,
      [json.id],
    );
    res.json({ ...json, versions: rows });
  });

  router.get('/v1/settlements/:id/lines', async (req, res) => {
    const json = await visibleSettlement(ctx, req, String(req.params.id));
    const query = parse(listLinesQuerySchema, req.query, 'query');
    const limit = query.limit ?? DEFAULT_LIST_LIMIT;
    let after = '0';
    if (query.starting_after) {
      const cursor = query.starting_after.startsWith('ln_')
        ? numberOfOpaque(lineIdKey, query.starting_after.slice(3))
        : undefined;
      // The cursor must be a line of this batch's current version, as every list's cursor is one of its own.
      const { rows } =
        cursor === undefined
          ? { rows: [] }
          : await ctx.db.query<{ current: boolean; earlier: boolean }>(
              `SELECT EXISTS (SELECT 1 FROM settlement_current_lines WHERE settlement_id = $1 AND id = $2) AS current,
                      EXISTS (SELECT 1 FROM settlement_versions v JOIN settlements s ON s.id = v.settlement_id
                                JOIN settlement_lines l ON l.import_id = v.import_id AND l.batch_ref = s.provider_batch_id
                                                       AND l.settlement_currency = s.currency
                               WHERE v.settlement_id = $1 AND l.id = $2) AS earlier`,
              [json.id, String(cursor)],
            );
      // A walk through the lines that a corrected file overtook: told so, not that its cursor is bad.
      if (rows[0]?.earlier && !rows[0].current)
        throw new ApiError(
          'conflict',
          'settlement_superseded',
          `starting_after: line ${query.starting_after} is of an earlier version of this batch, which a corrected file has replaced since; list its lines again from the start`,
          'starting_after',
        );
      if (!rows[0]?.current)
        throw new ApiError(
          'invalid_request',
          'parameter_invalid',
          `starting_after: no such line ${query.starting_after}`,
          'starting_after',
        );
      after = String(cursor);
    }
    const page = await ctx.db.query<{ id: string }>(linePageSql(query.result), [
      json.id,
      after,
      limit + 1,
      ...(query.result && query.result !== 'matched' ? [query.result] : []),
    ]);
    const { rows } = await ctx.db.query<LineRow>(
      `${LINES_SQL} WHERE l.settlement_id = $1 AND l.id = ANY($2::bigint[]) ORDER BY l.id`,
      [json.id, page.rows.map((line) => line.id)],
    );
    res.json({
      object: 'list',
      data: rows.slice(0, limit).map(lineJson(lineIdKey)),
      has_more: rows.length > limit,
    });
  });

  router.get('/v1/reconciliation/discrepancies', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(listDiscrepanciesQuerySchema, req.query, 'query');
    providerFilter(query.provider);
    const scope = merchantScope(merchant.merchant_id, query, ['kind', 'provider', 'settlement_id'] as const);
    res.json(
      await listPage<{ id: string; json: unknown }>(
        ctx,
        DISCREPANCY_VIEW,
        // Open ones unless asked; one closed since (a corrected file) still serves as a cursor.
        { ...scope, filters: [...(scope.filters ?? []), ...CLOSED_FILTER[query.status ?? 'open']] },
        query,
        (r) => r.json,
      ),
    );
  });

  router.get('/v1/reports/settlements', async (req, res) => {
    const merchant = requireMerchant(req);
    const query = parse(reportQuerySchema, req.query, 'query');
    providerFilter(query.provider);
    const q = {
      merchant_id: merchant.merchant_id,
      from: query.from,
      to: query.to,
      group_by: query.group_by ?? 'day',
      provider: query.provider,
    };
    if ((query.format ?? 'json') === 'json') {
      res.json(await settlementReport(ctx, q));
      return;
    }
    res.status(200);
    res.set({
      'Content-Type': 'text/csv; charset=utf-8',
      'Content-Disposition': `attachment; filename="settlements_${q.from}_${q.to}_by_${q.group_by}.csv"`,
    });
    try {
      await streamSettlementReportCsv(ctx, q, res);
    } catch (error) {
      // Nobody is left to answer: the cursor's transaction has been rolled back.
      if (error instanceof ReaderGone) return;
      if (!res.headersSent) throw error;
      // Rows already sent: a clean end would pass the cut report off as whole.
      ctx.log.error({ err: error, request_id: req.requestId }, 'settlement report cut off');
      res.destroy();
      return;
    }
    res.end();
  });

  router.use(dashboardRouter());
  return router;
}

registerOperations([
  {
    method: 'post',
    path: '/v1/settlements/imports',
    summary:
      "Import a provider's settlement file (raw body, streamed and parsed as it arrives: a malformed file is refused with 400 settlement_file_invalid, nothing stored); reconciles in a job",
    query: importQuerySchema,
    rawBody: ['text/csv', 'application/octet-stream'],
    auth: 'merchant',
    responses: { 202: 'job queued' },
  },
  {
    method: 'post',
    path: '/v1/settlements/fetches',
    summary: "Fetch a date's settlement data from the provider now, and reconcile it",
    body: fetchBodySchema,
    auth: 'merchant',
    responses: { 202: 'job queued' },
  },
  {
    method: 'get',
    path: '/v1/settlements/imports',
    summary: 'Imports and fetches (jobs), newest first',
    query: listQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'Job',
  },
  {
    method: 'get',
    path: '/v1/jobs/{id}',
    summary: 'A reconcile job: queued, running, completed or failed, with counts or the error',
    auth: 'merchant',
    responses: { 200: 'job' },
  },
  {
    method: 'get',
    path: '/v1/settlements',
    summary: 'Settlement batches',
    query: listSettlementsQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'Settlement',
  },
  {
    method: 'get',
    path: '/v1/settlements/{id}',
    summary: 'A settlement batch with its version history',
    auth: 'merchant',
    responses: { 200: 'settlement with versions' },
  },
  {
    method: 'get',
    path: '/v1/settlements/{id}/lines',
    summary: "The lines of a batch's current version, in file order, with their match result",
    query: listLinesQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'SettlementLine',
  },
  {
    method: 'get',
    path: '/v1/reconciliation/discrepancies',
    summary: 'Reconciliation discrepancies (open ones unless status=closed or all)',
    query: listDiscrepanciesQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'Discrepancy',
  },
  {
    method: 'get',
    path: '/v1/reports/settlements',
    summary: 'Settlement report by day, store or wallet (JSON, or CSV streamed)',
    query: reportQuerySchema as unknown as z.ZodObject,
    auth: 'merchant',
    responses: { 200: 'report' },
    csv: true,
  },
  {
    method: 'get',
    path: '/dashboard',
    summary: 'Settlement report page for a browser (asks for the secret key, then calls this API)',
    auth: 'none',
    responses: { 200: 'HTML page' },
  },
  {
    method: 'get',
    path: '/dashboard/app.js',
    summary: "The dashboard page's script",
    auth: 'none',
    responses: { 200: 'JavaScript' },
  },
]);

/** zlib's own errors (Z_DATA_ERROR, Z_BUF_ERROR, …): the body was not what its Content-Encoding said. */
function isZlibError(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && code.startsWith('Z_');
}
