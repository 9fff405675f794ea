/** The sandbox wallet page an Order Code QR points at: GET shows the order, POST pays it. */
import { minorToMajor } from '../../../src/payments/money.ts';
import type { PaymentRecord } from './ledger.ts';

const LABELS: Record<string, string> = {
  PROCESSING: 'waiting for you to confirm',
  SUCCESS: 'paid',
  FAIL: 'failed',
  CANCELLED: 'cancelled by the merchant',
};

export function walletPage(record: PaymentRecord): string {
  const amount = `${minorToMajor(record.amount.value, record.amount.currency)} ${record.amount.currency}`;
  const open = record.status === 'PROCESSING' && !record.scanned;
  const status = record.status === 'PROCESSING' && record.scanned ? 'confirming…' : LABELS[record.status];
  const detail = record.status === 'FAIL' ? ` (${escapeHtml(record.resultCode)})` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Alipay+ sandbox wallet</title></head>
<body style="font-family:system-ui,sans-serif;max-width:24rem;margin:2rem auto">
<h1>Alipay+ sandbox wallet</h1>
<p>Merchant <strong>${escapeHtml(record.referenceMerchantId ?? 'merchant')}</strong>,
store ${escapeHtml(record.referenceStoreId ?? '')}</p>
<p>Amount <strong>${escapeHtml(amount)}</strong></p>
<p>Status: <strong id="status" data-status="${record.status}">${escapeHtml(status ?? record.status)}${detail}</strong></p>
${open ? '<form method="post"><button type="submit">Pay now</button></form>' : ''}
</body></html>`;
}

function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
