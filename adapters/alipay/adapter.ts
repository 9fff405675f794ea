/**
 * The Alipay adapter: Antom AMS in-store payments (alipay.md). A translator plus I/O — it builds
 * Antom requests from ours, sends them through the one `send` path, and classifies the answers
 * through the one table in mapping.ts. The core owns state, polling, the one permitted resend and
 * the cancel at the end of the window.
 */
import { Readable } from 'node:stream';
import {
  type AccountContext,
  inChunks,
  type PaymentOutcome,
  type PaymentRequest,
  type RefundOutcome,
  type ResolutionPolicy,
  type WalletAdapter,
} from '../contract.ts';
import { MAX_FETCHED_FILE_BYTES, TransportError, send as transportSend } from '../transport.ts';
import { send } from './client.ts';
import { type AlipayAccount, configureCredentials, loadAccount } from './credentials.ts';
import {
  cancelOutcome,
  inquiryOutcome,
  payBody,
  paymentLookupBody,
  payOutcome,
  refundBody,
  refundInquiryOutcome,
  refundLookupBody,
  refundOutcome,
} from './mapping.ts';
import { handleAlipayNotification, rejection } from './notification.ts';
import { type OtherType, parseSettlementFile } from './settlement.ts';

/** What a job says of lines it passed over: a merchant can account for every line and amount. */
function otherTypeWarning(t: OtherType): string {
  const settled = t.settled
    ? [...t.settled].map(([currency, value]) => `${value} minor units of ${currency}`).join(', ')
    : 'amounts not all readable';
  return `${t.lines} line${t.lines > 1 ? 's' : ''} of transactionType ${t.type} (the first on line ${t.first_line}; settled: ${settled || 'none'}) passed over: not a payment, refund or cancel, so not reconciled and not in the batch totals`;
}

/**
 * alipay.md §9: Alipay's reference client inquires after 2, 3, 3, 5, 5… s and cancels after
 * 2, 3, 3, 5, 5 s; two ORDER_NOT_EXIST ≥ 2 s apart after an unanswered pay allow one identical
 * resend. The window is capped by the paymentExpiryTime we send (UPM: 10 min at most); Order Code
 * QRs live 3 minutes by Antom's docs.
 */
export const ALIPAY_RESOLUTION: ResolutionPolicy = {
  poll_schedule_s: [2, 3, 3, 5, 5],
  window_s: { min: 10, default: 60, max: 600 },
  qr_window_s: 180,
  cancel_schedule_s: [2, 3, 3, 5, 5],
  resend_after_not_found_s: 2,
  qr_create_retries: 3,
  settlement_delay_days: 2,
};

type Account = AccountContext<AlipayAccount>;

export const alipayAdapter: WalletAdapter<AlipayAccount> = {
  provider: 'alipay',
  wallets: ['alipay', 'alipayplus'],
  modes: ['scan', 'qr'],
  resolution: ALIPAY_RESOLUTION,

  configure: (input, sandbox, accountId) => configureCredentials(input, sandbox, accountId),

  load: (stored, sandbox, network) => loadAccount(stored, sandbox, network),

  async pay(account, payment) {
    const sent = await send(
      account.credentials,
      'pay',
      payBody(account.credentials.stored, payment, account.notify_url, {
        settlement_currency: account.merchant_settlement_currency,
        name: account.merchant_name,
      }),
    );
    if (!sent.answered)
      return {
        kind: 'unknown',
        reason: sent.reason,
        reached: sent.reached,
        ...(sent.responded ? { answered: true as const } : {}),
      };
    return payOutcome(payment, sent.result, sent.body);
  },

  async inquire(account, payment) {
    const sent = await send(account.credentials, 'inquiryPayment', paymentLookupBody(payment));
    if (!sent.answered) return { kind: 'unknown', reason: sent.reason, reached: sent.reached };
    return inquiryOutcome(sent.result, sent.body);
  },

  async cancel(account, payment) {
    const sent = await send(account.credentials, 'cancel', paymentLookupBody(payment));
    if (!sent.answered) return { kind: 'unknown', reason: sent.reason };
    return cancelOutcome(sent.result);
  },

  async refund(account, refund) {
    // Antom refunds by paymentId; when the core never learnt it (the pay answer was lost), ask.
    const paymentId = refund.payment.provider_reference ?? (await paymentIdOf(account, refund.payment));
    if (!paymentId) return { kind: 'unknown', reason: 'the payment has no Antom paymentId yet' };
    const sent = await send(account.credentials, 'refund', refundBody(refund, paymentId));
    if (!sent.answered) return { kind: 'unknown', reason: sent.reason };
    return refundOutcome(sent.result, sent.body);
  },

  async inquireRefund(account, refund): Promise<RefundOutcome> {
    const sent = await send(account.credentials, 'inquiryRefund', refundLookupBody(refund));
    if (!sent.answered) return { kind: 'unknown', reason: sent.reason };
    return refundInquiryOutcome(sent.result, sent.body);
  },

  async handleNotification(account, request) {
    try {
      return handleAlipayNotification(account, request);
    } catch (error) {
      return {
        ok: false,
        reason: `notification could not be processed: ${(error as Error).message}`,
        ack: rejection(400, 'PARAM_ILLEGAL', 'bad notification'),
      };
    }
  },

  notificationRefusal: (status, message) =>
    rejection(status, status >= 500 ? 'SYSTEM_ERROR' : 'PARAM_ILLEGAL', message),

  parseSettlement: (file: Readable, warn) =>
    inChunks(
      parseSettlementFile(file, {
        onUnknownColumns: (names) =>
          warn?.(`columns not read (unknown to this version): ${names.join(', ')}`),
        onOtherTypes: (types) => {
          for (const t of types) warn?.(otherTypeWarning(t));
        },
      }),
    ),

  /**
   * Real Antom delivers settlement files over SFTP only (§12), which is not built: only the sandbox
   * simulator's accounts are fetched (it serves the same CSV over HTTP); the others are imported.
   */
  fetchesSettlementOf: (account) => account.credentials.stored.sandbox,

  async fetchSettlement(account, date) {
    if (!account.credentials.stored.sandbox) return null;
    const base = await account.credentials.baseUrl();
    const url = `${base}/_sim/settlements/${encodeURIComponent(date)}?client_id=${encodeURIComponent(account.credentials.stored.client_id)}`;
    try {
      const response = await transportSend({
        method: 'GET',
        url,
        timeoutMs: 30_000,
        publicOnly: account.credentials.publicOnly,
        maxResponseBytes: MAX_FETCHED_FILE_BYTES,
      });
      if (response.status === 404) return null;
      if (response.status !== 200)
        throw new Error(`simulator answered HTTP ${response.status} for settlements ${date}`);
      return Readable.from([response.body]);
    } catch (error) {
      if (error instanceof TransportError) throw new Error(`settlement fetch failed: ${error.message}`);
      throw error;
    }
  },
};

async function paymentIdOf(account: Account, payment: PaymentRequest): Promise<string | undefined> {
  const outcome: PaymentOutcome = await alipayAdapter.inquire(account, payment);
  return 'provider_reference' in outcome ? outcome.provider_reference : undefined;
}
