/**
 * The simulated Antom's HTTP face: routes, signature checks on every request, a signature on every
 * response, the magic-digit transport faults, the Order Code wallet page and the test hooks.
 */

import type { KeyObject } from 'node:crypto';
import type http from 'node:http';
import { DEFAULT_TIMEOUT_MS } from '../client.ts';
import { isRecord, type Json, text } from '../mapping.ts';
import { formatSignatureHeader, isoTime, signBase64, verifySignatureHeader } from '../signature.ts';
import { canonical, type Ledger, type PaymentRecord, parseMoney } from './ledger.ts';
import type { Notifier } from './notifier.ts';
import type { Renderer } from './render.ts';
import { SETTLEMENT_FAULTS, type SettlementFault, settlementFile } from './settlement-file.ts';
import { applySwitches, type SimulatorSwitches } from './switches.ts';
import { walletPage } from './wallet-page.ts';

/**
 * Digits 54: hold the socket past the client's timeout, then drop it (§15.7). Not shortened by the
 * time scale below that timeout: dropped earlier, it is a reset, not the timeout it plays.
 */
const HANG_MS = 12_000;
const hangMs = (timeScale: number) => Math.max(HANG_MS * timeScale, DEFAULT_TIMEOUT_MS + 1_000);

const API_PATH = /^\/ams(?:\/sandbox)?\/api\/v1\/payments\/(pay|inquiryPayment|cancel|refund|inquiryRefund)$/;

export interface ServerContext {
  ledger: Ledger;
  notifier: Notifier;
  render: Renderer;
  switches: SimulatorSwitches;
  antomKey: KeyObject;
  /** The merchant public key for a client id, or undefined when the client is unknown. */
  clientKey(clientId: string): KeyObject | undefined;
  registerClient(clientId: string, publicKey: string): void;
  baseUrl(): string;
  timeScale: number;
  latencyMs: number;
  /** Sockets held open by digits 54, destroyed on close. */
  held: Set<NodeJS.Timeout>;
}

export function createHandler(ctx: ServerContext): http.RequestListener {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const run = () => {
        try {
          route(ctx, req, res, raw);
        } catch (error) {
          if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`simulator error: ${(error as Error).message}`);
        }
      };
      if (ctx.latencyMs > 0) setTimeout(run, ctx.latencyMs);
      else run();
    });
  };
}

function route(ctx: ServerContext, req: http.IncomingMessage, res: http.ServerResponse, raw: Buffer) {
  const target = req.url ?? '/';
  const url = new URL(target, 'http://simulator');
  const api = API_PATH.exec(url.pathname);
  if (api && req.method === 'POST') return handleApi(ctx, req, res, target, api[1], raw);
  const wallet = /^\/wallet\/([^/]+)$/.exec(url.pathname);
  if (wallet && (req.method === 'GET' || req.method === 'POST')) {
    return handleWallet(ctx, req, res, decodeURIComponent(wallet[1]));
  }
  const settlement = /^\/_sim\/settlements\/(\d{4}-\d{2}-\d{2})$/.exec(url.pathname);
  if (settlement && req.method === 'GET') return handleSettlement(ctx, res, settlement[1], url.searchParams);
  if (url.pathname === '/_sim/switches' && req.method === 'POST') {
    const unknown = applySwitches(ctx.switches, safeJson(raw));
    return plain(res, unknown.length ? 400 : 200, { switches: ctx.switches, unknown });
  }
  if (url.pathname === '/_sim/clients' && req.method === 'POST') {
    const body = safeJson(raw);
    const clientId = isRecord(body) ? text(body.client_id) : undefined;
    const key = isRecord(body) ? text(body.public_key) : undefined;
    if (!clientId || !key) return plain(res, 400, { error: 'client_id and public_key are required' });
    try {
      ctx.registerClient(clientId, key);
    } catch (error) {
      return plain(res, 400, { error: (error as Error).message });
    }
    return plain(res, 200, { client_id: clientId });
  }
  plain(res, 404, { error: `no route ${req.method} ${url.pathname}` });
}

// ─── the AMS API ────────────────────────────────────────────────────────────────────────────────

