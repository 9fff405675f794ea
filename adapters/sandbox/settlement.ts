/**
 * The sandbox settlement file: a plain CSV with a header row. Amounts are integer minor units.
 * Columns are found by header name, in any order and any case; unknown columns are ignored.
 */
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { parse as parseSync } from 'csv-parse/sync';
import { isCurrency } from '../../src/payments/money.ts';
import {
  isCalendarDate,
  MAX_SETTLEMENT_RECORD_CHARS,
  negativePaymentAmount,
  SettlementFormatError,
  type SettlementLine,
} from '../contract.ts';
import type { SandboxPaymentView } from './protocol.ts';

export const SANDBOX_SETTLEMENT_COLUMNS = [
  'batch_id',
  'type',
  'transaction_id',
  'original_transaction_id',
  'request_id',
  'amount',
  'currency',
  'settlement_amount',
  'settlement_currency',
  'fee',
  'exchange_rate',
  'settled_at',
  'store_id',
  'wallet_psp',
] as const;

const REQUIRED = [
  'batch_id',
  'type',
  'transaction_id',
  'amount',
  'currency',
  'settlement_amount',
  'settlement_currency',
  'fee',
  'settled_at',
];
const TYPES = new Map<string, SettlementLine['type']>([
  ['payment', 'payment'],
  ['refund', 'refund'],
  ['cancel', 'cancel'],
]);
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
/** The sandbox's fee: 1.8 % of the settlement amount, rounded half up. */
const FEE_PER_MILLE = 18;

export function sandboxFee(amount: number): number {
  return Math.floor((amount * FEE_PER_MILLE + 500) / 1000);
}

/** A refund as the simulator settles it: on the UTC day it succeeded, in the payment's currency, without a fee. */
export interface SettledRefund {
  refund_id: string;
  refund_request_id: string;
  /** The paid order's transaction id. */
  transaction_id: string;
  amount: number;
  currency: string;
  refunded_at: string;
}

/**
 * The file the simulator serves for a date: every order paid and every refund made that UTC day,
 * settled in its own currency.
 */
export function settlementCsv(
  orders: SandboxPaymentView[],
  date: string,
  currencies: Map<string, [number, string]> = new Map(),
  refunds: SettledRefund[] = [],
): string {
  const rows = [SANDBOX_SETTLEMENT_COLUMNS.join(',')];
  for (const order of orders) {
    if (order.status !== 'succeeded' || !order.paid_at?.startsWith(date)) continue;
    const [amount, currency] = currencies.get(order.request_id) ?? [0, ''];
    if (!currency) continue;
    rows.push(
      [
        `SBX-${date}-${currency}`,
        'payment',
        order.transaction_id ?? '',
        '',
        order.request_id,
        amount,
        currency,
        amount,
        currency,
        sandboxFee(amount),
        '1',
        `${date}T12:00:00Z`,
        '',
        order.wallet_psp ?? '',
      ].join(','),
    );
  }
  for (const refund of refunds) {
    if (!refund.refunded_at.startsWith(date)) continue;
    rows.push(
      [
        `SBX-${date}-${refund.currency}`,
        'refund',
        refund.refund_id,
        refund.transaction_id,
        refund.refund_request_id,
        refund.amount,
        refund.currency,
        refund.amount,
        refund.currency,
        0,
        '1',
        `${date}T12:00:00Z`,
        '',
        '',
      ].join(','),
    );
  }
  return `${rows.join('\n')}\n`;
}

function integerField(value: string, column: string, lineNo: number): number {
  if (!/^-?\d+$/.test(value))
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${value}" is not an integer amount`, lineNo);
  const n = Number(value);
  if (!Number.isSafeInteger(n))
    throw new SettlementFormatError(`line ${lineNo}: ${column} is out of range`, lineNo);
  return n;
}

function currencyField(value: string, column: string, lineNo: number): string {
  const raw = value.toUpperCase();
  if (!isCurrency(raw))
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${raw}" is not an ISO 4217 currency`, lineNo);
  return raw;
}

/** CSV records, each as its trimmed fields, and the line of the file each begins on. */
interface Records {
  records: string[][];
  lines: number[];
}

const tooLong = (line: number) =>
  new SettlementFormatError(
    `line ${line}: longer than ${MAX_SETTLEMENT_RECORD_CHARS.toLocaleString('en')} characters; not a settlement line`,
    line,
  );

