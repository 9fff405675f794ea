/** OpenAPI 3.1, generated from the same zod schemas that validate requests. */
import { z } from 'zod';
import { WALLETS } from '../../adapters/contract.ts';
import { PAYMENT_STATUSES } from '../ledger/payments.ts';
import { DISCREPANCY_KINDS } from '../settlements/reconcile.ts';
import {
  createMerchantSchema,
  createPaymentSchema,
  createRefundSchema,
  createTerminalSchema,
  createWebhookEndpointSchema,
  DEFAULT_LIST_LIMIT,
  getPaymentQuerySchema,
  listPaymentsQuerySchema,
  listQuerySchema,
  providerAccountCommon,
  WEBHOOK_EVENTS,
} from './schemas.ts';

type Op = {
  method: 'get' | 'post' | 'put' | 'delete';
  path: string;
  summary: string;
  body?: z.ZodType;
  /** The body may be left out (a refund of the rest). */
  bodyOptional?: boolean;
  query?: z.ZodObject;
  /** A body taken as raw bytes (not JSON): the content types it may come in. */
  rawBody?: string[];
  idempotent?: 'required' | 'optional';
  auth?: 'admin' | 'merchant' | 'merchant_or_terminal' | 'none';
  responses: Record<string, string>;
  /** The object a `list` response holds (its `data` items). */
  items?: string;
  /** Answered in a provider's own form, not the API's error shape. */
  providerForm?: boolean;
  /** The success may also come as CSV (`format=csv`). */
  csv?: boolean;
};

