/**
 * Queue definitions: names, connections and one `enqueue` helper. Processors live in
 * src/jobs/processors.ts; domain code only ever enqueues through here.
 */
import Queue from 'bull';
import { Redis, type RedisOptions, ReplyError } from 'ioredis';
import type { Context } from '../context.ts';
import { DeadlineError, withDeadline } from '../deadline.ts';
import { ApiError } from '../errors.ts';

export const QUEUE_NAMES = ['resolve', 'deliver', 'outbox', 'settlement', 'maintenance'] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

export type Queues = Record<QueueName, Queue.Queue> & {
  /**
   * Whether Redis is taking jobs: its connection is up and, since the last queue command that went
   * unanswered, it has answered a ping (a hung Redis keeps its connection open). No round trip.
   */
  reachable(): boolean;
  /** A queue command went unanswered: not reachable until Redis answers a ping again. */
  suspect(): void;
  /**
   * Takes no new job from now on (those running go on): the first step of a stop, so that a job
   * queued while in-flight requests finish is left to a worker that stays.
   */
  stopTaking(): Promise<void>;
  /**
   * Waits for running jobs (QUEUE_CLOSE_DEADLINE_MS at most, less with Redis unreachable); false
   * when it stopped waiting: jobs may have been left running.
   */
  close(): Promise<boolean>;
};

/**
 * How long a caller waits for Redis to take a job. bull's connections retry every command until
 * Redis answers, so without a deadline a Redis outage would hold a till's request for ever. A job
 * that misses it is not lost: PostgreSQL still says the work is unfinished, and the sweeper
 * queues it again (see ensureJob).
 */
const QUEUE_DEADLINE_MS = 3_000;
const PROBE_INTERVAL_MS = 1_000;
/** Running jobs get this long to finish at shutdown; with Redis unreachable, this long at most. */
export const QUEUE_CLOSE_DEADLINE_MS = 25_000;
/** How long a running job's lock holds without being renewed. */
const JOB_LOCK_MS = 10_000;
const CLOSE_UNREACHABLE_DEADLINE_MS = 5_000;
const CLOSE_PING_DEADLINE_MS = 1_500;
/** The longest a close takes: its ping, then its wait for running jobs. */
export const QUEUE_CLOSE_MAX_MS = CLOSE_PING_DEADLINE_MS + QUEUE_CLOSE_DEADLINE_MS;

/** Waits for Redis to answer a queue command (`work`), at most QUEUE_DEADLINE_MS. */
export async function queueDeadline<T>(queues: Queues, work: Promise<T>, what: string): Promise<T> {
  try {
    return await withDeadline(work, what, QUEUE_DEADLINE_MS);
  } catch (error) {
    if (error instanceof DeadlineError) queues.suspect();
    throw error;
  }
}

/** bull states of a job that will still run. */
const LIVE_STATES = new Set(['waiting', 'delayed', 'active', 'paused']);
/**
 * bull reads a job's state list by list, so a job moving between lists can look "stuck" (in no
 * list) for a moment: it counts as stuck only when it still reads so after this pause.
 */
const STUCK_RECHECK_MS = 300;

/** bull's answer to removing a job that is locked, that is running. */
export const isLockedJobError = (error: unknown) =>
  error instanceof Error && error.message.startsWith('Could not remove job');

/**
 * Makes sure a job with this id is waiting or running: how the sweepers revive work whose job was
 * lost. A job that still exists under the id keeps its place, so the work never runs twice at
 * once (a job add that missed its deadline may still reach Redis later, under the same id). One
 * that finished, or whose record a flush left in no list ("stuck"), is replaced; so is a failed
 * one, unless `replaceFailed` is false: then 'failed' is returned for the caller to settle.
 */
