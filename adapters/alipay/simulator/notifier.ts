/**
 * notifyPayment delivery (alipay.md §10, §15.8): signed over the notify URL's path, retried at
 * Antom's schedule (0 s, 2 min, 10 min, 10 min, 1 h, 2 h, 6 h, 15 h, times the time scale) until
 * an HTTP 200 whose body says resultStatus S and resultCode SUCCESS.
 */
import { send } from '../../transport.ts';
import { isRecord, type Json } from '../mapping.ts';

export const NOTIFY_SCHEDULE_S = [0, 120, 600, 600, 3600, 7200, 21600, 54000] as const;

export interface DeliveryAttempt {
  paymentRequestId: string;
  notifyType: string;
  resultStatus: string;
  attempt: number;
  at: Date;
  httpStatus?: number;
  acknowledged: boolean;
  error?: string;
  duplicate: boolean;
}

export interface NotifierOptions {
  timeScale: number;
  /** Headers for one attempt: a fresh request-time and signature each time. */
  headersFor(path: string, clientId: string, body: string): Record<string, string>;
  noRetryOnMalformedAck(): boolean;
  duplicates(): boolean;
}

export class Notifier {
  readonly attempts: DeliveryAttempt[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(private readonly options: NotifierOptions) {}

  deliver(url: string, clientId: string, body: Json): void {
    this.schedule(url, clientId, JSON.stringify(body), body, 0);
  }

  close(): void {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private schedule(url: string, clientId: string, raw: string, body: Json, attempt: number): void {
    if (this.closed || attempt >= NOTIFY_SCHEDULE_S.length) return;
    const timer = setTimeout(
      () => {
        this.timers.delete(timer);
        void this.attempt(url, clientId, raw, body, attempt);
      },
      NOTIFY_SCHEDULE_S[attempt] * 1000 * this.options.timeScale,
    );
    this.timers.add(timer);
  }

  private async attempt(
    url: string,
    clientId: string,
    raw: string,
    body: Json,
    attempt: number,
  ): Promise<void> {
    const first = await this.post(url, clientId, raw, body, attempt, false);
    if (this.options.duplicates()) await this.post(url, clientId, raw, body, attempt, true);
    if (first === 'acknowledged' || this.closed) return;
    if (first === 'malformed' && this.options.noRetryOnMalformedAck()) return;
    this.schedule(url, clientId, raw, body, attempt + 1);
  }

  private async post(
    url: string,
    clientId: string,
    raw: string,
    body: Json,
    attempt: number,
    duplicate: boolean,
  ): Promise<'acknowledged' | 'malformed' | 'refused'> {
    const record: DeliveryAttempt = {
      paymentRequestId: String(body.paymentRequestId ?? ''),
      notifyType: String(body.notifyType ?? ''),
      resultStatus: isRecord(body.result) ? String(body.result.resultStatus) : '',
      attempt,
      at: new Date(),
      acknowledged: false,
      duplicate,
    };
    this.attempts.push(record);
    let path: string;
    try {
      const parsed = new URL(url);
      path = `${parsed.pathname}${parsed.search}`;
    } catch {
      record.error = `bad notify URL ${url}`;
      return 'refused';
    }
    try {
      const response = await send({
        method: 'POST',
        url,
        headers: this.options.headersFor(path, clientId, raw),
        body: raw,
        timeoutMs: 5000,
      });
      record.httpStatus = response.status;
      if (response.status !== 200) return 'refused';
      let ack: unknown;
      try {
        ack = JSON.parse(response.body.toString('utf8'));
      } catch {
        return 'malformed';
      }
      const result = isRecord(ack) && isRecord(ack.result) ? ack.result : undefined;
      if (result?.resultStatus === 'S' && result.resultCode === 'SUCCESS') {
        record.acknowledged = true;
        return 'acknowledged';
      }
      return 'malformed';
    } catch (error) {
      record.error = (error as Error).message;
      return 'refused';
    }
  }
}
