/**
 * Streaming parser for Antom's settlement details CSV (alipay.md §12): a header row of field
 * names, data rows, and a last line `<END>`.
 *
 * Column names beyond the first few are not confirmed by a real file, so columns are found by
 * header name in any order (PROVIDERS.md, "Decisions where the sources stop"); unknown columns are
 * reported, not fatal; a missing required column fails the whole import naming it; a file without
 * `<END>` is treated as truncated. Amounts are integer minor units; a decimal point is rejected
 * rather than guessed at. Amounts are yielded unsigned: `type` carries the direction.
 */
import type { Readable } from 'node:stream';
import { parse } from 'csv-parse';
import { currencyFromCode, type Money } from '../../src/payments/money.ts';
import {
  isCalendarDate,
  MAX_SETTLEMENT_RECORD_CHARS,
  negativePaymentAmount,
  SettlementFormatError,
  type SettlementLine,
} from '../contract.ts';
import { decimal } from './mapping.ts';

export const REQUIRED_COLUMNS = [
  'settlementBatchId',
  'transactionId',
  'transactionType',
  'settlementTime',
  'transactionAmountValue',
  'transactionCurrency',
  'settlementAmountValue',
  'settlementCurrency',
] as const;

export const OPTIONAL_COLUMNS = [
  'originalTransactionId',
  'transactionRequestId',
  'paymentTime',
  'quoteCurrencyPair',
  'quotePrice',
  'feeAmountValue',
  'feeCurrency',
  'taxFeeAmountValue',
  'taxFeeCurrency',
  'referenceStoreId',
  'pspName',
  // Confirmed by the docs but not used by us.
  'customerId',
  'PSP',
  'ARN',
  'referenceMerchantId',
  'referenceTransactionId',
  'paymentMethodType',
  'productCode',
] as const;

type Column = (typeof REQUIRED_COLUMNS)[number] | (typeof OPTIONAL_COLUMNS)[number];

const KNOWN = new Set<string>([...REQUIRED_COLUMNS, ...OPTIONAL_COLUMNS]);

const TYPES: Record<string, SettlementLine['type']> = {
  PAYMENT: 'payment',
  REFUND: 'refund',
  CANCEL: 'cancel',
};

export const END_MARKER = '<END>';

export interface ParseOptions {
  /** Called once with header names we do not know (reported, never fatal). */
  onUnknownColumns?(names: string[]): void;
  /**
   * Called at the end of the file with its lines of each transactionType that is not a payment,
   * refund or cancel (Antom lists fees, reserves, reversals and disputes too): such lines are
   * passed over, and told so.
   */
  onOtherTypes?(types: OtherType[]): void;
}

/** The lines of one transactionType passed over: how many, the first, and their settled amounts. */
export interface OtherType {
  type: string;
  lines: number;
  first_line: number;
  /** Signed minor units by settlement currency; undefined where a line's amount could not be read. */
  settled?: Map<string, number>;
}

/** csv-parse's own errors (an unclosed quote, text after a closing quote) as format errors. */
async function* readable(records: AsyncIterable<string[]>, nextLine: () => number): AsyncIterable<string[]> {
  try {
    yield* records;
  } catch (error) {
    if (error instanceof SettlementFormatError) throw error;
    // csv-parse reads ahead of the records taken so far: its own count says where it stopped.
    const { code, lines, records } = error as { code?: unknown; lines?: unknown; records?: unknown };
    if (code === 'CSV_QUOTE_NOT_CLOSED' && typeof records === 'number') {
      // `lines` is where the file ended; the quote opened on the record after the last one read
      // (a line each: settlement files have no line breaks inside cells).
      const opened = records + 1;
      throw new SettlementFormatError(
        `line ${opened}: a quoted cell opened on this line is never closed (a stray quote, or the file is cut short)`,
        opened,
      );
    }
    const line = typeof lines === 'number' && lines > 0 ? lines : nextLine();
    throw new SettlementFormatError(`line ${line}: unreadable CSV: ${(error as Error).message}`, line);
  }
}