export async function ensureJob(
  queues: Queues,
  name: QueueName,
  jobId: string,
  add: () => Promise<void>,
  replaceFailed = true,
): Promise<'alive' | 'added' | 'failed'> {
  const job = await queueDeadline(queues, queues[name].getJob(jobId), `looking up job ${jobId}`);
  if (job) {
    let state = await queueDeadline(queues, job.getState(), `reading job ${jobId}`);
    if (state === 'stuck') {
      await new Promise((resolve) => setTimeout(resolve, STUCK_RECHECK_MS));
      state = await queueDeadline(queues, job.getState(), `reading job ${jobId}`);
    }
    if (LIVE_STATES.has(state)) return 'alive';
    if (state === 'failed' && !replaceFailed) return 'failed';
    try {
      await queueDeadline(queues, job.remove(), `removing job ${jobId}`);
    } catch (error) {
      // A job bull will not remove is running: alive after all.
      if (isLockedJobError(error)) return 'alive';
      throw error;
    }
  }
  await add();
  return 'added';
}

/**
 * Runs a sweeper's `revive` for each row: a row that fails is logged and the others go on, but
 * when Redis stops answering the sweep ends (the next one starts over). Returns how many rows got
 * a job again (`revive` says whether it queued one).
 */
export async function sweepEach<T extends { id: string }>(
  ctx: Pick<Context, 'log'>,
  rows: T[],
  what: string,
  revive: (row: T) => Promise<boolean>,
): Promise<number> {
  let revived = 0;
  for (const row of rows) {
    try {
      if (await revive(row)) revived++;
    } catch (error) {
      if (error instanceof DeadlineError) throw error;
      ctx.log.error({ err: error, id: row.id }, `sweeper could not revive ${what}`);
    }
  }
  return revived;
}

/**
 * For work PostgreSQL already records as due (a payment's or refund's next check, a stored file):
 * a job Redis cannot take now is left to the sweeper, which finds the row and queues its job,
 * instead of failing the request that got this far.
 */
export async function leaveToSweeper(
  ctx: Pick<Context, 'log' | 'queues'>,
  adding: Promise<void>,
  what: Record<string, unknown>,
): Promise<void> {
  try {
    await adding;
  } catch (error) {
    // A timeout, or Redis refusing the command (out of memory, read-only after a fail-over): the
    // work is safe in PostgreSQL either way.
    if (!(error instanceof DeadlineError || error instanceof ReplyError)) throw error;
    if (error instanceof ReplyError) ctx.queues.suspect();
    ctx.log.warn({ err: error, ...what }, 'job not queued; the sweeper will queue it when Redis is back');
  }
}

/**
 * Refuses work that would need the queues while Redis is down: a sale or a file started now could
 * not be followed up (inquiries, the cancel at the end of its window, reconciliation) until Redis
 * is back, so the caller is told at once, before anything is stored or sent to a provider.
 */
export function requireQueues(queues: Queues): void {
  if (!queues.reachable()) throw queuesUnavailable();
}

