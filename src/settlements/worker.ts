/** Settlement job processors (worker role): reconcile uploaded files, fetch and reconcile on a schedule. */
import type { Context } from '../context.ts';
import { FETCH_INTERVAL_MS, type FetchJob, runFetch, scheduleFetches } from './fetch.ts';
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
  await queue.add(
    'fetch-schedule',
    {},
    { repeat: { every: FETCH_INTERVAL_MS }, removeOnComplete: 10, removeOnFail: 50 },
  );
  return { async stop() {} };
}
