/**
 * Request schemas: the same zod objects validate requests and generate /openapi.json.
 * Objects are strict: unknown fields are rejected (DESIGN.md principle 4).
 */
import { z } from 'zod';
import { isCalendarDate, WALLETS } from '../../adapters/contract.ts';
import { COUNTRY_CODES, isCountry } from '../countries.ts';
import { PAYMENT_STATUSES } from '../ledger/payments.ts';
import { CURRENCY_CODES, isCurrency } from '../payments/money.ts';

const printable = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point.
    .regex(/^[^\u0000-\u001f\u007f]*$/, 'must not contain control characters')
    .refine((text) => text.trim() !== '', 'must not be blank')
    // Both rules in the one pattern JSON Schema allows (its \S is what trim() removes).
    .meta({ pattern: '^(?=[\\s\\S]*\\S)[^\\u0000-\\u001f\\u007f]*$' });

export const currency = z
  .string()
  .regex(/^[A-Z]{3}$/, 'must be a three-letter ISO 4217 code in upper case')
  .refine(isCurrency, 'is not an ISO 4217 currency')
  .meta({ enum: [...CURRENCY_CODES] });

export const moneySchema = z.strictObject({
  value: z
    .number({ error: 'must be an integer count of minor units' })
    .int('must be an integer count of minor units')
    .positive('must be greater than zero')
    .max(Number.MAX_SAFE_INTEGER),
  currency,
});

export const walletSchema = z.enum(WALLETS as unknown as ['alipay', 'wechatpay', 'alipayplus']);

export const createPaymentSchema = z
  .strictObject({
    amount: moneySchema,
    reference: printable(64),
    mode: z.enum(['scan', 'qr']),
    payment_code: z
      .string()
      .regex(/^\d{10,32}$/, 'must be 10 to 32 digits as scanned')
      .optional(),
    wallet: walletSchema.optional(),
    store_id: printable(64).optional(),
    terminal_id: printable(64).optional(),
    description: printable(256).optional(),
    metadata: z
      .record(z.string().min(1).max(40), z.string().max(500))
      .refine((m) => Object.keys(m).length <= 20, 'must have at most 20 keys')
      .optional(),
  })
  .superRefine((body, issue) => {
    if (body.mode === 'scan' && !body.payment_code) {
      issue.addIssue({ code: 'custom', path: ['payment_code'], message: 'is required with mode "scan"' });
    }
    if (body.mode === 'qr' && body.payment_code) {
      issue.addIssue({ code: 'custom', path: ['payment_code'], message: 'is only allowed with mode "scan"' });
    }
    if (body.mode === 'qr' && !body.wallet) {
      issue.addIssue({ code: 'custom', path: ['wallet'], message: 'is required with mode "qr"' });
    }
  });

export const createRefundSchema = z.strictObject({
  amount: moneySchema.optional(),
  reason: printable(256).optional(),
});

export const createMerchantSchema = z.strictObject({
  name: printable(128),
  settlement_currency: currency,
  country: z
    .string()
    .refine(isCountry, 'must be an ISO 3166-1 alpha-2 code, such as DE')
    .meta({ enum: [...COUNTRY_CODES] }),
});

export const createTerminalSchema = z.strictObject({
  store_id: printable(64),
  terminal_id: printable(64),
  can_refund: z.boolean().optional(),
});

export const providerAccountCommon = z.object({
  sandbox: z.boolean().optional(),
  wallets: z
    .array(walletSchema)
    .min(1)
    .max(3)
    .refine((list) => new Set(list).size === list.length, 'each wallet once')
    .optional(),
  priority: z.number().int().min(-1000).max(1000).optional(),
  currencies: z
    .array(currency)
    .min(1)
    .max(50)
    .refine((list) => new Set(list).size === list.length, 'each currency once')
    .optional(),
});

export const WEBHOOK_EVENTS = [
  'payment.succeeded',
  'payment.failed',
  'payment.canceled',
  'refund.succeeded',
  'refund.failed',
  'settlement.reconciled',
  'reconciliation.discrepancy',
] as const;

export const createWebhookEndpointSchema = z.strictObject({
  url: z
    .string()
    .max(2048)
    .refine((u) => {
      // Written out in full (`http:x` parses, with host x), with nothing the parser would mend
      // quietly (spaces), no control characters, and without credentials, which every listing would show.
      if (!/^https?:\/\/[^\s/?#]+[^\s]*$/i.test(u) || /\p{Cc}/u.test(u)) return false;
      try {
        const url = new URL(u);
        return url.hostname !== '' && url.username === '' && url.password === '';
      } catch {
        return false;
      }
    }, 'must be an absolute http(s) URL, without spaces, control characters or credentials')
    .meta({
      format: 'uri',
      pattern:
        '^(?![\\s\\S]*[\\u0000-\\u001f\\u007f-\\u009f])[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:][^\\s/?#@]*(?:[/?#]\\S*)?$',
    }),
  /** Left out: every event, as most gateways subscribe a new endpoint by default. */
  events: z.array(z.enum(WEBHOOK_EVENTS)).min(1).optional(),
});

const rfc3339 = z.string().refine(
  // The zone is required: without one the moment would depend on the server's time zone.
  (s) =>
    /^\d{4}-\d{2}-\d{2}[Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/.test(s) &&
    isCalendarDate(s) &&
    !Number.isNaN(Date.parse(s)),
  'must be an RFC 3339 timestamp with a time zone (e.g. 2026-11-26T10:00:00Z)',
);

/**
 * A count written as plain decimal digits (Number() alone would also take '', ' 2', '0x2' and
 * '1e0'); documented as the integer it is.
 */
const wholeNumber = (min: number, max: number, what: string) => {
  const message = `must be ${what} from ${min} to ${max}`;
  return z
    .string()
    .regex(/^\d{1,9}$/, message)
    .transform(Number)
    .pipe(z.number().min(min, message).max(max, message))
    .meta({ type: 'integer', minimum: min, maximum: max });
};

/** API.md: a list gives this many items unless `limit` says otherwise. */
export const DEFAULT_LIST_LIMIT = 20;

export const listQuerySchema = z.strictObject({
  limit: wholeNumber(1, 100, 'a whole number').optional(),
  starting_after: z.string().min(1).max(64).optional(),
});

export const listPaymentsQuerySchema = listQuerySchema.extend({
  status: z.enum(PAYMENT_STATUSES).optional(),
  store_id: printable(64).optional(),
  terminal_id: printable(64).optional(),
  created_gte: rfc3339.optional(),
  created_lt: rfc3339.optional(),
});

export const getPaymentQuerySchema = z.strictObject({
  wait: wholeNumber(0, 60, 'whole seconds').optional(),
});

export const idempotencyKeySchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[\x20-\x7e]+$/, 'must be 1 to 255 printable ASCII characters');
