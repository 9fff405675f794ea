/**
 * The sandbox settlement file: a plain CSV with a header row. Amounts are integer minor units.
 * Columns are found by header name, in any order; unknown columns are ignored.
 */
import type { Readable } from 'node:stream';
import { parse } from 'csv-parse';
import { isCurrency } from '../../src/payments/money.ts';
import { SettlementFormatError, type SettlementLine } from '../contract.ts';
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
const TYPES: Record<string, SettlementLine['type']> = {
  payment: 'payment',
  refund: 'refund',
  cancel: 'cancel',
};
/** The sandbox's fee: 1.8 % of the settlement amount, rounded half up. */
const FEE_PER_MILLE = 18;

export function sandboxFee(amount: number): number {
  return Math.floor((amount * FEE_PER_MILLE + 500) / 1000);
}

/** The file the simulator serves for a date: every order paid that UTC day, settled in its own currency. */
export function settlementCsv(
  orders: SandboxPaymentView[],
  date: string,
  currencies: Map<string, [number, string]> = new Map(),
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
  return `${rows.join('\n')}\n`;
}

function integerField(record: Record<string, string>, column: string, lineNo: number): number {
  const raw = (record[column] ?? '').trim();
  if (!/^-?\d+$/.test(raw))
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${raw}" is not an integer amount`, lineNo);
  const value = Number(raw);
  if (!Number.isSafeInteger(value))
    throw new SettlementFormatError(`line ${lineNo}: ${column} is out of range`, lineNo);
  return value;
}

function currencyField(record: Record<string, string>, column: string, lineNo: number): string {
  const raw = (record[column] ?? '').trim().toUpperCase();
  if (!isCurrency(raw))
    throw new SettlementFormatError(`line ${lineNo}: ${column} "${raw}" is not an ISO 4217 currency`, lineNo);
  return raw;
}

export async function* parseSandboxSettlement(file: Readable): AsyncIterable<SettlementLine> {
  let headerSeen = false;
  // The header is checked as soon as it is read, so a header-only file (no payments that day) is valid.
  const columns = (header: string[]) => {
    const missing = REQUIRED.filter((c) => !header.includes(c));
    if (missing.length)
      throw new SettlementFormatError(`missing required column(s): ${missing.join(', ')}`, 1);
    headerSeen = true;
    return header;
  };
  const parser = file.pipe(
    parse({ columns, bom: true, skip_empty_lines: true, trim: true, relax_column_count: false }),
  );
  // pipe() does not forward a source's errors; without this a failing source would hang the parse.
  file.on('error', (error) => parser.destroy(error));
  let lineNo = 1;
  try {
    for await (const record of parser as AsyncIterable<Record<string, string>>) {
      lineNo++;
      const type = TYPES[(record.type ?? '').trim().toLowerCase()];
      if (!type) throw new SettlementFormatError(`line ${lineNo}: unknown type "${record.type}"`, lineNo);
      const settledAt = new Date(record.settled_at);
      if (Number.isNaN(settledAt.getTime()))
        throw new SettlementFormatError(`line ${lineNo}: settled_at is not a timestamp`, lineNo);
      const currency = currencyField(record, 'currency', lineNo);
      const settlementCurrency = currencyField(record, 'settlement_currency', lineNo);
      yield {
        line_no: lineNo,
        batch_id: record.batch_id,
        type,
        provider_reference: record.transaction_id,
        original_provider_reference: record.original_transaction_id || undefined,
        provider_request_id: record.request_id || undefined,
        transaction_amount: { value: Math.abs(integerField(record, 'amount', lineNo)), currency },
        settlement_amount: {
          value: Math.abs(integerField(record, 'settlement_amount', lineNo)),
          currency: settlementCurrency,
        },
        fee: { value: integerField(record, 'fee', lineNo), currency: settlementCurrency },
        exchange_rate: record.exchange_rate || undefined,
        settled_at: settledAt,
        store_id: record.store_id || undefined,
        wallet_psp: record.wallet_psp || undefined,
      };
    }
  } catch (error) {
    if (error instanceof SettlementFormatError) throw error;
    throw new SettlementFormatError(`unreadable settlement file: ${(error as Error).message}`, lineNo);
  }
  if (!headerSeen) throw new SettlementFormatError('empty settlement file: no header row');
}