const OPERATIONS: Op[] = [
  { method: 'get', path: '/healthz', summary: 'Process is up', auth: 'none', responses: { 200: 'ok' } },
  {
    method: 'get',
    path: '/readyz',
    summary: 'PostgreSQL and Redis reachable',
    auth: 'none',
    responses: { 200: 'ready', 503: 'not ready' },
  },
  {
    method: 'get',
    path: '/metrics',
    summary: 'Prometheus metrics',
    auth: 'none',
    responses: { 200: 'metrics text' },
  },
  {
    method: 'get',
    path: '/openapi.json',
    summary: 'This document (OpenAPI 3.1), generated from the schemas that validate requests',
    auth: 'none',
    responses: { 200: 'OpenAPI document' },
  },
  {
    method: 'post',
    path: '/v1/admin/merchants',
    summary: 'Create a merchant',
    body: createMerchantSchema,
    auth: 'admin',
    responses: { 201: 'merchant with secret_key' },
  },
  {
    method: 'get',
    path: '/v1/admin/merchants',
    summary: 'List merchants',
    query: listQuerySchema,
    auth: 'admin',
    responses: { 200: 'list' },
    items: 'Merchant',
  },
  {
    method: 'get',
    path: '/v1/admin/alerts',
    summary: 'Unresolved alerts for an operator',
    query: listQuerySchema,
    auth: 'admin',
    responses: { 200: 'list' },
    items: 'Alert',
  },
  {
    method: 'post',
    path: '/v1/admin/alerts/{id}/resolve',
    summary: 'Mark an alert dealt with',
    auth: 'admin',
    responses: { 200: 'alert', 404: 'no such alert' },
  },
  {
    method: 'post',
    path: '/v1/admin/merchants/{id}/secret-key',
    summary: "Replace a merchant's secret key (the old one stops working)",
    auth: 'admin',
    responses: { 201: 'merchant with secret_key', 404: 'no such merchant' },
  },
  {
    method: 'put',
    path: '/v1/providers/{provider}',
    summary: 'Configure the provider account',
    body: providerAccountCommon.passthrough(),
    auth: 'merchant',
    responses: { 200: 'provider account updated', 201: 'provider account created' },
  },
  {
    method: 'get',
    path: '/v1/providers',
    summary: 'List provider accounts',
    query: listQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'ProviderAccount',
  },
  {
    method: 'get',
    path: '/v1/providers/{provider}',
    summary: 'The provider account (an addition to API.md)',
    auth: 'merchant',
    responses: { 200: 'provider account', 404: 'no account with this provider' },
  },
  {
    method: 'delete',
    path: '/v1/providers/{provider}',
    summary: 'Remove a provider account',
    auth: 'merchant',
    responses: { 200: 'provider account deleted' },
  },
  {
    method: 'post',
    path: '/v1/terminals',
    summary: 'Create a terminal and its key',
    body: createTerminalSchema,
    auth: 'merchant',
    responses: { 201: 'terminal with terminal_key' },
  },
  {
    method: 'get',
    path: '/v1/terminals',
    summary: 'List terminals',
    query: listQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'Terminal',
  },
  {
    method: 'post',
    path: '/v1/terminals/{id}/key',
    summary: "Replace a terminal's key (the old one stops working)",
    auth: 'merchant',
    responses: { 201: 'terminal with terminal_key', 404: 'no such terminal' },
  },
  {
    method: 'delete',
    path: '/v1/terminals/{id}/key',
    summary: "Revoke a terminal's key (a lost or stolen till)",
    auth: 'merchant',
    responses: { 200: 'terminal with keys_revoked', 404: 'no such terminal' },
  },
  {
    method: 'post',
    path: '/v1/webhook-endpoints',
    summary: 'Create a webhook endpoint',
    body: createWebhookEndpointSchema,
    auth: 'merchant',
    responses: { 201: 'endpoint with secret' },
  },
  {
    method: 'get',
    path: '/v1/webhook-endpoints',
    summary: 'List webhook endpoints',
    query: listQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'WebhookEndpoint',
  },
  {
    method: 'get',
    path: '/v1/webhook-endpoints/{id}',
    summary: 'A webhook endpoint (its secret is shown only at creation)',
    auth: 'merchant',
    responses: { 200: 'webhook endpoint', 404: 'no such endpoint' },
  },
  {
    method: 'delete',
    path: '/v1/webhook-endpoints/{id}',
    summary: 'Delete a webhook endpoint',
    auth: 'merchant',
    responses: { 200: 'webhook endpoint deleted' },
  },
  {
    method: 'get',
    path: '/v1/webhook-endpoints/{id}/deliveries',
    summary: 'Deliveries to an endpoint',
    query: listQuerySchema,
    auth: 'merchant',
    responses: { 200: 'list' },
    items: 'WebhookDelivery',
  },
  {
    method: 'post',
    path: '/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry',
    summary: 'Send a delivery again (an addition to API.md): at once, with a new three days of tries',
    auth: 'merchant',
    responses: { 202: 'delivery queued', 404: 'no such delivery', 409: 'a try is under way' },
  },
  {
    method: 'post',
    path: '/v1/payments',
    summary: 'Create a payment',
    body: createPaymentSchema,
    idempotent: 'required',
    auth: 'merchant_or_terminal',
    responses: { 200: 'replay', 201: 'payment' },
  },
  {
    method: 'get',
    path: '/v1/payments',
    summary: 'List payments',
    query: listPaymentsQuerySchema,
    auth: 'merchant_or_terminal',
    responses: { 200: 'list' },
    items: 'Payment',
  },
  {
    method: 'get',
    path: '/v1/payments/{id}',
    summary: 'Get a payment, optionally long-polling',
    query: getPaymentQuerySchema,
    auth: 'merchant_or_terminal',
    responses: { 200: 'payment' },
  },
  {
    method: 'post',
    path: '/v1/payments/{id}/cancel',
    summary: 'Cancel a payment',
    idempotent: 'optional',
    auth: 'merchant_or_terminal',
    responses: { 200: 'canceled', 202: 'cancel requested', 409: 'final' },
  },
  {
    method: 'post',
    path: '/v1/payments/{id}/refunds',
    summary: 'Refund a payment',
    body: createRefundSchema,
    bodyOptional: true,
    idempotent: 'required',
    auth: 'merchant_or_terminal',
    responses: { 200: 'refund replay', 201: 'refund' },
  },
  {
    method: 'get',
    path: '/v1/payments/{id}/refunds',
    summary: "List a payment's refunds (an addition to API.md)",
    query: listQuerySchema,
    auth: 'merchant_or_terminal',
    responses: { 200: 'list' },
    items: 'Refund',
  },
  {
    method: 'get',
    path: '/v1/refunds/{id}',
    summary: 'Get a refund',
    auth: 'merchant_or_terminal',
    responses: { 200: 'refund' },
  },
  {
    method: 'post',
    path: '/webhooks/{provider}/{account}',
    summary: 'Provider callbacks (raw body, provider-signed)',
    rawBody: ['application/json', 'application/octet-stream'],
    auth: 'none',
    providerForm: true,
    responses: {
      200: 'acknowledged in the provider’s form',
      400: 'malformed, refused in the provider’s form',
      401: 'signature does not verify, refused in the provider’s form',
      404: 'no such provider account, refused in the provider’s form',
    },
  },
];