/**
 * CSV records, each as its trimmed fields. Settlement files are plain unquoted CSV nearly always,
 * and csv-parse costs ~30 µs a record on this 2-core box (its per-character state machine, the
 * `columns`/`trim` options), which made parsing a third of a 1,000,000-line import. So a line
 * without a double quote is split on commas here (exactly what csv-parse makes of it); a record
 * with quotes anywhere, including a quoted cell spanning lines, is handed whole to csv-parse. Empty
 * lines are skipped, `\r\n` is accepted, a leading BOM dropped, like csv-parse's `bom`,
 * `skip_empty_lines` and `trim` options did.
 */
async function* csvRecords(file: Readable): AsyncGenerator<Records> {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  let quoted = '';
  let quotedFrom = 0;
  let first = true;
  let physical = 0;
  let records: Records = { records: [], lines: [] };
  const take = (raw: string) => {
    physical++;
    if (raw.length > MAX_SETTLEMENT_RECORD_CHARS) throw tooLong(physical);
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (quoted || line.includes('"')) {
      if (!quoted) quotedFrom = physical;
      quoted = quoted ? `${quoted}\n${line}` : line;
      if (quoted.length > MAX_SETTLEMENT_RECORD_CHARS) throw tooLong(quotedFrom);
      // An odd number of quotes so far: a quoted cell goes on on the next line.
      if ((quoted.match(/"/g)?.length ?? 0) % 2 === 1) return;
      const text = quoted;
      quoted = '';
      let parsed: string[][];
      try {
        parsed = parseSync(text, { relax_column_count: true, trim: true, relax_quotes: false });
      } catch (error) {
        throw new SettlementFormatError(
          `line ${quotedFrom}: unreadable CSV: ${(error as Error).message}`,
          quotedFrom,
        );
      }
      for (const record of parsed) {
        records.records.push(record);
        records.lines.push(quotedFrom);
      }
      return;
    }
    if (line.trim() === '') return;
    // A file of old Mac line endings would otherwise be read as its header alone, and import nothing.
    if (line.includes('\r'))
      throw new SettlementFormatError(
        `line ${physical}: a carriage return inside a line; lines must end in LF or CRLF`,
        physical,
      );
    const fields = line.split(',');
    for (let i = 0; i < fields.length; i++) {
      const f = fields[i];
      const c0 = f.charCodeAt(0);
      const cn = f.charCodeAt(f.length - 1);
      if (c0 <= 32 || cn <= 32) fields[i] = f.trim();
    }
    records.records.push(fields);
    records.lines.push(physical);
  };
  for await (const chunk of file) {
    let text = rest + (typeof chunk === 'string' ? chunk : decoder.write(chunk));
    if (first && text.length > 0) {
      first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
      take(text.slice(start, nl));
      start = nl + 1;
    }
    rest = text.slice(start);
    if (rest.length > MAX_SETTLEMENT_RECORD_CHARS) throw tooLong(physical + 1);
    if (records.records.length) {
      yield records;
      records = { records: [], lines: [] };
    }
  }
  rest += decoder.end();
  if (rest) take(rest);
  if (quoted)
    throw new SettlementFormatError(
      `line ${quotedFrom}: the file ends inside a quoted cell (truncated?)`,
      quotedFrom,
    );
  if (records.records.length) yield records;
}

/** Where each known column is in the file (-1: absent), from its header row. */
type ColumnIndex = Record<(typeof SANDBOX_SETTLEMENT_COLUMNS)[number], number>;

export async function* parseSandboxSettlement(file: Readable): AsyncIterable<SettlementLine[]> {
  let header: string[] | undefined;
  let at = {} as ColumnIndex;
  // Lines of a batch mostly share their settlement time and currencies: each distinct text is
  // parsed or checked once (the Date is shared between those lines, and nobody changes it).
  let lastSettledText: string | undefined;
  let lastSettledAt = new Date(Number.NaN);
  let lastCurrencyText: string | undefined;
  let lastCurrency = '';
  let lastSettlementText: string | undefined;
  let lastSettlementCurrency = '';
  // pipe()d sources do not forward their errors; iterating the source itself does.
  for await (const { records, lines: lineNos } of csvRecords(file)) {
    const lines: SettlementLine[] = [];
    try {
      for (let index = 0; index < records.length; index++) {
        let record = records[index];
        // Numbered as the file's lines are (blank lines and quoted line breaks count), as a text
        // editor shows them.
        const lineNo = lineNos[index];
        if (!header) {
          // The header is checked as soon as it is read, so a header-only file (no payments that day) is
          // valid. Its names are read in any case, as a spreadsheet may have capitalised them.
          record = record.map((name) => name.toLowerCase());
          const missing = REQUIRED.filter((c) => !record.includes(c));
          if (missing.length)
            throw new SettlementFormatError(`missing required column(s): ${missing.join(', ')}`, lineNo);
          // Unknown columns are ignored, but not amounts and times: they are rows run into the header.
          const values = record.filter((name) => /^[-+]?\d+(\.\d+)?$/.test(name) || RFC3339.test(name));
          if (values.length)
            throw new SettlementFormatError(
              `line ${lineNo}: the header holds values (${values.slice(0, 3).join(', ')}), not column names: were the file's line breaks lost? (curl -d drops them; send the file with --data-binary)`,
              lineNo,
            );
          const twice = SANDBOX_SETTLEMENT_COLUMNS.filter((c) => record.indexOf(c) !== record.lastIndexOf(c));
          if (twice.length)
            throw new SettlementFormatError(
              `line ${lineNo}: column(s) named more than once in the header: ${twice.join(', ')}`,
              lineNo,
            );
          header = record;
          at = Object.fromEntries(
            SANDBOX_SETTLEMENT_COLUMNS.map((c) => [c, record.indexOf(c)]),
          ) as ColumnIndex;
          continue;
        }
        if (record.length !== header.length)
          throw new SettlementFormatError(
            `line ${lineNo}: the record has ${record.length} columns, the header ${header.length} (truncated?)`,
            lineNo,
          );
        const rawType = record[at.type];
        const type = TYPES.get(rawType) ?? TYPES.get(rawType.toLowerCase());
        if (!type) throw new SettlementFormatError(`line ${lineNo}: unknown type "${rawType}"`, lineNo);
        const settledText = record[at.settled_at];
        if (settledText !== lastSettledText) {
          lastSettledText = settledText;
          // RFC 3339 only: Date alone would also take "1" or "Nov 29 2026".
          lastSettledAt =
            RFC3339.test(settledText) && isCalendarDate(settledText)
              ? new Date(settledText)
              : new Date(Number.NaN);
        }
        if (Number.isNaN(lastSettledAt.getTime()))
          throw new SettlementFormatError(
            `line ${lineNo}: settled_at "${settledText}" is not an RFC 3339 timestamp`,
            lineNo,
          );
        if (record[at.currency] !== lastCurrencyText) {
          lastCurrencyText = record[at.currency];
          lastCurrency = currencyField(lastCurrencyText, 'currency', lineNo);
        }
        if (record[at.settlement_currency] !== lastSettlementText) {
          lastSettlementText = record[at.settlement_currency];
          lastSettlementCurrency = currencyField(lastSettlementText, 'settlement_currency', lineNo);
        }
        const amount = integerField(record[at.amount], 'amount', lineNo);
        const settlementAmount = integerField(record[at.settlement_amount], 'settlement_amount', lineNo);
        if (type === 'payment' && (amount < 0 || settlementAmount < 0))
          throw negativePaymentAmount(
            lineNo,
            amount < 0 ? 'amount' : 'settlement_amount',
            amount < 0 ? record[at.amount] : record[at.settlement_amount],
          );
        lines.push({
          line_no: lineNo,
          batch_id: record[at.batch_id],
          type,
          provider_reference: record[at.transaction_id],
          original_provider_reference: optional(record, at.original_transaction_id),
          provider_request_id: optional(record, at.request_id),
          transaction_amount: { value: Math.abs(amount), currency: lastCurrency },
          settlement_amount: { value: Math.abs(settlementAmount), currency: lastSettlementCurrency },
          fee: {
            value: Math.abs(integerField(record[at.fee], 'fee', lineNo)),
            currency: lastSettlementCurrency,
          },
          exchange_rate: optional(record, at.exchange_rate),
          settled_at: lastSettledAt,
          store_id: optional(record, at.store_id),
          wallet_psp: optional(record, at.wallet_psp),
        });
      }
    } catch (error) {
      // The lines before the one that failed go first (see inChunks).
      if (lines.length) yield lines;
      throw error;
    }
    if (lines.length) yield lines;
  }
  if (!header) throw new SettlementFormatError('empty settlement file: no header row');
}

/** An optional column's value: absent from the file, or empty, is undefined. */
function optional(record: string[], index: number): string | undefined {
  return index >= 0 ? record[index] || undefined : undefined;
}
