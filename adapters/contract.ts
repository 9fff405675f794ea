/**
 * The contract every wallet provider adapter implements.
 *
 * An adapter is a pure translator plus I/O: it turns our payment into the provider's request,
 * signs and sends it, verifies and classifies the answer. It never touches storage; the core
 * (src/payments) owns state and decides what happens next from the outcomes returned here.
 *
 * Classification rule shared by all providers (PROVIDERS.md, rule 2): only a verified, explicit
 * success is `succeeded`, only an explicit final failure is `failed`; everything else is
 * `pending` (the provider has the order and has not decided) or `unknown` (we cannot tell).
 */
import type { Readable } from 'node:stream';
import type { Money } from '../src/payments/money.ts';

export type Wallet = 'alipay' | 'wechatpay' | 'alipayplus';
export const WALLETS: readonly Wallet[] = ['alipay', 'wechatpay', 'alipayplus'];
export type Mode = 'scan' | 'qr';

/** Our small failure vocabulary; each adapter maps the provider's codes onto it in one table. */
export type FailureCode =
  | 'insufficient_funds'
  | 'invalid_payment_code'
  | 'expired'
  | 'user_canceled'
  | 'risk_rejected'
  | 'amount_limit_exceeded'
  | 'provider_error';

export interface Failure {
  code: FailureCode;
  message: string;
  /** The provider's own code, kept for support and logs. */
  provider_code?: string;
  /**
   * The provider refused our account's set-up (keys, contract, registration), not this sale: every
   * sale on the account will fail the same way until a person fixes it, so one is told.
   */
  configuration?: true;
}

/** What a provider tells us about currency conversion; rates are decimal strings, never floats. */
export interface FxDetails {
  customer_amount?: Money;
  exchange_rate?: string;
  settlement_amount?: Money;
  settlement_rate?: string;
}

export interface PaymentFacts extends FxDetails {
  /** What the provider says the sale was for, in the sale's currency (Antom `paymentAmount`). */
  amount?: Money;
  provider_reference?: string;
  /** The wallet that paid, as the provider names it (Antom `pspName`, e.g. ALIPAYCN). */
  wallet_psp?: string;
  paid_at?: Date;
}

export type PaymentOutcome =
  | ({ kind: 'succeeded' } & PaymentFacts)
  | ({ kind: 'failed'; failure: Failure } & PaymentFacts)
  | ({ kind: 'canceled' } & PaymentFacts)
  /**
   * The provider has the order and has not decided (customer confirming, QR waiting).
   * `customer_acted`: the customer has scanned the QR code and is confirming on the phone, so the
   * sale no longer waits for a scan.
   */
  | ({ kind: 'pending'; qr_code?: QrCode; reason?: string; customer_acted?: boolean } & PaymentFacts)
  /**
   * We cannot tell what happened. `reached: false` only when the request provably never left
   * (connection refused before any byte was sent): then, and only then, may the core fail over.
   */
  | {
      kind: 'unknown';
      reason: string;
      reached: boolean;
      /**
       * The provider answered, without deciding (a "try later", an answer that did not verify):
       * the request arrived, so a later "not found" is no reason to send it again.
       */
      answered?: true;
      /**
       * Inquiry only: the provider refused the query itself with a final failure, so asking again
       * will not tell us more; the core cancels now instead of polling to the end of the window.
       */
      stop_inquiring?: boolean;
    }
  /** Inquiry only: the provider says it has no such order (may mean "not visible yet"). */
  | { kind: 'not_found'; reason?: string };

export interface QrCode {
  data: string;
  expires_at: Date;
}

