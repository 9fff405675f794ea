/**
 * The sandbox provider's simulator: a real HTTP server on loopback that speaks the sandbox
 * protocol, plays API.md's magic-digit outcomes, shows a wallet page for QR payments and calls
 * the gateway back with signed notifications until they are acknowledged.
 *
 * Outcomes depend only on the request, so a payment in flight while the gateway restarts
 * resolves the same way: an inquiry carries the original request and a fresh simulator rebuilds
 * the order from it. The one thing no request carries, a customer's scan of a QR code, is kept in
 * a file beside the simulator's port.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { dirname } from 'node:path';
import type { SimulatorHandle, SimulatorOptions } from '../contract.ts';
import { convert, rateFor } from '../demo-fx.ts';
import { listenRemembered, seededStatePath } from '../simulator-port.ts';
import { send } from '../transport.ts';
import {
  type SandboxNotification,
  type SandboxPaymentView,
  type SandboxPayRequest,
  type SandboxRefundRequest,
  type SandboxRefundView,
  type Scenario,
  SIGNATURE_HEADER,
  sandboxSecret,
  scenarioFor,
  signSandbox,
  verifySandbox,
} from './protocol.ts';
import { settlementCsv } from './settlement.ts';

/** "customer confirms on the phone … after about 3 s" */
const CONFIRM_DELAY_MS = 3000;
/** A 55 pay sent this long after its sale began is a resend: the first attempt went right away. */
const RESEND_AGE_MS = 1500;
/** Notification retries, in seconds: quick first, then backing off. */
const NOTIFY_SCHEDULE_S = [0, 1, 2, 5, 10, 30, 60, 120, 300];

interface Order {
  request: SandboxPayRequest;
  scenario: Scenario;
  status: SandboxPaymentView['status'];
  transaction_id: string;
  decide_at?: number;
  paid_at?: Date;
  failure_code?: string;
  failure_message?: string;
  refunds: Map<string, SandboxRefundView & { amount: number; refunded_at?: Date }>;
}

const FAILURES: Partial<Record<Scenario, [string, string]>> = {
  insufficient_funds: ['insufficient_funds', 'The customer’s balance is not enough'],
  confirm_then_fail: ['user_canceled', 'The customer gave up on the phone'],
  invalid_code: ['invalid_payment_code', 'The payment code is expired or invalid'],
};

function transactionIdFor(requestId: string): string {
  return `sbx_${createHash('sha256').update(requestId).digest('hex').slice(0, 24)}`;
}

