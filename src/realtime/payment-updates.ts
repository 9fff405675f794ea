/**
 * Wakes long-polling tills (`GET /v1/payments/{id}?wait=N`) on whichever API process they hit:
 * every committed status change is published on Redis, and each process holds one subscriber.
 */
import { Redis } from 'ioredis';

export class PaymentUpdates {
  private readonly publisher: Redis;
  private subscriber?: Redis;
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(
    private readonly redisUrl: string,
    private readonly prefix: string,
  ) {
    this.publisher = new Redis(redisUrl, { maxRetriesPerRequest: 2, enableAutoPipelining: true });
    this.publisher.on('error', () => {});
  }

  private channel(paymentId: string): string {
    return `${this.prefix}:payment-updates:${paymentId}`;
  }

  async publish(paymentId: string, status: string): Promise<void> {
    await this.publisher.publish(this.channel(paymentId), status).catch(() => {
      // Best effort: a missed wake-up costs a till at most its wait timeout, never money.
    });
  }

  private async ensureSubscriber(): Promise<Redis> {
    if (this.subscriber) return this.subscriber;
    const subscriber = new Redis(this.redisUrl);
    subscriber.on('error', () => {});
    subscriber.on('pmessage', (_pattern: string, channel: string) => {
      const id = channel.slice(channel.lastIndexOf(':') + 1);
      for (const wake of this.waiters.get(id) ?? []) wake();
    });
    this.subscriber = subscriber;
    await subscriber.psubscribe(`${this.prefix}:payment-updates:*`);
    return subscriber;
  }

  /**
   * Resolves when a change for the payment is published or `timeoutMs` passes. Call it
   * *before* reading the payment, so a change between the read and the wait is not missed.
   */
  async subscribe(
    paymentId: string,
    timeoutMs: number,
  ): Promise<{ changed: Promise<boolean>; cancel(): void }> {
    await this.ensureSubscriber();
    let wake!: () => void;
    let timer!: NodeJS.Timeout;
    const changed = new Promise<boolean>((resolve) => {
      wake = () => finish(true);
      timer = setTimeout(() => finish(false), timeoutMs);
      const finish = (value: boolean) => {
        clearTimeout(timer);
        const set = this.waiters.get(paymentId);
        set?.delete(wake);
        if (set?.size === 0) this.waiters.delete(paymentId);
        resolve(value);
      };
    });
    const set = this.waiters.get(paymentId) ?? new Set();
    this.waiters.set(paymentId, set);
    set.add(wake);
    return { changed, cancel: () => wake() };
  }

  async close(): Promise<void> {
    for (const set of this.waiters.values()) for (const wake of set) wake();
    this.publisher.disconnect();
    this.subscriber?.disconnect();
  }
}