export type CancelOutcome =
  | { kind: 'canceled' }
  /** Accepted, but the provider's rules delay it (e.g. WeChat Pay reverse before 15 s): retry later. */
  | { kind: 'deferred'; retry_after_s: number; reason: string }
  /** The payment had already succeeded and cannot be cancelled this way (the core refunds or reports). */
  | { kind: 'already_succeeded'; facts: PaymentFacts }
  | { kind: 'unknown'; reason: string }
  /**
   * The provider has no such payment. Not a cancellation by itself: the pay may still be on its
   * way. The core ends the sale only once inquiries have shown the pay never arrived.
   */
  | { kind: 'not_found'; reason: string }
  | { kind: 'failed'; reason: string };

export type RefundOutcome =
  | {
      kind: 'succeeded';
      provider_reference?: string;
      settlement_amount?: Money;
      /** What the provider says it refunded, where its answer says. */
      amount?: Money;
    }
  | { kind: 'failed'; failure: Failure; provider_reference?: string }
  | { kind: 'pending'; provider_reference?: string }
  | { kind: 'unknown'; reason: string }
  | { kind: 'not_found' };

/** Everything an adapter needs about one of our payments. */
export interface PaymentRequest {
  payment_id: string;
  /** Provider-side request id derived from our payment id: the same on every retry and after a crash. */
  provider_request_id: string;
  amount: Money;
  mode: Mode;
  wallet: Wallet;
  payment_code?: string;
  reference: string;
  description?: string;
  store_id?: string;
  terminal_id?: string;
  merchant_id: string;
  created_at: Date;
  /** When the provider should give up on the order (Antom `paymentExpiryTime`, QR expiry). */
  expires_at: Date;
  /** Known once the provider has answered; some inquiries and cancels prefer it. */
  provider_reference?: string;
}

export interface RefundRequest {
  refund_id: string;
  provider_request_id: string;
  payment: PaymentRequest;
  amount: Money;
  reason?: string;
  created_at: Date;
  provider_reference?: string;
}

/** One provider account of one merchant, with its decrypted credentials. */
export interface AccountContext<C> {
  account_id: string;
  merchant_id: string;
  credentials: C;
  sandbox: boolean;
  /** Absolute URL the provider must call back: PUBLIC_BASE_URL + /webhooks/{provider}/{account}. */
  notify_url: string;
  /** Path part of notify_url; Antom signs over it. */
  notify_path: string;
  /** The currency the merchant is paid in (its `settlement_currency`), for providers that ask. */
  merchant_settlement_currency?: string;
  /** The merchant's name, for providers that show the customer whom they pay. */
  merchant_name?: string;
}

/** What the core lets an adapter know about the running sandbox, for `{"sandbox": true}` accounts. */
export interface SandboxEnvironment {
  /** Base URL of this provider's simulator in this process (started on demand). */
  simulatorUrl(): Promise<string>;
  /** Stable secret material (derived from the master key) so sandbox keys survive restarts. */
  seed: Buffer;
  /** Simulated latency, SANDBOX_LATENCY_MS. */
  latency_ms: number;
}

/** How the core lets an adapter reach the network. */
export interface NetworkPolicy {
  /**
   * Production: requests go to public addresses only (transport's `publicOnly`), so that no
   * merchant's provider endpoint can aim the gateway's requests at the services beside it.
   */
  publicOnly: boolean;
}

export class CredentialError extends Error {
  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = 'CredentialError';
  }
}

/** The raw inbound callback, exactly as received. */
export interface InboundRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  raw_body: Buffer;
  received_at: Date;
}

/** The answer we must give the provider, in the form it needs to stop retrying. */
export interface ProviderAck {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  /** A refusal in API.md's error shape (our own sandbox protocol): the gateway adds its request_id. */
  error?: { type: string; code: string; message: string };
}

export type NotificationEvent =
  | { kind: 'payment'; dedupe_key: string; provider_request_id: string; outcome: PaymentOutcome }
  | { kind: 'refund'; dedupe_key: string; provider_request_id: string; outcome: RefundOutcome }
  /** Verified, but nothing for us to apply (probe, unsupported type). */
  | { kind: 'ignored'; dedupe_key: string; reason: string };

export type NotificationResult =
  | { ok: true; event: NotificationEvent; ack: ProviderAck }
  | { ok: false; reason: string; ack: ProviderAck };