export const queuesUnavailable = () =>
  new ApiError(
    'unavailable',
    'queue_unavailable',
    'the job queues (Redis) are unreachable; nothing was stored or sent to a provider, retry shortly',
    undefined,
    503,
    { 'Retry-After': '5' },
  );

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
        // A delivery is tried up to 82 times: bull would keep every try's stack on the job.
        defaultJobOptions: { removeOnComplete: 1000, removeOnFail: 5000, stackTraceLimit: 1 },
        settings: {
          backoffStrategies: { capped: cappedBackoff },
          // A job whose process died is handed to another worker once its lock lapses and a stalled
          // check sees it: within 15 s, not bull's 30 s lock and 30 s check, while a till waits for
          // its sale. A live worker renews the lock every 5 s (its event loop is never held that long).
          lockDuration: JOB_LOCK_MS,
          stalledInterval: JOB_LOCK_MS / 2,
        },
      }),
    ]),
  ) as Record<QueueName, Queue.Queue>;
  let probe: NodeJS.Timeout | undefined;
  let closing = false;
  const reachable = () => client.status === 'ready' && probe === undefined;
  const suspect = () => {
    if (probe || closing) return;
    // One ping at a time: on a hung connection each would wait in its queue until Redis is back.
    let pinging = false;
    probe = setInterval(() => {
      if (pinging) return;
      pinging = true;
      client
        .ping()
        .then(
          () => {
            clearInterval(probe);
            probe = undefined;
          },
          () => {},
        )
        .finally(() => {
          pinging = false;
        });
    }, PROBE_INTERVAL_MS);
    probe.unref();
  };
  return {
    ...queues,
    reachable,
    suspect,
    async stopTaking() {
      // Locally, without waiting for the running jobs.
      const paused = Promise.all(QUEUE_NAMES.map((name) => queues[name].pause(true, true).catch(() => {})));
      // A fetch already waiting on its blocking connection would still take the next job: bull
      // cuts it only after a polite QUIT has waited 500 ms behind it. Each queue is marked paused
      // within a few microtasks (the fetch cut after that is not retried), so it is cut now.
      await new Promise((resolve) => setImmediate(resolve));
      for (const connection of blocking) connection.disconnect();
      await paused;
    },
    async close() {
      // Running jobs are waited for, unless Redis is (or becomes) unreachable: then they could not
      // finish anyway (every job is safe to run again), and bull's close, which waits for Redis,
      // is cut short.
      // A hung Redis that no command of ours has met yet would hold the close for its whole deadline.
      await withDeadline(client.ping(), 'a ping', CLOSE_PING_DEADLINE_MS).catch(() => suspect());
      const abandonJobs = !reachable();
      const closed = Promise.all(QUEUE_NAMES.map((name) => queues[name].close(abandonJobs).catch(() => {})));
      const started = Date.now();
      const finished = await new Promise<boolean>((resolve) => {
        const watch = setInterval(() => {
          const waited = Date.now() - started;
          if (waited < QUEUE_CLOSE_DEADLINE_MS && (reachable() || waited < CLOSE_UNREACHABLE_DEADLINE_MS))
            return;
          clearInterval(watch);
          resolve(false);
        }, 250);
        void closed.then(() => {
          clearInterval(watch);
          resolve(true);
        });
      });
      closing = true;
      clearInterval(probe);
      for (const connection of [client, subscriber, ...blocking]) connection.disconnect();
      // A close that never got that far leaves bull's interval timers running, and the process alive.
      if (!finished)
        for (const name of QUEUE_NAMES)
          (queues[name] as unknown as BullInternals)._clearTimers().catch(() => {});
      return finished;
    },
  };
}

export interface EnqueueOptions {
  delayMs?: number;
  /** Deduplicates: a job with the same id that is still queued is not added again. */
  jobId?: string;
  attempts?: number;
  backoffMs?: number;
  /** The longest wait between two attempts: the back-off doubles up to it, then stays there. */
  backoffCapMs?: number;
}

/** The wait before retry `attemptsMade` + 1: bull's exponential back-off, (2^n − 1) × delay, up to a cap. */
export function cappedBackoff(
  attemptsMade: number,
  _error: unknown,
  options?: { delay: number; cap: number },
): number {
  const { delay = 1000, cap = Number.POSITIVE_INFINITY } = options ?? {};
  return Math.min(Math.round((2 ** attemptsMade - 1) * delay), cap);
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
    backoff:
      options.backoffCapMs === undefined
        ? { type: 'exponential', delay: options.backoffMs ?? 1000 }
        : { type: 'capped', options: { delay: options.backoffMs ?? 1000, cap: options.backoffCapMs } },
  });
  await queueDeadline(queues, added, `queueing a ${name} job`);
}

/** enqueue, left to the sweeper when Redis cannot take the job now (see leaveToSweeper). */
export function enqueueDue<T extends object>(
  ctx: Pick<Context, 'queues' | 'log'>,
  name: QueueName,
  data: T,
  options: EnqueueOptions = {},
): Promise<void> {
  return leaveToSweeper(ctx, enqueue(ctx.queues, name, data, options), { queue: name, job: data });
}

/** Sets the queue-depth gauge from every queue's job counts. */
export async function countQueues(ctx: Pick<Context, 'queues' | 'metrics'>): Promise<void> {
  for (const name of QUEUE_NAMES) {
    const counts = await ctx.queues[name].getJobCounts();
    for (const [state, value] of Object.entries(counts))
      ctx.metrics.queueDepth.set({ queue: name, state }, value);
  }
}