const extraOperations: Op[] = [];

/** Later features add their operations here. */
export function registerOperations(ops: Op[]): void {
  extraOperations.push(...ops);
}

const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['type', 'code', 'message', 'request_id'],
      properties: {
        type: {
          type: 'string',
          enum: [
            'invalid_request',
            'authentication',
            'permission',
            'not_found',
            'conflict',
            'idempotency',
            'unprocessable',
            'rate_limited',
            'provider',
            'unavailable',
            'internal',
          ],
        },
        code: { type: 'string' },
        message: { type: 'string' },
        param: { type: 'string' },
        request_id: { type: 'string' },
      },
    },
  },
};

// The objects the API answers with (API.md), for the responses that carry them.
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const text = { type: 'string' };
const time = { type: 'string', format: 'date-time' };
const nullableText = { type: ['string', 'null'] };
const nullableTime = { type: ['string', 'null'], format: 'date-time' };

const objectSchemas: Record<string, Record<string, unknown>> = {
  Money: {
    type: 'object',
    description: 'An amount in integer minor units of an ISO 4217 currency',
    required: ['value', 'currency'],
    properties: { value: { type: 'integer' }, currency: { type: 'string', pattern: '^[A-Z]{3}$' } },
  },
  Payment: {
    type: 'object',
    required: ['id', 'status', 'amount', 'mode', 'reference', 'amount_refunded', 'created_at', 'updated_at'],
    properties: {
      id: { type: 'string', pattern: '^pay_' },
      object: text,
      status: { type: 'string', enum: [...PAYMENT_STATUSES] },
      amount: ref('Money'),
      customer_amount: ref('Money'),
      exchange_rate: text,
      wallet: { type: 'string', enum: [...WALLETS] },
      wallet_psp: text,
      provider: text,
      mode: { type: 'string', enum: ['scan', 'qr'] },
      reference: text,
      store_id: nullableText,
      terminal_id: nullableText,
      payment_code: { type: 'string', description: 'masked' },
      description: text,
      metadata: { type: ['object', 'null'], additionalProperties: text },
      qr_code: {
        type: ['object', 'null'],
        properties: { data: text, expires_at: nullableTime },
      },
      failure: { type: 'object', properties: { code: text, message: text } },
      amount_refunded: ref('Money'),
      provider_reference: text,
      cancel_requested_at: time,
      created_at: time,
      updated_at: time,
    },
  },
  Refund: {
    type: 'object',
    required: ['id', 'payment_id', 'amount', 'status', 'created_at'],
    properties: {
      id: { type: 'string', pattern: '^re_' },
      object: text,
      payment_id: text,
      amount: ref('Money'),
      status: { type: 'string', enum: ['pending', 'succeeded', 'failed'] },
      reason: text,
      provider_reference: text,
      failure: { type: 'object', properties: { code: text, message: text } },
      created_at: time,
      updated_at: time,
    },
  },
  Settlement: {
    type: 'object',
    required: ['id', 'provider', 'settlement_date', 'currency', 'gross', 'fees', 'net', 'count', 'status'],
    properties: {
      id: { type: 'string', pattern: '^stl_' },
      object: text,
      provider: text,
      provider_batch_id: text,
      settlement_date: { type: 'string', format: 'date' },
      currency: text,
      gross: { type: 'integer', description: 'minor units of currency' },
      fees: { type: 'integer', description: 'minor units of currency' },
      net: { type: 'integer', description: 'minor units of currency' },
      count: { type: 'integer' },
      status: { type: 'string', enum: ['reconciled', 'discrepancies'] },
      version: { type: 'integer' },
      import_id: text,
      created_at: time,
      updated_at: time,
    },
  },
  Discrepancy: {
    type: 'object',
    required: ['id', 'kind', 'provider', 'settlement_id', 'provider_reference', 'detail', 'created_at'],
    properties: {
      id: text,
      object: text,
      kind: {
        type: 'string',
        enum: [...DISCREPANCY_KINDS],
      },
      provider: text,
      settlement_id: text,
      payment_id: text,
      refund_id: text,
      provider_reference: text,
      expected: ref('Money'),
      actual: ref('Money'),
      detail: text,
      created_at: time,
      closed_at: time,
      closed_reason: text,
    },
  },
  Merchant: {
    type: 'object',
    required: ['id', 'name', 'settlement_currency', 'country', 'created_at'],
    properties: {
      id: { type: 'string', pattern: '^mer_' },
      object: text,
      name: text,
      settlement_currency: text,
      country: text,
      secret_key: { type: 'string', description: 'sk_…, shown once: when created or replaced' },
      created_at: time,
    },
  },
  Terminal: {
    type: 'object',
    required: ['id', 'store_id', 'terminal_id', 'can_refund', 'created_at'],
    properties: {
      id: { type: 'string', pattern: '^trm_' },
      object: text,
      store_id: text,
      terminal_id: text,
      can_refund: { type: 'boolean' },
      terminal_key: { type: 'string', description: 'tk_…, shown once: when created or replaced' },
      keys_revoked: { type: 'integer', description: 'how many keys a revocation stopped' },
      created_at: time,
    },
  },
  ProviderAccount: {
    type: 'object',
    required: ['id', 'provider', 'wallets', 'priority', 'webhook_url', 'created_at'],
    properties: {
      id: { type: 'string', pattern: '^pva_' },
      object: text,
      provider: text,
      wallets: { type: 'array', items: { type: 'string', enum: [...WALLETS] } },
      priority: { type: 'integer' },
      currencies: { type: ['array', 'null'], items: text },
      sandbox: { type: 'boolean' },
      webhook_url: text,
      settings: { type: 'object', description: 'non-secret settings, e.g. key fingerprints' },
      deleted: { type: 'boolean' },
      created_at: time,
      updated_at: time,
    },
  },
  WebhookEndpoint: {
    type: 'object',
    required: ['id', 'url', 'events', 'created_at'],
    properties: {
      id: { type: 'string', pattern: '^whe_' },
      object: text,
      url: text,
      events: { type: 'array', items: { type: 'string', enum: [...WEBHOOK_EVENTS] } },
      secret: { type: 'string', description: 'whsec_…, shown once: when created' },
      deleted: { type: 'boolean' },
      created_at: time,
    },
  },
  SettlementLine: {
    type: 'object',
    required: [
      'id',
      'settlement_id',
      'line_no',
      'type',
      'provider_reference',
      'amount',
      'settlement_amount',
      'fee',
      'net',
      'settled_at',
      'result',
    ],
    properties: {
      id: { type: 'string', pattern: '^ln_' },
      object: text,
      settlement_id: text,
      line_no: { type: 'integer' },
      type: { type: 'string', enum: ['payment', 'refund', 'cancel'] },
      provider_reference: text,
      original_provider_reference: text,
      provider_request_id: text,
      amount: ref('Money'),
      settlement_amount: ref('Money'),
      fee: { ...ref('Money'), description: 'signed as it counts: a cancel gives the fee back' },
      net: ref('Money'),
      exchange_rate: text,
      settled_at: time,
      transacted_at: time,
      store_id: text,
      wallet_psp: text,
      payment_id: nullableText,
      refund_id: nullableText,
      result: { type: 'string', enum: ['matched', 'pending', ...DISCREPANCY_KINDS] },
    },
  },
  WebhookDelivery: {
    type: 'object',
    required: ['id', 'endpoint_id', 'event_id', 'event_type', 'status', 'attempts', 'created_at'],
    properties: {
      id: text,
      object: text,
      endpoint_id: text,
      event_id: text,
      event_type: { type: 'string', enum: [...WEBHOOK_EVENTS] },
      status: text,
      attempts: { type: 'integer' },
      last_status_code: { type: ['integer', 'null'] },
      last_error: nullableText,
      next_attempt_at: {
        ...nullableTime,
        description:
          'when the next try is due while the delivery is pending; null once it succeeded or failed',
      },
      created_at: time,
      updated_at: time,
    },
  },
  Alert: {
    type: 'object',
    required: ['id', 'kind', 'detail', 'created_at'],
    properties: {
      id: text,
      object: text,
      kind: text,
      payment_id: nullableText,
      refund_id: nullableText,
      detail: text,
      created_at: time,
      resolved_at: nullableTime,
    },
  },
  Job: {
    type: 'object',
    required: ['id', 'status'],
    properties: {
      id: { type: 'string', pattern: '^job_' },
      object: text,
      type: { type: 'string', enum: ['reconcile'] },
      status: { type: 'string', enum: ['queued', 'running', 'completed', 'failed'] },
      provider: text,
      source: { type: 'string', enum: ['upload', 'fetch'] },
      settlement_date: { type: 'string', format: 'date', description: 'the day a fetch asked for' },
      file: {
        type: 'object',
        properties: { bytes: { type: ['integer', 'null'] }, sha256: nullableText },
      },
      counts: { type: 'object' },
      error: {
        type: 'object',
        required: ['code', 'message'],
        properties: { code: text, message: text, line: { type: 'integer' } },
      },
      attempts: { type: 'integer' },
      created_at: time,
      started_at: nullableTime,
      finished_at: nullableTime,
      warnings: {
        type: 'array',
        items: { type: 'string' },
        description: 'what the file holds that was not read, such as columns unknown to this version',
      },
    },
  },
  List: {
    type: 'object',
    required: ['data', 'has_more'],
    properties: {
      object: { type: 'string', const: 'list' },
      data: { type: 'array', items: { type: 'object' } },
      has_more: { type: 'boolean' },
    },
  },
  SettlementWithVersions: {
    allOf: [
      ref('Settlement'),
      {
        properties: {
          versions: {
            type: 'array',
            description: 'each content the batch has had, oldest first',
            items: {
              type: 'object',
              properties: {
                version: { type: 'integer' },
                import_id: text,
                content_hash: text,
                count: { type: 'integer' },
                discrepancies: { type: 'integer' },
                gross: { type: 'integer' },
                fees: { type: 'integer' },
                net: { type: 'integer' },
                created_at: time,
                superseded_at: nullableTime,
                superseded_by: nullableText,
              },
            },
          },
        },
      },
    ],
  },
  SettlementReport: {
    type: 'object',
    required: ['from', 'to', 'group_by', 'groups', 'totals'],
    properties: {
      object: { type: 'string', const: 'settlement_report' },
      from: { type: 'string', format: 'date' },
      to: { type: 'string', format: 'date' },
      group_by: { type: 'string', enum: ['day', 'store', 'wallet'] },
      provider: text,
      groups: { type: 'array', items: { allOf: [{ properties: { key: text } }, ref('ReportFigures')] } },
      totals: { type: 'array', items: ref('ReportFigures'), description: 'one per currency' },
    },
  },
  ReportFigures: {
    type: 'object',
    required: ['currency', 'count', 'gross', 'fees', 'net', 'discrepancies'],
    properties: {
      currency: text,
      count: { type: 'integer' },
      gross: ref('Money'),
      fees: ref('Money'),
      net: ref('Money'),
      discrepancies: { type: 'integer' },
    },
  },
  Health: { type: 'object', required: ['status'], properties: { status: { type: 'string', const: 'ok' } } },
  Readiness: {
    type: 'object',
    required: ['status', 'postgres', 'redis'],
    properties: {
      status: { type: 'string', enum: ['ready', 'unavailable'] },
      postgres: { type: 'boolean' },
      redis: { type: 'boolean' },
    },
  },
  Event: {
    type: 'object',
    required: ['id', 'type', 'created_at', 'data'],
    properties: {
      id: { type: 'string', pattern: '^evt_' },
      type: {
        type: 'string',
        enum: [...WEBHOOK_EVENTS],
      },
      created_at: time,
      data: { type: 'object', required: ['object'], properties: { object: { type: 'object' } } },
    },
  },
};