export async function startSandboxSimulator(options: SimulatorOptions): Promise<SimulatorHandle> {
  const secret = sandboxSecret(options.seed);
  const orders = new Map<string, Order>();
  const refundsById = new Map<string, Order>();
  const failedOnce = new Set<string>();
  /** Request ids cancelled before their pay arrived (as Antom keeps them: a later pay is refused). */
  const canceledUnseen = new Set<string>();
  const callCounts = new Map<string, Record<string, number>>();
  const timers = new Set<NodeJS.Timeout>();
  let baseUrl = '';
  // Simulators started on a port of their own (tests) keep nothing, as they keep no port file.
  const scansFile = options.port === undefined ? seededStatePath(options.seed, '.sandbox-scans') : undefined;
  const scans = readScans(scansFile);

  const later = (ms: number, fn: () => void) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms * options.time_scale);
    timers.add(timer);
  };

  function view(order: Order): SandboxPaymentView {
    settle(order);
    const paid = order.status === 'succeeded';
    const isQr = order.request.mode === 'qr';
    const rate = rateFor(order.request.currency, 'CNY');
    return {
      request_id: order.request.request_id,
      status: order.status,
      transaction_id: order.transaction_id,
      failure_code: order.failure_code,
      failure_message: order.failure_message,
      qr_url: isQr ? `${baseUrl}/wallet/${encodeURIComponent(order.request.request_id)}` : undefined,
      qr_expires_at: isQr ? order.request.expires_at : undefined,
      ...(paid
        ? {
            // What the customer's wallet paid in CNY, at the simulators' demo rates, between the
            // currencies' own minor units (JPY has none, KWD three).
            customer_amount: convert(
              { value: order.request.amount, currency: order.request.currency },
              'CNY',
              rate,
            ).value,
            customer_currency: 'CNY',
            exchange_rate: rate,
            wallet_psp: 'SANDBOXWALLET',
            paid_at: order.paid_at?.toISOString(),
          }
        : {}),
    };
  }

  /** Moves a "customer is confirming" order to its scripted end once its time has come. */
  function settle(order: Order): void {
    if (order.status !== 'processing' || order.decide_at === undefined || Date.now() < order.decide_at)
      return;
    finish(order, order.scenario === 'confirm_then_fail' ? 'failed' : 'succeeded');
  }

  function finish(order: Order, status: 'succeeded' | 'failed'): void {
    order.status = status;
    order.decide_at = undefined;
    if (status === 'succeeded') order.paid_at = new Date();
    else
      [order.failure_code, order.failure_message] = FAILURES[order.scenario] ?? ['provider_error', 'failed'];
  }

  /** The customer has presented or confirmed: play the scenario. */
  function authorize(order: Order, createdAt: number): void {
    switch (order.scenario) {
      case 'success':
      case 'no_answer':
      case 'error_then_ok':
        return finish(order, 'succeeded');
      case 'insufficient_funds':
      case 'invalid_code':
        return finish(order, 'failed');
      case 'confirm_then_success':
      case 'confirm_then_fail': {
        order.status = 'processing';
        order.decide_at = createdAt + CONFIRM_DELAY_MS * options.time_scale;
        later(Math.max(0, order.decide_at - Date.now()) / options.time_scale, () => {
          settle(order);
          notify(order);
        });
        return;
      }
      case 'forever_processing':
        order.status = 'processing';
        return;
    }
  }

  function createOrder(request: SandboxPayRequest, createdAt: number): Order {
    const order: Order = {
      request,
      scenario: scenarioFor(request.amount),
      status: 'requires_customer',
      transaction_id: transactionIdFor(request.request_id),
      refunds: new Map(),
    };
    // Cancelled before its pay arrived: the order is born closed, and nobody is charged.
    const scannedAt = scans.get(request.request_id);
    if (canceledUnseen.has(request.request_id)) order.status = 'canceled';
    else if (request.mode === 'scan') authorize(order, createdAt);
    else if (scannedAt !== undefined) authorize(order, scannedAt);
    orders.set(request.request_id, order);
    return order;
  }

  /** A fresh simulator (after a restart) rebuilds an order from the original request an inquiry carries. */
  function recall(requestId: string, original: SandboxPayRequest | undefined): Order | undefined {
    const known = orders.get(requestId);
    if (known || !original || original.request_id !== requestId) return known;
    if (scenarioFor(original.amount) === 'error_then_ok' && original.mode === 'scan') return undefined;
    return createOrder(original, Date.parse(original.created_at));
  }

  /**
   * A refund names a payment the gateway holds as paid (it refunds nothing else): a restarted
   * simulator rebuilds that order as paid, whatever its scenario or mode.
   */
  function recallPaid(requestId: string, original: SandboxPayRequest | undefined): Order | undefined {
    const known = orders.get(requestId);
    if (known || !original || original.request_id !== requestId) return known;
    const order = createOrder(original, Date.parse(original.created_at));
    if (view(order).status !== 'succeeded') finish(order, 'succeeded');
    return order;
  }

  function notify(order: Order, refund?: SandboxRefundView): void {
    const message: SandboxNotification = refund
      ? { notification_id: `ntf_${refund.refund_request_id}_${refund.status}`, type: 'refund', refund }
      : {
          notification_id: `ntf_${order.request.request_id}_${order.status}`,
          type: 'payment',
          payment: view(order),
        };
    const body = JSON.stringify(message);
    const attempt = (index: number) => {
      send({
        method: 'POST',
        url: order.request.notify_url,
        headers: { 'content-type': 'application/json', [SIGNATURE_HEADER]: signSandbox(secret, body) },
        body,
        timeoutMs: 5000,
      })
        .then((res) => res.status >= 200 && res.status < 300)
        .catch(() => false)
        .then((acknowledged) => {
          if (!acknowledged && index + 1 < NOTIFY_SCHEDULE_S.length) {
            later(NOTIFY_SCHEDULE_S[index + 1] * 1000, () => attempt(index + 1));
          }
        });
    };
    later(NOTIFY_SCHEDULE_S[0] * 1000, () => attempt(0));
  }

  type Handler = (body: Record<string, unknown>, res: http.ServerResponse) => void;
  const reply = (res: http.ServerResponse, status: number, payload: unknown) => {
    const body = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/json',
      [SIGNATURE_HEADER]: signSandbox(secret, body),
    });
    res.end(body);
  };

  const api: Record<string, Handler> = {
    '/v1/pay': (body, res) => {
      const request = body as unknown as SandboxPayRequest;
      const existing = orders.get(request.request_id);
      if (existing) {
        if (existing.request.amount !== request.amount || existing.request.currency !== request.currency) {
          return reply(res, 409, {
            error: 'request_id_reused',
            message: 'request_id reused with other parameters',
          });
        }
        return reply(res, 200, view(existing));
      }
      const scenario = scenarioFor(request.amount);
      // 55 fails the first attempt only; a request long after its sale began is a resend, also
      // after this simulator restarted and forgot the first (the outcome depends on the request).
      const resend = Date.now() - Date.parse(request.created_at) > RESEND_AGE_MS;
      if (
        scenario === 'error_then_ok' &&
        request.mode === 'scan' &&
        !failedOnce.has(request.request_id) &&
        !resend &&
        !canceledUnseen.has(request.request_id)
      ) {
        failedOnce.add(request.request_id);
        return reply(res, 500, { error: 'internal', message: 'simulated provider failure' });
      }
      const order = createOrder(request, Date.now());
      // 54: the answer is lost; a QR order exists all the same, and an inquiry shows its code.
      if (scenario === 'no_answer') {
        res.socket?.destroy();
        return;
      }
      reply(res, 200, view(order));
    },
    '/v1/inquire': (body, res) => {
      const order = recall(String(body.request_id), body.original as SandboxPayRequest | undefined);
      if (!order) return reply(res, 404, { request_id: body.request_id, status: 'not_found' });
      reply(res, 200, view(order));
    },
    '/v1/cancel': (body, res) => {
      const order = recall(String(body.request_id), body.original as SandboxPayRequest | undefined);
      if (!order) {
        canceledUnseen.add(String(body.request_id));
        return reply(res, 200, { request_id: body.request_id, status: 'canceled' });
      }
      settle(order);
      // Like Antom's cancel: an unpaid order is closed, a paid one is reversed in full.
      order.status = 'canceled';
      order.decide_at = undefined;
      reply(res, 200, view(order));
    },
    '/v1/refund': (body, res) => {
      const request = body as unknown as SandboxRefundRequest;
      const order = recallPaid(request.request_id, request.original);
      if (!order || view(order).status !== 'succeeded') {
        return reply(res, 200, {
          refund_request_id: request.refund_request_id,
          status: 'failed',
          failure_code: 'not_refundable',
        });
      }
      const existing = order.refunds.get(request.refund_request_id);
      if (existing) return reply(res, 200, existing);
      const refunded = [...order.refunds.values()]
        .filter((r) => r.status === 'succeeded')
        .reduce((s, r) => s + r.amount, 0);
      const ok = refunded + request.amount <= order.request.amount;
      const refund = {
        refund_request_id: request.refund_request_id,
        refund_id: transactionIdFor(request.refund_request_id),
        status: ok ? ('succeeded' as const) : ('failed' as const),
        failure_code: ok ? undefined : 'refund_exceeds_payment',
        amount: request.amount,
        refunded_at: ok ? new Date() : undefined,
      };
      order.refunds.set(refund.refund_request_id, refund);
      refundsById.set(refund.refund_request_id, order);
      reply(res, 200, refund);
    },
    '/v1/inquire-refund': (body, res) => {
      const id = String(body.refund_request_id);
      const refund = refundsById.get(id)?.refunds.get(id);
      reply(res, refund ? 200 : 404, refund ?? { refund_request_id: id, status: 'not_found' });
    },
  };

  function walletPage(order: Order): string {
    const { amount, currency } = order.request;
    const state = view(order).status;
    return `<!doctype html><html><head><meta charset="utf-8"><title>Sandbox wallet</title></head>
<body style="font-family:sans-serif;max-width:24rem;margin:2rem auto">
<h1>Sandbox wallet</h1><p>Pay <strong>${amount} ${currency}</strong> (minor units) to the merchant.</p>
<p>Status: <strong id="status">${state}</strong></p>
<form method="post"><button type="submit">Confirm payment</button></form></body></html>`;
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const path = new URL(req.url ?? '/', 'http://sim').pathname;
      const respond = () => route(req, res, path, raw);
      if (options.latency_ms > 0) setTimeout(respond, options.latency_ms);
      else respond();
    });
  });

  function route(req: http.IncomingMessage, res: http.ServerResponse, path: string, raw: Buffer): void {
    const wallet = /^\/wallet\/([^/]+)$/.exec(path);
    if (wallet) {
      const order = orders.get(decodeURIComponent(wallet[1]));
      if (!order) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('unknown order');
        return;
      }
      if (req.method === 'POST' && order.status === 'requires_customer') {
        const now = Date.now();
        scans.set(order.request.request_id, now);
        if (scansFile) {
          mkdirSync(dirname(scansFile), { recursive: true });
          appendFileSync(scansFile, `${order.request.request_id}\t${now}\n`);
        }
        authorize(order, now);
        notify(order);
      }
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(walletPage(order));
      return;
    }
    const settlement = /^\/v1\/settlements\/(\d{4}-\d{2}-\d{2})$/.exec(path);
    if (settlement && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/csv' });
      // One merchant's account, known here by the URL its notifications go to (as Antom scopes its
      // files by client id): another merchant's sales are not in its file.
      const account = new URL(req.url ?? '/', 'http://sim').searchParams.get('notify_url');
      const all = [...orders.values()].filter((o) => account === null || o.request.notify_url === account);
      const amounts = new Map(
        all.map((o) => [o.request.request_id, [o.request.amount, o.request.currency] as [number, string]]),
      );
      const refunds = all.flatMap((o) =>
        [...o.refunds.values()].flatMap((r) =>
          r.status === 'succeeded' && r.refund_id && r.refunded_at
            ? [
                {
                  refund_id: r.refund_id,
                  refund_request_id: r.refund_request_id,
                  transaction_id: o.transaction_id,
                  amount: r.amount,
                  currency: o.request.currency,
                  refunded_at: r.refunded_at.toISOString(),
                },
              ]
            : [],
        ),
      );
      res.end(settlementCsv(all.map(view), settlement[1], amounts, refunds));
      return;
    }
    const calls = /^\/_sim\/calls\/([^/]+)$/.exec(path);
    if (calls && req.method === 'GET')
      return reply(res, 200, callCounts.get(decodeURIComponent(calls[1])) ?? {});
    const handler = req.method === 'POST' ? api[path] : undefined;
    if (!handler) return reply(res, 404, { error: 'not_found' });
    const verified = verifySandbox(secret, req.headers[SIGNATURE_HEADER] as string | undefined, raw);
    if (!verified.ok) return reply(res, 401, { error: 'signature_invalid', message: verified.reason });
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      return reply(res, 400, { error: 'bad_json' });
    }
    // Counted per request id so tests can see how often the gateway asked (each job runs once).
    const requestId = String(body.request_id ?? body.refund_request_id ?? '');
    const counts = callCounts.get(requestId) ?? {};
    counts[path] = (counts[path] ?? 0) + 1;
    callCounts.set(requestId, counts);
    handler(body, res);
  }

  // Its orders come back from the gateway's inquiries after a restart; its QR URLs need the port.
  const portFile = options.port === undefined ? seededStatePath(options.seed, '.sandbox.port') : undefined;
  baseUrl = `http://127.0.0.1:${await listenRemembered(server, portFile, options.port)}`;
  return {
    url: baseUrl,
    close: async () => {
      for (const timer of timers) clearTimeout(timer);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The QR codes customers scanned (request id → when), as an earlier simulator of this seed kept them. */
function readScans(file: string | undefined): Map<string, number> {
  const scans = new Map<string, number>();
  if (!file) return scans;
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return scans;
  }
  for (const line of text.split('\n')) {
    const [requestId, at] = line.split('\t');
    if (requestId && Number.isFinite(Number(at))) scans.set(requestId, Number(at));
  }
  return scans;
}
