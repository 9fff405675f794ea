/**
 * The simulated Antom's memory across restarts. Real Antom never forgets an order; a sandbox that
 * did would resolve an in-flight payment differently after a gateway restart (API.md: "the sandbox
 * survives a restart"). Every change to a record is appended as one JSON line to a file named
 * after the seed; a new simulator with the same seed replays it, and compacts it on start.
 */
import { appendFile, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { seededStatePath } from '../../simulator-port.ts';
import type { PaymentRecord, RefundRecord } from './ledger.ts';

type Entry =
  | { t: 'p'; rec: Omit<PaymentRecord, 'refunds'> }
  | { t: 'r'; rec: RefundRecord }
  | { t: 'f'; key: string };

export interface JournalState {
  payments: PaymentRecord[];
  refunds: RefundRecord[];
  failedOnce: string[];
}

/** Records older than this are dropped when the file is compacted. */
const KEEP_MS = 3 * 24 * 3600_000;

const PAYMENT_DATES = ['createdAt', 'paidAt', 'cancelledAt', 'expiresAt'] as const;
const REFUND_DATES = ['createdAt', 'refundedAt'] as const;

export function defaultJournalPath(seed: Buffer): string {
  return seededStatePath(seed, '.jsonl');
}

export class Journal {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly path: string) {
    mkdirSync(join(path, '..'), { recursive: true });
  }

  /** Replay the file (last line per record wins), then rewrite it compacted. */
  load(now = Date.now()): JournalState {
    let text = '';
    try {
      text = readFileSync(this.path, 'utf8');
    } catch {
      return { payments: [], refunds: [], failedOnce: [] };
    }
    const payments = new Map<string, PaymentRecord>();
    const refunds = new Map<string, RefundRecord>();
    const failedOnce = new Set<string>();
    for (const line of text.split('\n')) {
      if (!line) continue;
      let entry: Entry;
      try {
        entry = JSON.parse(line) as Entry;
      } catch {
        continue; // a torn last line after a crash
      }
      if (entry.t === 'p') {
        const rec = revive(entry.rec, PAYMENT_DATES) as PaymentRecord;
        payments.set(`${rec.clientId}\u0000${rec.paymentRequestId}`, { ...rec, refunds: [] });
      } else if (entry.t === 'r') {
        refunds.set(entry.rec.refundId, revive(entry.rec, REFUND_DATES) as RefundRecord);
      } else if (entry.t === 'f') {
        failedOnce.add(entry.key);
      }
    }
    const keep = [...payments.values()].filter((p) => now - p.createdAt.getTime() < KEEP_MS);
    const byId = new Map(keep.map((p) => [p.paymentId, p]));
    const keptRefunds = [...refunds.values()].filter((r) => byId.has(r.paymentId));
    for (const refund of keptRefunds) byId.get(refund.paymentId)?.refunds.push(refund);
    const state = { payments: keep, refunds: keptRefunds, failedOnce: [...failedOnce] };
    writeFileSync(
      this.path,
      [
        ...keep.map((p) => line({ t: 'p', rec: withoutRefunds(p) })),
        ...keptRefunds.map((r) => line({ t: 'r', rec: r })),
        ...state.failedOnce.map((key) => line({ t: 'f', key })),
      ].join(''),
    );
    return state;
  }

  payment(record: PaymentRecord): void {
    this.append(line({ t: 'p', rec: withoutRefunds(record) }));
  }

  refund(record: RefundRecord): void {
    this.append(line({ t: 'r', rec: record }));
  }

  failedOnce(key: string): void {
    this.append(line({ t: 'f', key }));
  }

  /** Resolves once everything appended so far is written. */
  flush(): Promise<void> {
    return this.queue;
  }

  private append(text: string): void {
    // Ordered, non-blocking appends; one line each, so a crash tears at most the last one.
    this.queue = this.queue.then(
      () => new Promise<void>((resolve) => appendFile(this.path, text, () => resolve())),
    );
  }
}

function line(entry: Entry): string {
  return `${JSON.stringify(entry)}\n`;
}

function withoutRefunds(record: PaymentRecord): Omit<PaymentRecord, 'refunds'> {
  const { refunds: _refunds, ...rest } = record;
  return rest;
}

function revive<T extends object>(record: T, fields: readonly string[]): T {
  const out = { ...record } as Record<string, unknown>;
  for (const field of fields) {
    if (typeof out[field] === 'string') out[field] = new Date(out[field] as string);
  }
  return out as T;
}