/** Which object a response of each description carries. */
const RESPONSE_OBJECTS: Record<string, string> = {
  payment: 'Payment',
  replay: 'Payment',
  canceled: 'Payment',
  'cancel requested': 'Payment',
  refund: 'Refund',
  'refund replay': 'Refund',
  settlement: 'Settlement',
  'settlement with versions': 'SettlementWithVersions',
  report: 'SettlementReport',
  job: 'Job',
  'job queued': 'Job',
  list: 'List',
  'merchant with secret_key': 'Merchant',
  'terminal with terminal_key': 'Terminal',
  'terminal with keys_revoked': 'Terminal',
  'provider account updated': 'ProviderAccount',
  'provider account created': 'ProviderAccount',
  'provider account deleted': 'ProviderAccount',
  'endpoint with secret': 'WebhookEndpoint',
  'provider account': 'ProviderAccount',
  ok: 'Health',
  ready: 'Readiness',
  'not ready': 'Readiness',
  'webhook endpoint': 'WebhookEndpoint',
  'delivery queued': 'WebhookDelivery',
  'webhook endpoint deleted': 'WebhookEndpoint',
  alert: 'Alert',
};

/** Outbound merchant webhooks (API.md), as OpenAPI 3.1 `webhooks`. */
const merchantWebhooks = {
  event: {
    post: {
      operationId: 'merchantWebhookEvent',
      summary: 'An event POSTed to a merchant webhook endpoint, at least once',
      parameters: [
        {
          name: 'Tillbridge-Signature',
          in: 'header',
          required: true,
          description: 't=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" with the endpoint secret>',
          schema: text,
        },
      ],
      requestBody: { required: true, content: { 'application/json': { schema: ref('Event') } } },
      responses: { '2XX': { description: 'received; anything else is retried with back-off' } },
    },
  },
};

function jsonSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, {
    io: 'input',
    unrepresentable: 'any',
  }) as Record<string, unknown>;
  return rest;
}

let routePatterns: { method: string; pattern: RegExp; route: string }[] | undefined;

/**
 * The route a request was for, as Express writes it (`/v1/payments/:id`), when it was answered
 * before routing (401, 403, 429): a bounded metrics label, never the raw path with its ids.
 */
export function documentedRoute(method: string, path: string): string | undefined {
  routePatterns ??= [...OPERATIONS, ...extraOperations].map((op) => ({
    method: op.method.toUpperCase(),
    pattern: new RegExp(`^${op.path.replace(/[.]/g, '\\.').replace(/\{\w+\}/g, '[^/]+')}/?$`, 'i'),
    route: op.path.replace(/\{(\w+)\}/g, ':$1'),
  }));
  return routePatterns.find(
    (r) => (r.method === method || (method === 'HEAD' && r.method === 'GET')) && r.pattern.test(path),
  )?.route;
}

/** `GET /v1/payments/{id}/refunds` → `getV1PaymentsIdRefunds`: unique, as method and path are. */
function operationId(op: Op): string {
  const words = op.path.split(/[^A-Za-z0-9]+/).filter(Boolean);
  return op.method + words.map((w) => w[0].toUpperCase() + w.slice(1)).join('');
}