/** One line of a provider settlement file, in our terms. Amounts are integer minor units. */
export interface SettlementLine {
  line_no: number;
  batch_id: string;
  type: 'payment' | 'refund' | 'cancel';
  /** The provider's own transaction id (payment id, or refund id for refunds). */
  provider_reference: string;
  /** For refunds: the provider's id of the original payment. */
  original_provider_reference?: string;
  /** Our provider_request_id as we sent it, when the file carries it. */
  provider_request_id?: string;
  transaction_amount: Money;
  settlement_amount: Money;
  /** Unsigned, like the amounts: what the provider charged, or on a cancel what it gives back. */
  fee: Money;
  exchange_rate?: string;
  settled_at: Date;
  transacted_at?: Date;
  store_id?: string;
  wallet_psp?: string;
}

/** A settlement file's record (a line, or a quoted cell's lines) longer than this is refused, not buffered. */
export const MAX_SETTLEMENT_RECORD_CHARS = 1 << 16;

export class SettlementFormatError extends Error {
  constructor(
    message: string,
    readonly line_no?: number,
  ) {
    super(message);
    this.name = 'SettlementFormatError';
  }
}

/**
 * A payment line's amount written negative: the line type gives the direction, and only what runs
 * against a payment (a refund, a cancel) may be written signed. Taking it as positive would settle
 * a sale the file says the opposite of.
 */
export function negativePaymentAmount(lineNo: number, column: string, value: string): SettlementFormatError {
  return new SettlementFormatError(
    `line ${lineNo}: ${column} "${value}" is negative on a payment line; only refunds and cancels may be written signed`,
    lineNo,
  );
}

/**
 * Whether text starts with a date `YYYY-MM-DD` that is on the calendar: Date would take
 * 2026-02-30 as 2 March, and a file or a query saying so is wrong, not early.
 */
export function isCalendarDate(text: string): boolean {
  const day = text.slice(0, 10);
  // There is no year 0 (PostgreSQL refuses it too).
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day) || day.startsWith('0000')) return false;
  const time = Date.parse(`${day}T00:00:00Z`);
  return !Number.isNaN(time) && new Date(time).toISOString().startsWith(day);
}

export interface ResolutionPolicy {
  /** Delays between inquiries, in seconds; the last one repeats until the window ends. */
  poll_schedule_s: readonly number[];
  /** Window bounds for a `processing` payment, in seconds (PAYMENT_RESOLUTION_WINDOW_S is clamped to them). */
  window_s: { min: number; default: number; max: number };
  /** How long a shown QR code stays payable. */
  qr_window_s: number;
  /** Delays between cancel attempts before a human is alerted. */
  cancel_schedule_s: readonly number[];
  /** Alipay/WeChat rule: after an unanswered send, two `not_found` inquiries this far apart allow one identical resend. */
  resend_after_not_found_s?: number;
  /**
   * Creating a QR code is sent again at once, identical, this many times while its answer is
   * unknown or brings no code (Antom: "Order Code creation | U or I/O error | retry up to 3 times").
   * Nothing is charged by creating a code, and the till is waiting for one.
   */
  qr_create_retries?: number;
  /** How long after a payment it should appear in a settlement file (missing_in_settlement after this). */
  settlement_delay_days: number;
}

export interface WalletAdapter<C = unknown> {
  readonly provider: string;
  readonly wallets: readonly Wallet[];
  readonly modes: readonly Mode[];
  readonly resolution: ResolutionPolicy;

  /**
   * Validate and normalise credentials from `PUT /v1/providers/{provider}` (throw CredentialError → 400),
   * or build them for `{"sandbox": true}`. Returns the JSON-serialisable credentials that are stored
   * (encrypted) and later handed to `load`, and the non-secret view shown to the merchant.
   * `accountId` is the provider account they are for: a sandbox identity derived from it stays the
   * same when the same account is configured again (payments in flight keep their notifications).
   */
  configure(
    input: Record<string, unknown>,
    sandbox: SandboxEnvironment,
    accountId: string,
  ): Promise<{ credentials: unknown; public_view: Record<string, unknown> }>;

