/**
 * Wakes long-polling tills (`GET /v1/payments/{id}?wait=N`) on whichever API process they hit:
 * every committed status change is published on Redis, and each process holds one subscriber.
 */
import { Redis } from 'ioredis';

export class PaymentUpdates {
  private readonly publisher: Redis;
  private subscriber?: Redis;
  private readonly waiters = new Map<string, Set<(message?: string) => void>>();

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

  /** `payment` is the payment as the API shows it, so a woken till is answered without a read. */
  async publish(paymentId: string, payment: string): Promise<void> {
    await this.publisher.publish(this.channel(paymentId), payment).catch(() => {
      // Best effort: a missed wake-up costs a till at most its wait timeout, never money.
    });
  }

  private async ensureSubscriber(): Promise<Redis> {
    if (this.subscriber) return this.subscriber;
    const subscriber = new Redis(this.redisUrl);
    subscriber.on('error', () => {});
    subscriber.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const id = channel.slice(channel.lastIndexOf(':') + 1);
      for (const wake of this.waiters.get(id) ?? []) wake(message);
    });
    this.subscriber = subscriber;
    await subscriber.psubscribe(`${this.prefix}:payment-updates:*`);
    return subscriber;
  }

  /**
   * Resolves with the published payment when it changes, or with undefined when `timeoutMs`
   * passes or the wait is cancelled. Call it *before* reading the payment, so a change between
   * the read and the wait is not missed.
   */
  async subscribe(
    paymentId: string,
    timeoutMs: number,
  ): Promise<{ changed: Promise<string | undefined>; cancel(): void }> {
    await this.ensureSubscriber();
    let wake!: (message?: string) => void;
    let timer!: NodeJS.Timeout;
    const changed = new Promise<string | undefined>((resolve) => {
      wake = (message?: string) => finish(message);
      timer = setTimeout(() => finish(undefined), timeoutMs);
      const finish = (value: string | undefined) => {
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

  /** Ends every wait now: each long-polling till is answered with the payment as it stands. */
  wakeAll(): void {
    for (const set of this.waiters.values()) for (const wake of [...set]) wake();
  }

  async close(): Promise<void> {
    this.wakeAll();
    this.publisher.disconnect();
    this.subscriber?.disconnect();
  }
}
