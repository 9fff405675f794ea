/**
 * Scheduled settlement fetch: for each live provider account whose adapter can fetch settlement
 * data, the recent settlement dates are fetched, parsed and stored like an upload and reconciled. A fetch
 * that fails is retried with exponential back-off by bull and recorded on its import (GET
 * /v1/jobs/{id}, GET /v1/settlements/imports), never dropped silently.
 */

import { createHash } from 'node:crypto';
import { SettlementFormatError } from '../../adapters/contract.ts';
import type { Context } from '../context.ts';
import { DeadlineError } from '../deadline.ts';
import { isLockedJobError, leaveToSweeper, queueDeadline } from '../jobs/queues.ts';
import type { LoadedAccount } from '../payments/accounts.ts';
import { createImport, type ImportRow, isFinished } from './imports.ts';
import { discardLines, EmptyFileError, ImportFinishedError, receiveFile } from './receive.ts';
import { reconcileImport } from './reconcile.ts';

export const FETCH_ATTEMPTS = 5;
export const FETCH_BACKOFF_MS = 60_000;
/** How often the schedule looks for settlement dates to fetch. */
export const FETCH_INTERVAL_MS = 6 * 3_600_000;

export interface FetchJob {
  import_id: string;
  account_id: string;
  date: string;
}

export function utcDate(daysAgo: number, now = new Date()): string {
  return new Date(now.getTime() - daysAgo * 86_400_000).toISOString().slice(0, 10);
}

/** Creates the import record and queues the fetch; returns the job id. */
export async function queueFetch(
  ctx: Context,
  account: { id: string; merchant_id: string; provider: string },
  date: string,
  options: { importId?: string; attempts?: number; backoffMs?: number } = {},
): Promise<string> {
  const importId = await createImport(ctx.db, {
    id: options.importId,
    merchant_id: account.merchant_id,
    provider: account.provider,
    provider_account_id: account.id,
    source: 'fetch',
    fetch_date: date,
    status: 'queued',
  });
  await leaveToSweeper(
    ctx,
    addFetchJob(ctx, { import_id: importId, account_id: account.id, date }, options),
    {
      import_id: importId,
    },
  );
  return importId;
}

/** The fetch job of an import; its id is the import's, so adding one that exists changes nothing. */
export async function addFetchJob(
  ctx: Context,
  data: FetchJob,
  options: { attempts?: number; backoffMs?: number } = {},
): Promise<void> {
  const added = ctx.queues.settlement.add('fetch', data, {
    jobId: data.import_id,
    attempts: options.attempts ?? FETCH_ATTEMPTS,
    backoff: { type: 'exponential', delay: options.backoffMs ?? FETCH_BACKOFF_MS },
    removeOnComplete: 1000,
    removeOnFail: 5000,
  });
  await queueDeadline(ctx.queues, added, 'queueing a settlement fetch job');
}