  /**
   * Re-hydrate stored credentials (e.g. parse keys into KeyObjects). Called once per account and
   * cached. `sandbox` is given for every account; sandbox accounts resolve their simulator from it.
   * Every request to the provider goes through transport.ts with `network.publicOnly`.
   */
  load(stored: unknown, sandbox: SandboxEnvironment, network: NetworkPolicy): C;

  pay(account: AccountContext<C>, payment: PaymentRequest): Promise<PaymentOutcome>;
  inquire(account: AccountContext<C>, payment: PaymentRequest): Promise<PaymentOutcome>;
  cancel(account: AccountContext<C>, payment: PaymentRequest): Promise<CancelOutcome>;
  refund(account: AccountContext<C>, refund: RefundRequest): Promise<RefundOutcome>;
  inquireRefund(account: AccountContext<C>, refund: RefundRequest): Promise<RefundOutcome>;

  /** Verify (over the raw bytes) and parse a provider callback. Never throws for bad input. */
  handleNotification(account: AccountContext<C>, request: InboundRequest): Promise<NotificationResult>;

  /**
   * A callback refused in the provider's own form where the adapter never saw it: an unknown
   * account, a body that could not be read, or our own failure (status 5xx: the provider should
   * send it again).
   */
  notificationRefusal(status: number, message: string): ProviderAck;

  /**
   * Stream-parse the provider's settlement file: its lines in file order, in chunks as they are read
   * (a million lines one `await` each would cost a second). Throws SettlementFormatError with a
   * clear message. What the file holds that is not wrong but is not read either (a column we do
   * not know) goes to `warn`, shown on the import's job.
   */
  parseSettlement(file: Readable, warn?: (message: string) => void): AsyncIterable<SettlementLine[]>;

  /** Fetch settlement data for a date where the provider offers an API (simulators serve it). */
  fetchSettlement?(account: AccountContext<C>, date: string): Promise<Readable | null>;

  /** Whether fetchSettlement serves this account (left out: it serves every account). */
  fetchesSettlementOf?(account: AccountContext<C>): boolean;
}

/** Provider-side ids must survive retries and crashes: derive them from ours. */
export function providerRequestIdFor(ourId: string): string {
  return ourId;
}

/** A provider's local simulator, started by tests and by the sandbox. */
export interface SimulatorHandle {
  url: string;
  close(): Promise<void>;
}

export interface SimulatorOptions {
  /** Same seed the SandboxEnvironment gives the adapter: sandbox keys are derived from it. */
  seed: Buffer;
  latency_ms: number;
  /** Multiplies every scheduled delay (notification retries, "succeeds after 3 s"); tests use < 1. */
  time_scale: number;
  port?: number;
}

/** What one provider folder exports; registering it is one line in adapters/index.ts. */
export interface ProviderModule {
  // biome-ignore lint/suspicious/noExplicitAny: the registry holds adapters of every credential type.
  adapter: WalletAdapter<any>;
  startSimulator?(options: SimulatorOptions): Promise<SimulatorHandle>;
}

/** Groups a line-at-a-time parser's lines into the chunks parseSettlement yields. */
export async function* inChunks(
  lines: AsyncIterable<SettlementLine>,
  size = 1000,
): AsyncIterable<SettlementLine[]> {
  let chunk: SettlementLine[] = [];
  try {
    for await (const line of lines) {
      chunk.push(line);
      if (chunk.length >= size) {
        yield chunk;
        chunk = [];
      }
    }
  } catch (error) {
    // The lines before the one that failed go first: a fault the caller finds in them is reported
    // before a later line's.
    if (chunk.length) yield chunk;
    throw error;
  }
  if (chunk.length) yield chunk;
}
