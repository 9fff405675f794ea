/** Settlement job processors (worker role): reconcile uploaded files, fetch and reconcile on a schedule. */
import type { Context } from '../context.ts';
import { ensureJob, sweepEach } from '../jobs/queues.ts';
import { addFetchJob, FETCH_INTERVAL_MS, type FetchJob, runFetch, scheduleFetches } from './fetch.ts';
import { queueReconcile } from './imports.ts';
import { discardFailedLines } from './receive.ts';
import { reconcileImport } from './reconcile.ts';

/** Two files at a time: different batches really run in parallel; same batch waits on its lock. */
const RECONCILE_CONCURRENCY = 2;
const FETCH_CONCURRENCY = 2;

export async function startSettlementWorker(ctx: Context): Promise<{ stop(): Promise<void> }> {
  const queue = ctx.queues.settlement;
  const isLast = (attemptsMade: number, attempts = 1) => attemptsMade + 1 >= attempts;
  queue.process('reconcile', RECONCILE_CONCURRENCY, async (job) => {
    const { import_id } = job.data as { import_id: string };
    await reconcileImport(ctx, import_id, isLast(job.attemptsMade, job.opts.attempts));
  });
  queue.process('fetch', FETCH_CONCURRENCY, async (job) => {
    await runFetch(ctx, job.data as FetchJob, isLast(job.attemptsMade, job.opts.attempts));
  });
  queue.process('fetch-schedule', 1, async () => ({
    queued: await scheduleFetches(ctx),
    failed_imports_cleared: await discardFailedLines(ctx),
  }));
  return { async stop() {} };
}

/** The repeatable fetch schedule, added with the others by the worker (processors.ts). */
export async function scheduleSettlementJobs(ctx: Context): Promise<void> {
  await ctx.queues.settlement.add(
    'fetch-schedule',
    {},
    { repeat: { every: FETCH_INTERVAL_MS }, removeOnComplete: 10, removeOnFail: 50 },
  );
}

/**
 * Imports stored while Redis could not take their job (or whose job a Redis flush or a cut-short
 * shutdown lost) would stay unfinished for ever: the sweeper makes sure each has its job.
 * Returns how many were looked at.
 */
export async function requeueStrandedImports(ctx: Context, graceMs = 30_000): Promise<number> {
  const { rows } = await ctx.db.query<{
    id: string;
    source: 'upload' | 'fetch';
    provider_account_id: string | null;
    fetch_date: string | null;
  }>(
    `SELECT id, source, provider_account_id, to_char(fetch_date, 'YYYY-MM-DD') AS fetch_date
       FROM settlement_imports
      WHERE status IN ('queued', 'running') AND created_at < now() - make_interval(secs => $1)
      ORDER BY created_at LIMIT 100`,
    [graceMs / 1000],
  );
  return sweepEach(ctx, rows, 'a settlement import', async (row) => {
    const { id, provider_account_id: accountId, fetch_date: date } = row;
    const fetch =
      row.source === 'fetch' && accountId && date
        ? { import_id: id, account_id: accountId, date }
        : undefined;
    if (row.source === 'fetch' && !fetch) return false;
    const add = fetch ? () => addFetchJob(ctx, fetch) : () => queueReconcile(ctx, id);
    const job = await ensureJob(ctx.queues, 'settlement', id, add, false);
    // A job bull gave up on (its attempts spent, or its worker lost twice) is not run again for
    // ever: the import is failed, visibly, and the merchant imports the file again.
    if (job === 'failed')
      await ctx.db.query(
        `UPDATE settlement_imports SET status = 'failed', finished_at = clock_timestamp(), error_code = 'reconciliation_failed',
                error_message = 'the import job failed repeatedly; import (or fetch) the file again'
          WHERE id = $1 AND status IN ('queued', 'running')`,
        [id],
      );
    return job === 'added';
  });
}
