/**
 * notifyPayment (alipay.md §3.8, §10): verify over OUR notify path and the raw body, then parse.
 * Nothing unverified is ever turned into an event. The acknowledgement body is exactly what Antom
 * needs to stop retrying; anything else gets a non-success answer and no event.
 */
import type {
  AccountContext,
  InboundRequest,
  NotificationEvent,
  NotificationResult,
  PaymentOutcome,
  ProviderAck,
} from '../contract.ts';
import type { AlipayAccount } from './credentials.ts';
import {
  failureFor,
  isRecord,
  type Json,
  paymentFacts,
  plainId,
  refundInquiryOutcome,
  resultOf,
  text,
} from './mapping.ts';
import {
  formatSignatureHeader,
  isoTime,
  parseAntomTime,
  signBase64,
  verifySignatureHeader,
} from './signature.ts';

export const ACK_BODY = '{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}';

/**
 * Replay window for `request-time`. Antom documents none (§3.3), nor whether a retry is signed
 * anew or sent as first signed; its retries go on for 24 h (§10). So a notification is taken for
 * 26 h: refusing Antom's own late retry would lose the outcome it carries, while a replay of a
 * genuine one changes nothing (outcomes only move forward, and are deduplicated). A few minutes
 * into the future tolerates a fast clock.
 */
export const MAX_AGE_MS = 26 * 3_600_000;
export const MAX_FUTURE_MS = 5 * 60_000;

export function handleAlipayNotification(
  account: AccountContext<AlipayAccount>,
  request: InboundRequest,
): NotificationResult {
  const credentials = account.credentials;
  const clientIdOfAccount = credentials.stored.client_id;
  const reject = (status: number, code: string, reason: string): NotificationResult => ({
    ok: false,
    reason,
    ack: rejection(status, code, reason),
  });
  if (request.method.toUpperCase() !== 'POST')
    return reject(405, 'PARAM_ILLEGAL', 'notifications are POSTed');
  const clientId = header(request, 'client-id');
  const requestTime = header(request, 'request-time');
  const signature = header(request, 'signature');
  if (!clientId || !requestTime || !signature) {
    return reject(401, 'SIGNATURE_INVALID', 'client-id, request-time or signature header missing');
  }
  if (clientId !== clientIdOfAccount) {
    return reject(401, 'SIGNATURE_INVALID', `notification for client-id ${clientId}, not this account`);
  }
  // §3.8: the signed path is that of the URL Antom called, i.e. our configured notify URL, not
  // whatever a proxy rewrote req.url into.
  const verified = verifySignatureHeader(
    { path: account.notify_path, clientId, time: requestTime, body: request.raw_body },
    signature,
    credentials.alipayPublicKeys,
  );
  if (!verified) return reject(401, 'SIGNATURE_INVALID', 'notification signature does not verify');
  const sentAt = parseAntomTime(requestTime);
  if (!sentAt)
    return reject(400, 'PARAM_ILLEGAL', `request-time ${requestTime} is neither ISO-8601 nor epoch ms`);
  const age = request.received_at.getTime() - sentAt.getTime();
  if (age > MAX_AGE_MS || age < -MAX_FUTURE_MS) {
    return reject(401, 'SIGNATURE_INVALID', `stale notification: request-time ${requestTime}`);
  }

  let body: unknown;
  try {
    body = JSON.parse(request.raw_body.toString('utf8'));
  } catch {
    return reject(400, 'PARAM_ILLEGAL', 'notification body is not JSON');
  }
  if (!isRecord(body)) return reject(400, 'PARAM_ILLEGAL', 'notification body is not a JSON object');
  const event = toEvent(body);
  if (!event)
    return reject(
      400,
      'PARAM_ILLEGAL',
      'notification lacks notifyType, result or request id, or an id is too long or holds a control character',
    );
  return { ok: true, event, ack: acknowledgement(credentials, account.notify_path) };
}

/** Antom's API reference caps these ids at 64 characters: a longer one is no Antom message. */
const ID_FIELDS = ['paymentRequestId', 'paymentId', 'refundRequestId', 'refundId'] as const;
const RESULT_STATUSES = new Set(['S', 'F', 'U']);

