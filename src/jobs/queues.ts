/**
 * Queue definitions: names, connections and one `enqueue` helper. Processors live in
 * src/jobs/processors.ts; domain code only ever enqueues through here.
 */
import Queue from 'bull';
import { Redis, type RedisOptions } from 'ioredis';
import type { Context } from '../context.ts';
import { DeadlineError, withDeadline } from '../deadline.ts';
import { ApiError } from '../errors.ts';

export const QUEUE_NAMES = ['resolve', 'deliver', 'outbox', 'settlement', 'maintenance'] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

export type Queues = Record<QueueName, Queue.Queue> & {
  /** Whether the queues' Redis connection is up right now (a cheap look, no round trip). */
  reachable(): boolean;
  close(): Promise<void>;
};

/**
 * How long a caller waits for Redis to take a job. bull's connections retry every command until
 * Redis answers, so without a deadline a Redis outage would hold a till's request for ever. A job
 * that misses it is not lost: PostgreSQL still says the work is unfinished, and the sweeper
 * queues it again (the command itself may also still go through when Redis is back; job ids
 * make that harmless).
 */
const QUEUE_DEADLINE_MS = 3_000;
const CLOSE_DEADLINE_MS = 5_000;

/** Waits for Redis to take a job (`added`), at most QUEUE_DEADLINE_MS. */
export function queueDeadline<T>(added: Promise<T>, what: string): Promise<T> {
  return withDeadline(added, `queueing ${what}`, QUEUE_DEADLINE_MS);
}

/**
 * Refuses work that would need the queues while Redis is down: a sale or a file started now could
 * not be followed up (inquiries, the cancel at the end of its window, reconciliation) until Redis
 * is back, so the caller is told at once, before anything is stored or sent to a provider.
 */
export function requireQueues(queues: Queues): void {
  if (queues.reachable()) return;
  throw new ApiError(
    'unavailable',
    'queue_unavailable',
    'the job queues (Redis) are unreachable; nothing was stored or sent to a provider, retry shortly',
    undefined,
    503,
    { 'Retry-After': '5' },
  );
}

/** bull's own timer clean-up, which its close runs only once Redis answers. */
interface BullInternals {
  _clearTimers(): Promise<void>;
}

export function createQueues(redisUrl: string, prefix: string): Queues {
  // bull wants one shared client, one subscriber and a fresh blocking client per queue.
  const options: RedisOptions = { maxRetriesPerRequest: null, enableReadyCheck: false };
  const client = new Redis(redisUrl, options);
  const subscriber = new Redis(redisUrl, options);
  // Each queue adds its own listeners to the two shared connections.
  client.setMaxListeners(4 * QUEUE_NAMES.length);
  subscriber.setMaxListeners(4 * QUEUE_NAMES.length);
  const blocking: Redis[] = [];
  const createClient = (type: 'client' | 'subscriber' | 'bclient') => {
    if (type === 'client') return client;
    if (type === 'subscriber') return subscriber;
    const connection = new Redis(redisUrl, options);
    // To pause (and so to close) bull drops this connection and connects it again, and leaves that
    // promise without a handler until its running jobs finish: with Redis down it rejects, and the
    // unhandled rejection would end the process in the middle of a graceful shutdown.
    const connect = connection.connect.bind(connection);
    connection.connect = (callback) => connect(callback).catch(() => {});
    blocking.push(connection);
    return connection;
  };
  const queues = Object.fromEntries(
    QUEUE_NAMES.map((name) => [
      name,
      // The hash tag keeps every key of a queue in one Redis Cluster slot.
      new Queue(name, {
        prefix: `{${prefix}}`,
        createClient,
        defaultJobOptions: { removeOnComplete: 1000, removeOnFail: 5000 },
      }),
    ]),
  ) as Record<QueueName, Queue.Queue>;
  return {
    ...queues,
    reachable: () => client.status === 'ready',
    async close() {
      // Running jobs are waited for, unless Redis is down: then they could not finish anyway (every
      // job is safe to run again), and bull's close, which waits for Redis, is cut short.
      const abandonJobs = client.status !== 'ready';
      const closed = Promise.all(QUEUE_NAMES.map((name) => queues[name].close(abandonJobs).catch(() => {})));
      const finished = await withDeadline(closed, 'closing the queues', CLOSE_DEADLINE_MS).then(
        () => true,
        () => false,
      );
      for (const connection of [client, subscriber, ...blocking]) connection.disconnect();
      // A close that never got that far leaves bull's interval timers running, and the process alive.
      if (!finished)
        for (const name of QUEUE_NAMES)
          (queues[name] as unknown as BullInternals)._clearTimers().catch(() => {});
    },
  };
}

export interface EnqueueOptions {
  delayMs?: number;
  /** Deduplicates: a job with the same id that is still queued is not added again. */
  jobId?: string;
  attempts?: number;
  backoffMs?: number;
}

export async function enqueue<T extends object>(
  queues: Queues,
  name: QueueName,
  data: T,
  options: EnqueueOptions = {},
): Promise<void> {
  const added = queues[name].add(data, {
    delay: options.delayMs && options.delayMs > 0 ? Math.round(options.delayMs) : undefined,
    jobId: options.jobId,
    attempts: options.attempts ?? 3,
    backoff: { type: 'exponential', delay: options.backoffMs ?? 1000 },
  });
  await queueDeadline(added, `a ${name} job`);
}

/**
 * For work PostgreSQL already records as due (a payment's or refund's next check): a job Redis
 * cannot take now is left to the sweeper, which finds the overdue row and queues it, instead of
 * failing the request that got this far.
 */
export async function enqueueDue<T extends object>(
  ctx: Pick<Context, 'queues' | 'log'>,
  name: QueueName,
  data: T,
  options: EnqueueOptions = {},
): Promise<void> {
  try {
    await enqueue(ctx.queues, name, data, options);
  } catch (error) {
    if (!(error instanceof DeadlineError)) throw error;
    ctx.log.warn({ err: error, job: data }, 'job not queued; the sweeper will queue it when Redis is back');
  }
}