function handleApi(
  ctx: ServerContext,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  path: string,
  operation: string,
  raw: Buffer,
) {
  const clientId = header(req, 'client-id');
  const requestTime = header(req, 'request-time');
  const signature = header(req, 'signature');
  const refuse = (code: string, message: string) =>
    answer(
      ctx,
      res,
      path,
      clientId ?? '',
      { result: { resultCode: code, resultStatus: 'F', resultMessage: message } },
      ctx.switches.sign_errors,
    );
  if (!clientId) return refuse('SIGNATURE_INVALID', 'client-id header is missing');
  const key = ctx.clientKey(clientId);
  if (!key) return refuse('KEY_NOT_FOUND', `no key registered for client-id ${clientId}`);
  if (!requestTime || !signature)
    return refuse('SIGNATURE_INVALID', 'request-time or signature header is missing');
  // The time is opaque inside the signed content: ISO-8601 or epoch ms, used exactly as received.
  if (!verifySignatureHeader({ path, clientId, time: requestTime, body: raw }, signature, key)) {
    return refuse('SIGNATURE_INVALID', 'The signature is invalid.');
  }
  const body = safeJson(raw);
  if (!isRecord(body))
    return respond(ctx, res, path, clientId, fail('PARAM_ILLEGAL', 'the body is not a JSON object'));
  const now = new Date();
  switch (operation) {
    case 'pay':
      return pay(ctx, res, path, clientId, body, now);
    case 'inquiryPayment': {
      if (ctx.switches.inquiry_refused)
        return respond(ctx, res, path, clientId, fail('ACCESS_DENIED', 'access denied'));
      const record = ctx.ledger.findPayment(clientId, body);
      if (!record || record.tombstone)
        return respond(ctx, res, path, clientId, fail('ORDER_NOT_EXIST', 'order not exist'));
      return respond(ctx, res, path, clientId, ctx.render.inquiry(record));
    }
    case 'cancel': {
      const requestId = text(body.paymentRequestId);
      const record = ctx.ledger.findPayment(clientId, body);
      if (!record && requestId) {
        // The pay never arrived: remember the cancel so a late pay cannot charge the customer,
        // and say the order does not exist (alipay.md §16: Antom's answer here is not confirmed).
        ctx.ledger.tombstone(clientId, requestId, now);
        return respond(ctx, res, path, clientId, fail('ORDER_NOT_EXIST', 'order not exist'));
      }
      if (!record) return respond(ctx, res, path, clientId, fail('ORDER_NOT_EXIST', 'order not exist'));
      if (!record.tombstone) ctx.ledger.cancel(record, now);
      return respond(ctx, res, path, clientId, ctx.render.cancel(record));
    }
    case 'refund':
      return refund(ctx, res, path, clientId, body, now);
    case 'inquiryRefund': {
      const record = ctx.ledger.findRefund(clientId, body);
      if (!record) return respond(ctx, res, path, clientId, fail('REFUND_NOT_EXIST', 'refund not exist'));
      return respond(ctx, res, path, clientId, ctx.render.refundInquiry(record));
    }
  }
}

function pay(
  ctx: ServerContext,
  res: http.ServerResponse,
  path: string,
  clientId: string,
  body: Json,
  now: Date,
) {
  const requestId = text(body.paymentRequestId);
  const amount = parseMoney(body.paymentAmount);
  if (!requestId || requestId.length > 64 || !amount || body.productCode !== 'IN_STORE_PAYMENT') {
    return respond(
      ctx,
      res,
      path,
      clientId,
      fail('PARAM_ILLEGAL', 'paymentRequestId, paymentAmount or productCode is missing or invalid'),
    );
  }
  const missing = missingPayField(body);
  if (missing)
    return respond(ctx, res, path, clientId, fail('PARAM_ILLEGAL', `${missing} is missing or invalid`));
  const existing = ctx.ledger.existingPayment(clientId, requestId);
  if (existing) {
    if (existing.tombstone)
      return respond(ctx, res, path, clientId, fail('ORDER_IS_CANCELED', existing.resultMessage));
    if (existing.fingerprint !== canonical(body)) {
      return respond(
        ctx,
        res,
        path,
        clientId,
        fail('REPEAT_REQ_INCONSISTENT', 'the repeated request is inconsistent with the first one'),
      );
    }
    return respond(ctx, res, path, clientId, ctx.render.pay(existing, walletUrl(ctx, existing)));
  }
  if (ctx.switches.pay_unknown_unrecorded)
    return respond(ctx, res, path, clientId, {
      result: {
        resultCode: 'UNKNOWN_EXCEPTION',
        resultStatus: 'U',
        resultMessage: 'API failed due to unknown reason.',
      },
    });
  const created = ctx.ledger.createPayment(clientId, body, amount, now);
  if (created.transport === 'http500' || !created.record) {
    res.writeHead(500, { 'content-type': 'application/json' });
    res.end(
      '{"result":{"resultCode":"UNKNOWN_EXCEPTION","resultStatus":"U","resultMessage":"API failed due to unknown reason."}}',
    );
    return;
  }
  const record = created.record;
  followUp(ctx, record);
  if (created.transport === 'hang') {
    const timer = setTimeout(() => {
      ctx.held.delete(timer);
      res.socket?.destroy();
    }, hangMs(ctx.timeScale));
    ctx.held.add(timer);
    return;
  }
  if (ctx.switches.order_code_unknown_once && record.scenario === 'OrderCode')
    return respond(ctx, res, path, clientId, {
      result: {
        resultCode: 'PAYMENT_IN_PROCESS',
        resultStatus: 'U',
        resultMessage: 'The payment is being processed.',
      },
      paymentRequestId: record.paymentRequestId,
    });
  respond(ctx, res, path, clientId, ctx.render.pay(record, walletUrl(ctx, record)));
}

