/**
 * Queue definitions: names, connections and one `enqueue` helper. Processors live in
 * src/jobs/processors.ts; domain code only ever enqueues through here.
 */
import Queue from 'bull';
import { Redis, type RedisOptions } from 'ioredis';

export const QUEUE_NAMES = ['resolve', 'deliver', 'outbox', 'settlement', 'maintenance'] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

export type Queues = Record<QueueName, Queue.Queue> & { close(): Promise<void> };

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
    async close() {
      await Promise.all(QUEUE_NAMES.map((name) => queues[name].close().catch(() => {})));
      for (const connection of [client, subscriber, ...blocking]) connection.disconnect();
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
  await queues[name].add(data, {
    delay: options.delayMs && options.delayMs > 0 ? Math.round(options.delayMs) : undefined,
    jobId: options.jobId,
    attempts: options.attempts ?? 3,
    backoff: { type: 'exponential', delay: options.backoffMs ?? 1000 },
  });
}
