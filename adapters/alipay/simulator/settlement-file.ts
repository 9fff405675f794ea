/**
 * Settlement details CSV from the simulator's own ledger (alipay.md §12, §15.9): a header row,
 * one row per settled transaction, and `<END>`. Column names follow PROVIDERS.md's decisions.
 * Faults for the reconciliation work: a missing row, an amount mismatch, a duplicate row, an
 * unknown extra column (and a truncated file without `<END>`).
 */
import { createHash } from 'node:crypto';
import { convert } from '../../demo-fx.ts';
import { isoTime } from '../signature.ts';
import { fxOf, type Ledger } from './ledger.ts';

export const SETTLEMENT_FAULTS = [
  'missing_row',
  'amount_mismatch',
  'duplicate_row',
  'extra_column',
  'truncated',
] as const;
export type SettlementFault = (typeof SETTLEMENT_FAULTS)[number];

const COLUMNS = [
  'settlementBatchId',
  'customerId',
  'transactionId',
  'originalTransactionId',
  'transactionRequestId',
  'referenceMerchantId',
  'referenceStoreId',
  'paymentMethodType',
  'pspName',
  'transactionType',
  'paymentTime',
  'settlementTime',
  'productCode',
  'transactionAmountValue',
  'transactionCurrency',
  'settlementAmountValue',
  'settlementCurrency',
  'quoteCurrencyPair',
  'quotePrice',
  'feeAmountValue',
  'feeCurrency',
] as const;

type Row = Record<(typeof COLUMNS)[number], string>;

/** 1.8 % MDR, rounded half up (a demo rate; real fees come from the merchant's contract). */
function feeOf(value: number): number {
  return Math.floor((value * 18 + 500) / 1000);
}

export interface SettlementFileOptions {
  date: string;
  clientId?: string;
  faults: ReadonlySet<SettlementFault>;
}

export function settlementFile(
  ledger: Ledger,
  options: SettlementFileOptions,
): { name: string; csv: string } {
  const rows: Row[] = [];
  const onDate = (date: Date | undefined) =>
    date !== undefined && date.toISOString().slice(0, 10) === options.date;
  const batchFor = (currency: string) =>
    `${options.date.replace(/-/g, '')}${createHash('sha256')
      .update(`${options.clientId ?? '*'}:${currency}`)
      .digest('hex')
      .slice(0, 8)
      .toUpperCase()}`;
  const settlementTime = `${options.date}T23:59:59+00:00`;

  for (const payment of ledger.payments.values()) {
    if (payment.tombstone || (options.clientId && payment.clientId !== options.clientId)) continue;
    if (!payment.paidAt) continue;
    const fx = fxOf(payment);
    const line = (type: 'PAYMENT' | 'CANCEL', id: string, original: string, requestId: string): Row => ({
      settlementBatchId: batchFor(payment.settlementCurrency),
      customerId: payment.referenceMerchantId ?? '',
      transactionId: id,
      originalTransactionId: original,
      transactionRequestId: requestId,
      referenceMerchantId: payment.referenceMerchantId ?? '',
      referenceStoreId: payment.referenceStoreId ?? '',
      paymentMethodType: 'CONNECT_WALLET',
      pspName: fx.psp,
      transactionType: type,
      paymentTime: isoTime(payment.paidAt ?? payment.createdAt),
      settlementTime,
      productCode: 'IN_STORE_PAYMENT',
      transactionAmountValue: String(payment.amount.value),
      transactionCurrency: payment.amount.currency,
      settlementAmountValue: String(fx.settlement.value),
      settlementCurrency: fx.settlement.currency,
      quoteCurrencyPair: `${payment.amount.currency}/${fx.settlement.currency}`,
      quotePrice: fx.settlementRate,
      feeAmountValue: String(feeOf(fx.settlement.value)),
      feeCurrency: fx.settlement.currency,
    });
    if (onDate(payment.paidAt)) rows.push(line('PAYMENT', payment.paymentId, '', payment.paymentRequestId));
    if (payment.status === 'CANCELLED' && onDate(payment.cancelledAt)) {
      rows.push(line('CANCEL', `${payment.paymentId}C`, payment.paymentId, payment.paymentRequestId));
    }
    for (const refund of payment.refunds) {
      if (refund.status !== 'SUCCESS' || !onDate(refund.refundedAt)) continue;
      const settlement = convert(refund.amount, payment.settlementCurrency, fx.settlementRate);
      rows.push({
        ...line('PAYMENT', refund.refundId, payment.paymentId, refund.refundRequestId),
        transactionType: 'REFUND',
        transactionAmountValue: String(refund.amount.value),
        settlementAmountValue: String(settlement.value),
        feeAmountValue: '0',
      });
    }
  }
  return {
    name: `settlementItems_${rows[0]?.settlementCurrency ?? 'EUR'}_${rows[0]?.settlementBatchId ?? batchFor('EUR')}_000.csv`,
    csv: render(rows, options.faults),
  };
}

function render(input: Row[], faults: ReadonlySet<SettlementFault>): string {
  const rows = [...input];
  const firstPayment = rows.findIndex((row) => row.transactionType === 'PAYMENT');
  if (faults.has('amount_mismatch') && firstPayment >= 0) {
    const row = rows[firstPayment];
    rows[firstPayment] = { ...row, transactionAmountValue: String(Number(row.transactionAmountValue) + 1) };
  }
  // The missing row is the last payment, so that with two or more payments every fault shows.
  const lastPayment = rows.map((row) => row.transactionType).lastIndexOf('PAYMENT');
  if (faults.has('missing_row') && lastPayment >= 0) rows.splice(lastPayment, 1);
  if (faults.has('duplicate_row') && firstPayment >= 0)
    rows.splice(firstPayment + 1, 0, { ...rows[firstPayment] });
  const extra = faults.has('extra_column');
  const header = [...COLUMNS, ...(extra ? ['riskLevel'] : [])];
  const lines = [header.join(',')];
  for (const row of rows) {
    lines.push([...COLUMNS.map((column) => csvCell(row[column])), ...(extra ? ['LOW'] : [])].join(','));
  }
  if (!faults.has('truncated')) lines.push('<END>');
  return `${lines.join('\n')}\n`;
}

function csvCell(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}