export async function* parseSettlementFile(
  file: Readable,
  options: ParseOptions = {},
): AsyncGenerator<SettlementLine> {
  // csv-parse's `info` and `trim` options halve its speed; records are counted here instead (a
  // quoted cell spanning lines would shift the count, which settlement files do not have).
  const parser = file.pipe(
    parse({ bom: true, relax_column_count: true, max_record_size: MAX_SETTLEMENT_RECORD_CHARS }),
  );
  file.on('error', (error) => parser.destroy(error));
  let columns: Map<Column, number> | undefined;
  let width = 0;
  let ended = false;
  let lineNo = 0;
  const otherTypes = new Map<string, OtherType>();
  const records = readable(parser as AsyncIterable<string[]>, () => lineNo + 1);
  for await (const record of records) {
    lineNo++;
    if (record.every((cell) => cell.trim() === '')) continue;
    if (ended) {
      throw new SettlementFormatError(`line ${lineNo}: data after the ${END_MARKER} trailer`, lineNo);
    }
    // A spreadsheet saving the file pads the trailer with commas: `<END>,,,,`.
    if (record[0].trim() === END_MARKER && record.slice(1).every((cell) => cell.trim() === '')) {
      if (!columns)
        throw new SettlementFormatError(`line ${lineNo}: ${END_MARKER} before any header row`, lineNo);
      ended = true;
      continue;
    }
    if (!columns) {
      columns = headerColumns(
        record.map((name) => name.trim()),
        options,
      );
      // Up to the last named column: a spreadsheet pads header and rows with empty cells.
      width = record.length;
      while (width > 0 && record[width - 1].trim() === '') width--;
      continue;
    }
    // A short row would leave its last columns empty (a fee of 0); a long one has cells no column
    // names.
    if (record.length < width || record.slice(width).some((cell) => cell.trim() !== ''))
      throw new SettlementFormatError(
        `line ${lineNo}: the row has ${record.length} cells, the header names ${width} (truncated?)`,
        lineNo,
      );
    const line = toLine(record, columns, lineNo);
    if (typeof line !== 'string') yield line;
    else passedOver(otherTypes, line, lineNo, record, columns);
  }
  if (!columns) throw new SettlementFormatError('settlement file is empty: no header row');
  if (!ended) {
    throw new SettlementFormatError(`settlement file ends without the ${END_MARKER} trailer (truncated?)`);
  }
  if (otherTypes.size) options.onOtherTypes?.([...otherTypes.values()]);
}

function passedOver(
  types: Map<string, OtherType>,
  type: string,
  lineNo: number,
  record: string[],
  columns: Map<Column, number>,
): void {
  let seen = types.get(type);
  if (!seen) {
    seen = { type, lines: 0, first_line: lineNo, settled: new Map() };
    types.set(type, seen);
  }
  seen.lines++;
  const value = record[columns.get('settlementAmountValue') ?? -1]?.trim() ?? '';
  const currency = currencyFromCode(record[columns.get('settlementCurrency') ?? -1]?.trim() ?? '');
  if (!seen.settled || !currency || !/^[-+]?\d{1,15}$/.test(value)) {
    seen.settled = undefined;
    return;
  }
  seen.settled.set(currency, (seen.settled.get(currency) ?? 0) + Number(value));
}

function headerColumns(header: string[], options: ParseOptions): Map<Column, number> {
  const columns = new Map<Column, number>();
  const unknown: string[] = [];
  const twice: string[] = [];
  header.forEach((name, index) => {
    if (KNOWN.has(name)) {
      if (columns.has(name as Column)) twice.push(name);
      else columns.set(name as Column, index);
    } else if (name.length > 0) {
      unknown.push(name);
    }
  });
  if (twice.length > 0)
    throw new SettlementFormatError(
      `settlement file header names column${twice.length > 1 ? 's' : ''} ${twice.join(', ')} more than once`,
      1,
    );
  const missing = REQUIRED_COLUMNS.filter((name) => !columns.has(name));
  if (missing.length > 0) {
    throw new SettlementFormatError(
      `settlement file header lacks required column${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`,
      1,
    );
  }
  if (unknown.length > 0) options.onUnknownColumns?.(unknown);
  return columns;
}