/** One fetch attempt: download, parse and store, reconcile. Throws for bull to retry. */
export async function runFetch(ctx: Context, job: FetchJob, lastAttempt: boolean): Promise<void> {
  const { rows } = await ctx.db.query<ImportRow>('SELECT * FROM settlement_imports WHERE id = $1', [
    job.import_id,
  ]);
  if (!rows[0] || isFinished(rows[0].status)) return;
  try {
    const account = await ctx.accounts.get(job.account_id);
    if (!account) throw new Error(`provider account ${job.account_id} no longer exists`);
    const fetcher = account.module.adapter.fetchSettlement;
    if (!fetcher) throw new Error(`provider ${account.row.provider} offers no settlement fetch`);
    const stream = await fetcher.call(account.module.adapter, account.context, job.date);
    if (!stream) {
      await ctx.db.query(
        `UPDATE settlement_imports SET status = 'completed', finished_at = clock_timestamp(), counts = '{"no_file": true, "lines": 0}',
                error_code = NULL, error_message = NULL WHERE id = $1`,
        [job.import_id],
      );
      return;
    }
    // Parsed and stored exactly as an upload is; a malformed file is final (the same bytes fail
    // the same way), so it is recorded and not retried.
    try {
      await receiveFile(
        ctx,
        {
          id: job.import_id,
          merchant_id: rows[0].merchant_id,
          provider: rows[0].provider,
          provider_account_id: job.account_id,
          source: 'fetch',
        },
        stream,
      );
    } catch (error) {
      if (error instanceof ImportFinishedError) return;
      if (!(error instanceof SettlementFormatError || error instanceof EmptyFileError)) throw error;
      const message =
        error instanceof EmptyFileError ? 'the fetched settlement file is empty' : error.message;
      await ctx.db.query(
        `UPDATE settlement_imports SET status = 'failed', finished_at = clock_timestamp(), attempts = attempts + 1,
                error_code = 'settlement_file_invalid', error_message = $2, error_line = $3
          WHERE id = $1`,
        [job.import_id, message, error instanceof SettlementFormatError ? (error.line_no ?? null) : null],
      );
      ctx.metrics.reconciliation.inc({ provider: rows[0].provider, result: 'import_failed' });
      return;
    }
  } catch (error) {
    const message = `settlement fetch for ${job.date} failed: ${(error as Error).message}`;
    ctx.log.warn(
      { err: error, import_id: job.import_id, account_id: job.account_id },
      'settlement fetch failed',
    );
    ctx.metrics.reconciliation.inc({ provider: rows[0].provider, result: 'fetch_failed' });
    await ctx.db.query(
      `UPDATE settlement_imports SET attempts = attempts + 1, error_code = 'fetch_failed', error_message = $2,
              status = CASE WHEN $3 THEN 'failed' ELSE status END,
              finished_at = CASE WHEN $3 THEN clock_timestamp() ELSE finished_at END
        WHERE id = $1`,
      [job.import_id, message, lastAttempt],
    );
    if (lastAttempt) await discardLines(ctx.bulkDb, job.import_id);
    throw error;
  }
  await reconcileImport(ctx, job.import_id, lastAttempt);
}

/**
 * One import per account and date: queued unless it exists; a failed one is tried again. Returns
 * whether a fetch was queued.
 */
async function queueDateFetch(
  ctx: Context,
  account: { id: string; merchant_id: string; provider: string },
  date: string,
): Promise<boolean> {
  const importId = `job_f${createHash('sha256').update(`${account.id}:${date}`).digest('hex').slice(0, 21)}`;
  const existing = await ctx.db.query<{ status: string }>(
    'SELECT status FROM settlement_imports WHERE id = $1',
    [importId],
  );
  const status = existing.rows[0]?.status;
  if (status && status !== 'failed') return false;
  if (status === 'failed') {
    // bull keeps the old job under this id and would take no new one while it is there. A job it
    // will not remove is still running (its import was failed from inside it): next tick, then.
    const old = await queueDeadline(ctx.queues, ctx.queues.settlement.getJob(importId), 'a job lookup');
    if (old) {
      try {
        await queueDeadline(ctx.queues, old.remove(), 'removing a finished job');
      } catch (error) {
        if (!isLockedJobError(error)) throw error;
        ctx.log.info({ import_id: importId }, 'settlement fetch still running; tried again next tick');
        return false;
      }
    }
    await discardLines(ctx.bulkDb, importId);
    await ctx.db.query('DELETE FROM settlement_imports WHERE id = $1', [importId]);
  }
  await queueFetch(ctx, account, date, { importId });
  return true;
}

/** Whether the account's provider offers its settlement data to fetch, for this account. */
export function fetchable(account: LoadedAccount): boolean {
  const { adapter } = account.module;
  return adapter.fetchSettlement !== undefined && (adapter.fetchesSettlementOf?.(account.context) ?? true);
}

/** The repeatable tick: queue the dates each fetchable account should have settled by now. */
export async function scheduleFetches(ctx: Context, now = new Date()): Promise<number> {
  const { rows } = await ctx.db.query<{ id: string; merchant_id: string; provider: string }>(
    'SELECT id, merchant_id, provider FROM provider_accounts WHERE deleted_at IS NULL',
  );
  let queued = 0;
  for (const account of rows) {
    const loaded = await ctx.accounts.get(account.id).catch(() => undefined);
    if (!loaded || !fetchable(loaded)) continue;
    for (let back = 1; back <= loaded.module.adapter.resolution.settlement_delay_days + 1; back++) {
      const date = utcDate(back, now);
      try {
        if (await queueDateFetch(ctx, account, date)) queued++;
      } catch (error) {
        // Redis not answering ends the tick (the next one starts over); anything else skips a date.
        if (error instanceof DeadlineError) throw error;
        ctx.log.error({ err: error, account_id: account.id, date }, 'settlement fetch not queued');
      }
    }
  }
  return queued;
}