const SECURITY: Record<NonNullable<Op['auth']>, unknown[]> = {
  admin: [{ adminKey: [] }],
  merchant: [{ secretKey: [] }],
  merchant_or_terminal: [{ secretKey: [] }, { terminalKey: [] }],
  none: [],
};

const header = (description: string, schema: unknown = text) => ({ description, schema });
const REQUEST_ID = { 'Request-Id': header('The id of this request, also in any error body') };
const RETRY_AFTER = {
  ...REQUEST_ID,
  'Retry-After': header('Seconds to wait before retrying', { type: 'integer' }),
};
const REPLAYED = {
  ...REQUEST_ID,
  'Idempotent-Replayed': header('`true`: the answer of an earlier request with this Idempotency-Key', {
    const: 'true',
  }),
};

/** The errors any API operation may answer, beside its own (API.md "Conventions"). */
const COMMON_ERRORS: Record<string, string> = {
  400: 'invalid_request: a bad parameter, named in `param`',
  401: 'authentication: no key, or an unknown or revoked one',
  403: 'permission: a key of another kind',
  404: 'not_found: no such object for this key',
  429: 'rate_limited: too many requests for this key',
  503: 'unavailable: storage or queues unreachable; retry',
};
const IDEMPOTENCY_ERRORS: Record<string, string> = {
  409: 'idempotency: a request with this key is still running, or the object is in another state',
  422: 'idempotency or unprocessable: the key was used for another request, or the request cannot be done',
};

