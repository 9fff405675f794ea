/** Job processors (worker role): resolution, merchant webhook delivery, the outbox relay and the sweeper. */
import {
  deliver,
  deliveryWaitMs,
  dispatchOutbox,
  requeuePendingDeliveries,
} from '../../webhooks/outbound.ts';
import type { Context } from '../context.ts';
import { RETENTION_H } from '../http/idempotency.ts';
import { CredentialsUnreadableError } from '../payments/accounts.ts';
import { resolveRefund, sweepPendingRefunds } from '../payments/refunds.ts';
import { alertOnce, resolvePayment, sweepStragglers } from '../payments/service.ts';
import { rematchDecidedLines } from '../settlements/reconcile.ts';
import {
  requeueStrandedImports,
  scheduleSettlementJobs,
  startSettlementWorker,
} from '../settlements/worker.ts';

const CONCURRENCY = { resolve: 20, deliver: 10 };
const OUTBOX_INTERVAL_MS = 250;

/** A worker adds the repeatable schedules again every this many sweep intervals (see startWorker). */
const SCHEDULE_RENEWAL_SWEEPS = 3;

/**
 * The repeatable jobs. Keyed by name and schedule, so every worker adding them, every time, yields
 * one schedule.
 */
async function addSchedules(ctx: Context): Promise<void> {
  await ctx.queues.maintenance.add(
    'sweep',
    {},
    { repeat: { every: ctx.config.sweepIntervalMs }, removeOnComplete: 10, removeOnFail: 50 },
  );
  await ctx.queues.maintenance.add(
    'cleanup',
    {},
    { repeat: { every: 3_600_000 }, removeOnComplete: 10, removeOnFail: 50 },
  );
  await scheduleSettlementJobs(ctx);
}

/**
 * A payment or refund whose account's credentials do not open (a lost master key) cannot be
 * inquired or cancelled: a QR code may still be paid, a sale may never be reversed. An admin alert
 * says so, once a payment or refund while it is open.
 */
function alertUnfollowable(
  ctx: Context,
  error: CredentialsUnreadableError,
  ids: { payment_id?: string; refund_id?: string },
): Promise<void> {
  const detail = `${error.message}: it cannot be followed up at the provider (inquired, cancelled, reversed) until the account is configured again or the old key restored`;
  if (ids.refund_id) return alertOnce(ctx, 'credentials_unreadable', detail, { refund_id: ids.refund_id });
  if (ids.payment_id) return alertOnce(ctx, 'credentials_unreadable', detail, { payment_id: ids.payment_id });
  return Promise.resolve();
}

export interface Worker {
  stop(): Promise<void>;
}

export async function startWorker(ctx: Context): Promise<Worker> {
  const { queues } = ctx;

  queues.resolve.process(CONCURRENCY.resolve, async (job) => {
    const data = job.data as { payment_id?: string; refund_id?: string; step?: number };
    try {
      if (data.payment_id) await resolvePayment(ctx, data.payment_id, data.step);
      if (data.refund_id) await resolveRefund(ctx, data.refund_id, data.step);
    } catch (error) {
      if (error instanceof CredentialsUnreadableError) await alertUnfollowable(ctx, error, data);
      throw error;
    }
  });
  // The sweeper takes a failed step up again, but only this says why it failed.
  queues.resolve.on('failed', (job, error) => {
    // Said once, by its alert: each retry (every few seconds until the account is configured
    // again) would log it anew.
    if (error instanceof CredentialsUnreadableError) return;
    ctx.log.error({ err: error, job: job.data }, 'a payment or refund could not be followed up');
  });

  queues.deliver.process(CONCURRENCY.deliver, async (job) => {
    const { delivery_id } = job.data as { delivery_id: string };
    const made = job.attemptsMade + 1;
    await deliver(ctx, delivery_id, made >= (job.opts.attempts ?? 1) ? null : deliveryWaitMs(made));
  });

  const sweepSteps: [string, (ctx: Context) => Promise<number>][] = [
    ['resumed', sweepStragglers],
    ['refunds', sweepPendingRefunds],
    ['deliveries', requeuePendingDeliveries],
    ['imports', requeueStrandedImports],
    ['rematched', rematchDecidedLines],
  ];
  queues.maintenance.process('sweep', 1, async () => {
    // Each step on its own: one that keeps failing (a statement past the query timeout, a bug)
    // must not starve the steps after it for good. The job fails with the first failure.
    const counts: Record<string, number> = {};
    let failure: unknown;
    for (const [name, step] of sweepSteps) {
      try {
        counts[name] = await step(ctx);
      } catch (error) {
        ctx.log.error({ err: error, step: name }, 'a step of the sweeper failed');
        failure ??= error;
      }
    }
    if (counts.resumed)
      ctx.log.warn({ resumed: counts.resumed }, 'sweeper resumed payments whose jobs were lost');
    if (failure) throw failure;
    return counts;
  });
  queues.maintenance.process('cleanup', 1, async () => {
    // A day's keys, or many days' after an outage of the worker: as long as it takes.
    await ctx.bulkDb.query(
      'DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)',
      [RETENTION_H],
    );
  });
  await startSettlementWorker(ctx);
  await addSchedules(ctx);
  // Queue depth is counted when /metrics is scraped; the schedule that counted it every 15 s goes.
  await queues.maintenance.removeRepeatable('queue-depth', { every: 15_000 });
  // The schedules live in Redis: a Redis that lost its keys (a restart without persistence, a
  // failover) would have no sweeper until a worker restarted, and sales left processing would never
  // end. So each worker adds them again, every so often, from its own timer.
  const keeper = setInterval(() => {
    addSchedules(ctx).catch((error) => ctx.log.warn({ err: error }, 'could not renew the job schedules'));
  }, SCHEDULE_RENEWAL_SWEEPS * ctx.config.sweepIntervalMs);

  let stopping = false;
  let relay: Promise<void> = Promise.resolve();
  // An outage fails every tick: said once when it starts and once when it ends, not four times a second.
  let failedSince: { at: Date; ticks: number } | undefined;
  const timer = setInterval(() => {
    if (stopping) return;
    relay = relay
      .then(async () => {
        while (!stopping && (await dispatchOutbox(ctx)) > 0) {}
        if (failedSince)
          ctx.log.info(
            { failing_since: failedSince.at, failed_ticks: failedSince.ticks },
            'outbox relay works again',
          );
        failedSince = undefined;
      })
      .catch((error) => {
        if (failedSince) failedSince.ticks++;
        else {
          failedSince = { at: new Date(), ticks: 1 };
          ctx.log.error({ err: error }, 'outbox relay failed; retrying every tick, said again once it works');
        }
      });
  }, OUTBOX_INTERVAL_MS);

  return {
    async stop() {
      stopping = true;
      clearInterval(timer);
      clearInterval(keeper);
      await relay;
    },
  };
}