/**
 * The first of pay's required fields (alipay.md §4.3: the legacy SDK's checks, and what current docs
 * add) that the body lacks, so an adapter that stops sending one fails here as it would at Antom.
 */
function missingPayField(body: Json): string | undefined {
  const at = (path: string): unknown =>
    path.split('.').reduce<unknown>((value, key) => (isRecord(value) ? value[key] : undefined), body);
  const scenario = at('paymentFactor.inStorePaymentScenario');
  if (scenario !== 'PaymentCode' && scenario !== 'OrderCode' && scenario !== 'EntryCode')
    return 'paymentFactor.inStorePaymentScenario';
  const required = [
    'paymentMethod.paymentMethodType',
    ...(scenario === 'PaymentCode' ? ['paymentMethod.paymentMethodId'] : []),
    'paymentNotifyUrl',
    ...(at('paymentMethod.paymentMethodType') === 'CONNECT_WALLET'
      ? ['settlementStrategy.settlementCurrency']
      : []),
    'order.orderDescription',
    'order.merchant.referenceMerchantId',
    'order.merchant.merchantName',
    'order.merchant.merchantMCC',
    'order.merchant.store.referenceStoreId',
    'order.merchant.store.storeName',
    'order.merchant.store.storeMCC',
    'order.env.storeTerminalId',
    'order.env.storeTerminalRequestTime',
    ...(scenario === 'EntryCode' ? ['order.env.userAgent'] : []),
  ];
  const absent = required.find((path) => {
    const value = at(path);
    return typeof value !== 'string' || value.length === 0;
  });
  if (absent) return absent;
  if (!parseMoney(at('order.orderAmount'))) return 'order.orderAmount';
  return undefined;
}

function refund(
  ctx: ServerContext,
  res: http.ServerResponse,
  path: string,
  clientId: string,
  body: Json,
  now: Date,
) {
  const requestId = text(body.refundRequestId);
  if (requestId) {
    const existing = ctx.ledger.existingRefund(clientId, requestId);
    if (existing) {
      ctx.ledger.settleRefund(existing, now);
      if (existing.fingerprint !== canonical(body)) {
        return respond(
          ctx,
          res,
          path,
          clientId,
          fail('REPEAT_REQ_INCONSISTENT', 'the repeated refund is inconsistent with the first one'),
        );
      }
      return respond(ctx, res, path, clientId, ctx.render.refund(existing));
    }
  }
  const { record, error } = ctx.ledger.refund(clientId, body, now, ctx.switches.async_refunds);
  if (!record)
    return respond(ctx, res, path, clientId, fail(error?.[0] ?? 'PARAM_ILLEGAL', error?.[1] ?? 'bad refund'));
  respond(ctx, res, path, clientId, ctx.render.refund(record));
}