function toEvent(body: Json): NotificationEvent | undefined {
  const notifyType = text(body.notifyType);
  const result = resultOf(body);
  if (!notifyType || !result || !plainId(notifyType) || !RESULT_STATUSES.has(result.resultStatus))
    return undefined;
  if (ID_FIELDS.some((field) => !plainId(text(body[field]) ?? ''))) return undefined;
  if (notifyType === 'PAYMENT_RESULT' || notifyType === 'PAYMENT_PENDING') {
    const requestId = text(body.paymentRequestId);
    if (!requestId) return undefined;
    const paymentId = text(body.paymentId) ?? requestId;
    return {
      kind: 'payment',
      // Antom retries and duplicates by design; paymentId + notifyType identifies one message (§10).
      dedupe_key: `${paymentId}:${notifyType}:${result.resultStatus}`,
      provider_request_id: requestId,
      outcome: paymentOutcome(notifyType, result.resultStatus, result.resultCode, result.resultMessage, body),
    };
  }
  if (notifyType === 'REFUND_RESULT') {
    const requestId = text(body.refundRequestId);
    if (!requestId) return undefined;
    const refundId = text(body.refundId);
    return {
      kind: 'refund',
      dedupe_key: `${refundId ?? requestId}:${notifyType}:${result.resultStatus}`,
      provider_request_id: requestId,
      outcome:
        result.resultStatus === 'S'
          ? // Read as inquiryRefund's answer is; a notification without refundStatus is the refund done.
            refundInquiryOutcome(result, { ...body, refundStatus: text(body.refundStatus) ?? 'SUCCESS' })
          : result.resultStatus === 'F'
            ? {
                kind: 'failed',
                failure: failureFor(result.resultCode, result.resultMessage),
                provider_reference: refundId,
              }
            : { kind: 'pending', provider_reference: refundId },
    };
  }
  return {
    kind: 'ignored',
    dedupe_key: `${text(body.paymentId) ?? ''}:${notifyType}`,
    reason: `notifyType ${notifyType}`,
  };
}

function paymentOutcome(
  notifyType: string,
  status: string,
  code: string,
  message: string,
  body: Json,
): PaymentOutcome {
  const facts = paymentFacts(body);
  if (notifyType === 'PAYMENT_PENDING')
    // "The user has finished; wait for the final result" (alipay.md §10).
    return { kind: 'pending', reason: 'PAYMENT_PENDING notification', customer_acted: true, ...facts };
  if (status === 'S') return { kind: 'succeeded', ...facts };
  if (status === 'F') return { kind: 'failed', failure: failureFor(code, message), ...facts };
  return { kind: 'pending', reason: `PAYMENT_RESULT with status ${status}`, ...facts };
}

/** HTTP 200 and the exact success body. Signed too: harmless for Antom, required by Alipay+ (§10). */
function acknowledgement(credentials: AlipayAccount, notifyPath: string): ProviderAck {
  const responseTime = isoTime(new Date());
  const signature = signBase64(
    { path: notifyPath, clientId: credentials.stored.client_id, time: responseTime, body: ACK_BODY },
    credentials.privateKey,
  );
  return {
    status: 200,
    headers: {
      'content-type': 'application/json; charset=UTF-8',
      'client-id': credentials.stored.client_id,
      'response-time': responseTime,
      signature: formatSignatureHeader(signature, credentials.stored.key_version),
    },
    body: ACK_BODY,
  };
}

/** Unsigned, as Antom's own error answers may be (alipay.md §3.7); a 5xx is "unknown": Antom retries. */
export function rejection(status: number, code: string, message: string): ProviderAck {
  const resultStatus = status >= 500 ? 'U' : 'F';
  return {
    status,
    headers: { 'content-type': 'application/json; charset=UTF-8' },
    body: JSON.stringify({ result: { resultCode: code, resultStatus, resultMessage: message } }),
  };
}

function header(request: InboundRequest, name: string): string | undefined {
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(request.headers)) {
    if (key.toLowerCase() !== wanted) continue;
    return Array.isArray(value) ? value[0] : value;
  }
  return undefined;
}