function errorResponse(description: string, code: string) {
  return {
    description,
    headers: code === '429' || code === '503' ? RETRY_AFTER : REQUEST_ID,
    content: { 'application/json': { schema: ref('Error') } },
  };
}

function successResponse(op: Op, description: string) {
  const object = RESPONSE_OBJECTS[description];
  // Any answer to a request with an Idempotency-Key may be a replay.
  const headers = op.idempotent || description.endsWith('replay') ? REPLAYED : REQUEST_ID;
  if (!object) return { description, headers };
  const schema =
    object === 'List' && op.items
      ? { allOf: [ref('List'), { properties: { data: { items: ref(op.items) } } }] }
      : ref(object);
  const csv = op.csv ? { 'text/csv': { schema: { type: 'string', contentMediaType: 'text/csv' } } } : {};
  return { description, headers, content: { 'application/json': { schema }, ...csv } };
}

/** What the zod schemas check beyond what their JSON Schema can say (refinements, the config). */
function requestRules(op: Op, schema: Record<string, unknown>, maxAmount: number): Record<string, unknown> {
  const props = (schema.properties ?? {}) as Record<string, Record<string, unknown>>;
  const amountValue = (props.amount?.properties as Record<string, Record<string, unknown>> | undefined)
    ?.value;
  if (amountValue) amountValue.maximum = maxAmount;
  if (props.metadata) props.metadata.maxProperties = 20;
  if (props.wallets) props.wallets.uniqueItems = true;
  if (op.path === '/v1/payments' && op.method === 'post')
    schema.allOf = [
      {
        if: { properties: { mode: { const: 'scan' } }, required: ['mode'] },
        // biome-ignore lint/suspicious/noThenProperty: JSON Schema's `then`, never awaited
        then: { required: ['payment_code'] },
      },
      {
        if: { properties: { mode: { const: 'qr' } }, required: ['mode'] },
        // biome-ignore lint/suspicious/noThenProperty: JSON Schema's `then`, never awaited
        then: { required: ['wallet'], not: { required: ['payment_code'] } },
      },
    ];
  return schema;
}