/** The line, or the transactionType of a line that settles no payment, refund or cancel. */
function toLine(record: string[], columns: Map<Column, number>, lineNo: number): SettlementLine | string {
  const cell = (name: Column): string | undefined => {
    const index = columns.get(name);
    const value = index === undefined ? undefined : record[index]?.trim();
    return value === undefined || value === '' ? undefined : value;
  };
  const required = (name: Column): string => {
    const value = cell(name);
    if (value === undefined) throw new SettlementFormatError(`line ${lineNo}: ${name} is empty`, lineNo);
    return value;
  };
  const rawType = required('transactionType');
  const type = TYPES[rawType.toUpperCase()];
  if (!type) return rawType;

  if (type === 'payment')
    for (const column of ['transactionAmountValue', 'settlementAmountValue'] as const) {
      const value = required(column);
      if (value.startsWith('-')) throw negativePaymentAmount(lineNo, column, value);
    }
  const settlement = amount(
    required('settlementAmountValue'),
    required('settlementCurrency'),
    'settlementAmountValue',
    lineNo,
  );
  const line: SettlementLine = {
    line_no: lineNo,
    batch_id: required('settlementBatchId'),
    type,
    provider_reference: required('transactionId'),
    transaction_amount: amount(
      required('transactionAmountValue'),
      required('transactionCurrency'),
      'transactionAmountValue',
      lineNo,
    ),
    settlement_amount: settlement,
    fee: feeOf(cell, settlement.currency, lineNo),
    settled_at: time(required('settlementTime'), 'settlementTime', lineNo),
  };
  const original = cell('originalTransactionId');
  if (original) line.original_provider_reference = original;
  const requestId = cell('transactionRequestId');
  if (requestId) line.provider_request_id = requestId;
  // Antom's pages disagree on a refund's transactionId: its refundId, or (the Chinese page) the
  // paymentId. Named by the payment, a refund is known by our refundRequestId alone, or a second
  // refund of the same sale would read as the first settled twice.
  if (type === 'refund' && requestId && original === line.provider_reference)
    line.provider_reference = requestId;
  const paidAt = cell('paymentTime');
  if (paidAt) line.transacted_at = time(paidAt, 'paymentTime', lineNo);
  const rate = cell('quotePrice');
  if (rate) {
    const parsed = decimal(rate);
    if (!parsed)
      throw new SettlementFormatError(`line ${lineNo}: quotePrice ${rate} is not a decimal`, lineNo);
    line.exchange_rate = parsed;
  }
  const store = cell('referenceStoreId');
  if (store) line.store_id = store;
  // Not the PSP column: that names the acquirer (Antom itself), not the customer's wallet.
  const psp = cell('pspName');
  if (psp) line.wallet_psp = psp;
  return line;
}

/** Antom's fee with the tax on it: both are taken from what it settles (alipay.md §12). */
function feeOf(
  cell: (name: Column) => string | undefined,
  settlementCurrency: string,
  lineNo: number,
): Money {
  const feeValue = cell('feeAmountValue');
  const fee =
    feeValue === undefined
      ? { value: 0, currency: settlementCurrency }
      : amount(feeValue, cell('feeCurrency') ?? settlementCurrency, 'feeAmountValue', lineNo);
  const taxValue = cell('taxFeeAmountValue');
  if (taxValue === undefined) return fee;
  const tax = amount(taxValue, cell('taxFeeCurrency') ?? fee.currency, 'taxFeeAmountValue', lineNo);
  if (tax.currency !== fee.currency)
    throw new SettlementFormatError(
      `line ${lineNo}: the tax on the fee is in ${tax.currency}, the fee in ${fee.currency}`,
      lineNo,
    );
  const value = fee.value + tax.value;
  if (!Number.isSafeInteger(value))
    throw new SettlementFormatError(`line ${lineNo}: the fee with its tax is out of range`, lineNo);
  return { value, currency: fee.currency };
}

function amount(value: string, currencyCode: string, column: string, lineNo: number): Money {
  const currency = currencyFromCode(currencyCode);
  if (!currency)
    throw new SettlementFormatError(`line ${lineNo}: unknown currency ${currencyCode} for ${column}`, lineNo);
  if (!/^[-+]?\d{1,16}$/.test(value)) {
    throw new SettlementFormatError(
      `line ${lineNo}: ${column} "${value}" is not an integer amount in minor units`,
      lineNo,
    );
  }
  const minor = Math.abs(Number(value));
  // Sixteen digits reach past 2^53, where a Number is no longer the amount written.
  if (!Number.isSafeInteger(minor))
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${value}" is out of range`, lineNo);
  // Refunds may be written signed or unsigned; the direction comes from transactionType.
  return { value: minor, currency };
}

/**
 * `yyyy-MM-dd[ T]HH:mm[:ss[.SSS]]`, with a zone (`Z`, `±hh:mm`) or without one, read as UTC (not
 * confirmed by a real file), or a bare date. Never anything Date reads in the server's own zone.
 */
const TIME = /^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i;

function time(value: string, column: string, lineNo: number): Date {
  const parts = TIME.exec(value);
  const iso = parts && `${parts[1]}T${parts[2] ?? '00:00'}${parts[3] ?? 'Z'}`;
  const date = iso && isCalendarDate(iso) ? new Date(iso) : new Date(Number.NaN);
  if (Number.isNaN(date.getTime())) {
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${value}" is not a date-time`, lineNo);
  }
  return date;
}
