/**
 * Wakes long-polling tills (`GET /v1/payments/{id}?wait=N`) on whichever API process they hit:
 * every committed status change is published on Redis, and each process holds one subscriber.
 * Announcements that API keys were revoked, or a merchant's provider accounts changed, go out on
 * Redis too, so that every process's caches forget them at once; they have a subscriber of their
 * own, held from the start, while the one for payment updates (a message for every payment) waits
 * for the first long-poll.
 */
import { Redis } from 'ioredis';
import { withDeadline } from '../deadline.ts';

const SUBSCRIBE_DEADLINE_MS = 1_000;
const ANNOUNCE_DEADLINE_MS = 1_000;

export class PaymentUpdates {
  private readonly publisher: Redis;
  private subscriber?: Redis;
  private subscribed?: Promise<unknown>;
  private readonly waiters = new Map<string, Set<(message?: string) => void>>();
  private readonly revocationListeners: (() => void)[] = [];
  private readonly accountListeners: ((merchantId: string) => void)[] = [];
  private announcementSubscriber?: Redis;
  /** Set by wakeAll at shutdown: no wait starts after it. */
  private waitsEnded = false;

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

  private get revocationChannel(): string {
    return `${this.prefix}:key-revocations`;
  }

  private get accountChannel(): string {
    return `${this.prefix}:account-changes`;
  }

  /** Best effort: the caches expire anyway. */
  private async announce(channel: string, message: string, what: string): Promise<void> {
    await withDeadline(this.publisher.publish(channel, message), what, ANNOUNCE_DEADLINE_MS).catch(() => {});
  }

  /** Tells every process that API keys were revoked. */
  announceRevocation(): Promise<void> {
    return this.announce(this.revocationChannel, '1', 'announcing a key revocation');
  }

  /** Tells every process that a merchant's provider accounts changed (configured or deleted). */
  announceAccountChange(merchantId: string): Promise<void> {
    return this.announce(this.accountChannel, merchantId, 'announcing a provider account change');
  }

  /** Calls `listener` whenever any process announces a revocation. */
  onRevocation(listener: () => void): void {
    this.revocationListeners.push(listener);
    this.listenForAnnouncements();
  }

  /** Calls `listener` with the merchant whenever any process announces a change of its accounts. */
  onAccountChange(listener: (merchantId: string) => void): void {
    this.accountListeners.push(listener);
    this.listenForAnnouncements();
  }

  private listenForAnnouncements(): void {
    if (this.announcementSubscriber) return;
    const subscriber = new Redis(this.redisUrl, { maxRetriesPerRequest: null });
    subscriber.on('error', () => {});
    subscriber.on('message', (channel: string, message: string) => {
      if (channel === this.revocationChannel) for (const notify of this.revocationListeners) notify();
      if (channel === this.accountChannel) for (const notify of this.accountListeners) notify(message);
    });
    subscriber.subscribe(this.revocationChannel, this.accountChannel).catch(() => {});
    this.announcementSubscriber = subscriber;
  }

  /** `payment` is the payment as the API shows it, so a woken till is answered without a read. */
  async publish(paymentId: string, payment: string): Promise<void> {
    await this.publisher.publish(this.channel(paymentId), payment).catch(() => {
      // Best effort: a missed wake-up costs a till at most its wait timeout, never money.
    });
  }

  /**
   * The one pattern subscription of this process, made on first use. Its command waits in the
   * offline queue through an outage (and ioredis renews it on every reconnect), so a process that
   * first subscribes while Redis is down is woken again once Redis is back.
   */
  private ensureSubscribed(): Promise<unknown> {
    if (this.subscribed) return this.subscribed;
    const subscriber = new Redis(this.redisUrl, { maxRetriesPerRequest: null });
    subscriber.on('error', () => {});
    subscriber.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const id = channel.slice(channel.lastIndexOf(':') + 1);
      for (const wake of this.waiters.get(id) ?? []) wake(message);
    });
    this.subscriber = subscriber;
    this.subscribed = subscriber.psubscribe(`${this.prefix}:payment-updates:*`);
    this.subscribed.catch(() => {});
    return this.subscribed;
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
    // While Redis is down a wait cannot be woken early, but it still ends at its timeout, which
    // counts the time spent trying to subscribe.
    if (this.waitsEnded) return { changed: Promise.resolve(undefined), cancel: () => {} };
    const endsAt = Date.now() + timeoutMs;
    await withDeadline(
      this.ensureSubscribed(),
      'subscribing to payment updates',
      Math.min(SUBSCRIBE_DEADLINE_MS, timeoutMs),
    ).catch(() => {});
    let wake!: (message?: string) => void;
    let timer!: NodeJS.Timeout;
    const changed = new Promise<string | undefined>((resolve) => {
      wake = (message?: string) => finish(message);
      timer = setTimeout(() => finish(undefined), Math.max(0, endsAt - Date.now()));
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

  /** False once the process is stopping: a wait then ends at once. */
  get waitsLast(): boolean {
    return !this.waitsEnded;
  }

  /**
   * Ends every wait now, and any that would start later (the process is stopping): each
   * long-polling till is answered with the payment as it stands.
   */
  wakeAll(): void {
    this.waitsEnded = true;
    for (const set of this.waiters.values()) for (const wake of [...set]) wake();
  }

  async close(): Promise<void> {
    this.wakeAll();
    this.publisher.disconnect();
    this.subscriber?.disconnect();
    this.announcementSubscriber?.disconnect();
  }
}