export function openApiDocument(
  options: { baseUrl?: string; maxAmountMinor?: number } = {},
): Record<string, unknown> {
  const maxAmount = options.maxAmountMinor ?? Number.MAX_SAFE_INTEGER;
  const paths: Record<string, Record<string, unknown>> = {};
  for (const op of [...OPERATIONS, ...extraOperations]) {
    const parameters: unknown[] = [...op.path.matchAll(/\{(\w+)\}/g)].map((m) => ({
      name: m[1],
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }));
    if (op.query) {
      const query = jsonSchema(op.query);
      const properties = (query.properties ?? {}) as Record<string, unknown>;
      const required = new Set((query.required ?? []) as string[]);
      for (const [name, schema] of Object.entries(properties))
        parameters.push({
          name,
          in: 'query',
          required: required.has(name),
          // API.md: lists default to 20 items; the schema leaves it unset, and the list applies it.
          schema: name === 'limit' ? { ...(schema as object), default: DEFAULT_LIST_LIMIT } : schema,
        });
    }
    if (op.idempotent) {
      parameters.push({
        name: 'Idempotency-Key',
        in: 'header',
        required: op.idempotent === 'required',
        schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7E]+$' },
      });
    }
    const responses: Record<string, unknown> = {};
    for (const [code, description] of Object.entries(op.responses)) {
      // readyz's 503 is its report, not an error.
      if (Number(code) < 400 || RESPONSE_OBJECTS[description])
        responses[code] = successResponse(op, description);
      else responses[code] = op.providerForm ? { description } : errorResponse(description, code);
    }
    if (op.providerForm) responses.default = { description: 'refused in the provider’s own form' };
    else {
      if (op.auth !== 'none')
        for (const [code, description] of Object.entries({
          ...COMMON_ERRORS,
          ...(op.idempotent || op.method !== 'get' ? IDEMPOTENCY_ERRORS : {}),
        }))
          responses[code] ??= errorResponse(description, code);
      responses.default = errorResponse('error', 'default');
    }
    paths[op.path] ??= {};
    paths[op.path][op.method] = {
      operationId: operationId(op),
      summary: op.summary,
      ...(parameters.length ? { parameters } : {}),
      ...(op.body
        ? {
            requestBody: {
              required: !op.bodyOptional,
              content: { 'application/json': { schema: requestRules(op, jsonSchema(op.body), maxAmount) } },
            },
          }
        : {}),
      ...(op.rawBody
        ? {
            requestBody: {
              required: true,
              content: Object.fromEntries(
                op.rawBody.map((type) => [type, { schema: { type: 'string', contentMediaType: type } }]),
              ),
            },
          }
        : {}),
      security: SECURITY[op.auth ?? 'merchant'],
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'tillbridge',
      version: '1.0.0',
      description: 'Cross-border wallet payment gateway for retail point-of-sale',
      license: { name: 'Proprietary', identifier: 'LicenseRef-Proprietary' },
    },
    servers: [{ url: options.baseUrl ?? '/' }],
    components: {
      securitySchemes: {
        adminKey: {
          type: 'http',
          scheme: 'bearer',
          description: 'The admin key (ADMIN_API_KEY): /v1/admin/* only',
        },
        secretKey: { type: 'http', scheme: 'bearer', description: "A merchant's secret key, sk_…" },
        terminalKey: {
          type: 'http',
          scheme: 'bearer',
          description: 'A terminal key, tk_…, bound to one store and terminal',
        },
      },
      schemas: { Error: errorSchema, ...objectSchemas },
    },
    security: [{ secretKey: [] }],
    paths,
    webhooks: merchantWebhooks,
  };
}