/** Notifications for what is final now, and timers for what decides later. */
export function followUp(ctx: ServerContext, record: PaymentRecord) {
  const notify = () => {
    if (record.notified || !shouldNotify(record) || !ctx.switches.notifications || !record.notifyUrl) return;
    record.notified = true;
    ctx.notifier.deliver(record.notifyUrl, record.clientId, ctx.render.notification(record));
  };
  if (record.status !== 'PROCESSING') return notify();
  // A scanned Order Code whose customer is still confirming: the till hears of the scan at once.
  if (record.scanned && !record.pendingNotified && ctx.switches.notifications && record.notifyUrl) {
    record.pendingNotified = true;
    ctx.notifier.deliver(record.notifyUrl, record.clientId, ctx.render.pendingNotification(record));
  }
  if (record.dueAt !== undefined) {
    const timer = setTimeout(
      () => {
        ctx.held.delete(timer);
        // An inquiry may have settled it already; the notification is due either way.
        ctx.ledger.settle(record);
        notify();
      },
      Math.max(0, record.dueAt - Date.now()) + 5,
    );
    ctx.held.add(timer);
  }
}

/**
 * Which final states notifyPayment reports: a UPM failure is already final in the synchronous
 * answer; digits 54 must be found by inquiry; a cancel is our own doing; an Order Code reports
 * whatever the customer's scan led to.
 */
function shouldNotify(record: PaymentRecord): boolean {
  if (record.status === 'PROCESSING' || record.status === 'CANCELLED') return false;
  if (record.scenario === 'OrderCode') return record.scanned;
  if (record.digits === 54) return false;
  return record.status === 'SUCCESS' || record.digits === 53;
}

function walletUrl(ctx: ServerContext, record: PaymentRecord): string {
  return `${ctx.baseUrl()}/wallet/${encodeURIComponent(record.paymentId)}`;
}

// ─── wallet page and settlement files ───────────────────────────────────────────────────────────

function handleWallet(
  ctx: ServerContext,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  paymentId: string,
) {
  const record = ctx.ledger.paymentsById.get(paymentId);
  if (record?.scenario !== 'OrderCode') {
    res.writeHead(404, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>Unknown code</title><p>This payment code is unknown.</p>');
    return;
  }
  ctx.ledger.settle(record);
  if (req.method === 'POST' && ctx.ledger.scan(record, new Date())) followUp(ctx, record);
  const wantsJson = (req.headers.accept ?? '').includes('application/json');
  if (wantsJson)
    return plain(res, 200, {
      paymentId: record.paymentId,
      paymentStatus: record.status,
      resultCode: record.resultCode,
    });
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(walletPage(record));
}

function handleSettlement(
  ctx: ServerContext,
  res: http.ServerResponse,
  date: string,
  query: URLSearchParams,
) {
  const requested = (query.get('faults') ?? '').split(',').filter(Boolean);
  const unknown = requested.filter((fault) => !(SETTLEMENT_FAULTS as readonly string[]).includes(fault));
  if (unknown.length)
    return plain(res, 400, { error: `unknown faults ${unknown.join(', ')}`, known: SETTLEMENT_FAULTS });
  const file = settlementFile(ctx.ledger, {
    date,
    clientId: query.get('client_id') ?? undefined,
    faults: new Set(requested as SettlementFault[]),
  });
  res.writeHead(200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': `attachment; filename="${file.name}"`,
  });
  res.end(file.csv);
}

// ─── answering ──────────────────────────────────────────────────────────────────────────────────

function fail(code: string, message: string): Json {
  return { result: { resultCode: code, resultStatus: 'F', resultMessage: message } };
}

function respond(ctx: ServerContext, res: http.ServerResponse, path: string, clientId: string, body: Json) {
  answer(ctx, res, path, clientId, body, true);
}

/** Every answer is signed over the request's path (§3.6) unless it is an unsigned gateway error. */
function answer(
  ctx: ServerContext,
  res: http.ServerResponse,
  path: string,
  clientId: string,
  body: Json,
  signed: boolean,
) {
  const raw = JSON.stringify(body);
  const headers: Record<string, string> = { 'content-type': 'application/json; charset=UTF-8' };
  if (signed && !ctx.switches.unsigned_responses) {
    const responseTime = ctx.switches.epoch_time ? String(Date.now()) : isoTime(new Date());
    let signature = signBase64({ path, clientId, time: responseTime, body: raw }, ctx.antomKey);
    if (ctx.switches.bad_signatures)
      signature = signBase64({ path, clientId, time: responseTime, body: `${raw} ` }, ctx.antomKey);
    Object.assign(headers, {
      'client-id': clientId,
      'response-time': responseTime,
      signature: formatSignatureHeader(signature, '1', ctx.switches.raw_signature),
    });
  }
  res.writeHead(200, headers);
  res.end(raw);
}

function plain(res: http.ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function safeJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    return undefined;
  }
}
