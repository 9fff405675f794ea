/**
 * The one send path (ActiveMerchant's `commit`): sign, POST with a timeout, read the raw body,
 * verify the response signature, parse. Every operation goes through `send`, so every answer is
 * judged by the same rules (alipay.md §3.6, §3.7, §5.3):
 * - a signed, verified answer is trusted whatever its status;
 * - an unsigned F or U is accepted (Antom sends gateway errors such as SIGNATURE_INVALID unsigned);
 * - an unsigned or badly signed S, partly present signature headers, HTTP ≠ 200, a timeout, a reset
 *   or an unparseable body are `no answer`: the caller turns them into "unknown" and inquires.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { TransportError, type TransportResponse, send as transportSend } from '../transport.ts';
import type { AlipayAccount } from './credentials.ts';
import { type AntomResult, isRecord, type Json, resultOf } from './mapping.ts';
import { formatSignatureHeader, isoTime, signBase64, verifySignatureHeader } from './signature.ts';

export type AntomOperation = 'pay' | 'inquiryPayment' | 'cancel' | 'refund' | 'inquiryRefund';

export type SendResult =
  | { answered: true; result: AntomResult; body: Json; signed: boolean }
  /** `responded`: Antom answered HTTP 200, with something we cannot trust or read. */
  | { answered: false; reason: string; reached: boolean; responded?: true };

/**
 * Antom's reference client reads for 5 s (alipay.md, "Timeouts"); a till waits for our answer, and
 * API.md holds its request "up to a few seconds". Past that the outcome is unknown and inquired.
 */
export const DEFAULT_TIMEOUT_MS = 5_000;

export async function send(
  account: AlipayAccount,
  operation: AntomOperation,
  payload: Json,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<SendResult> {
  const { stored } = account;
  let base: string;
  try {
    base = await account.baseUrl();
  } catch (error) {
    // The sandbox simulator could not be started: nothing was sent.
    return { answered: false, reason: `no Antom endpoint: ${(error as Error).message}`, reached: false };
  }
  const url = new URL(`${base.replace(/\/+$/, '')}${stored.path_prefix}/v1/payments/${operation}`);
  const path = `${url.pathname}${url.search}`;
  // Serialised once: the signed string is the sent string (never re-serialise, §3.2).
  const body = JSON.stringify(payload);
  const requestTime = isoTime(new Date());
  const signature = signBase64(
    { path, clientId: stored.client_id, time: requestTime, body },
    account.privateKey,
  );

  let response: TransportResponse;
  try {
    response = await transportSend({
      method: 'POST',
      url: url.toString(),
      headers: {
        'content-type': 'application/json; charset=UTF-8',
        'client-id': stored.client_id,
        'request-time': requestTime,
        signature: formatSignatureHeader(signature, stored.key_version),
      },
      body,
      timeoutMs,
      publicOnly: account.publicOnly,
    });
  } catch (error) {
    if (error instanceof TransportError)
      return { answered: false, reason: error.message, reached: error.reached };
    return { answered: false, reason: (error as Error).message, reached: true };
  }
  if (response.status !== 200) {
    return { answered: false, reason: `HTTP ${response.status} from Antom ${operation}`, reached: true };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(response.body.toString('utf8'));
  } catch {
    return untrusted(`unparseable ${operation} response body`);
  }
  const result = isRecord(parsed) ? resultOf(parsed) : undefined;
  if (!isRecord(parsed) || !result) {
    return untrusted(`${operation} response has no result object`);
  }
  const judged = judge(account, path, response.headers, response.body, parsed, result);
  // Antom signs every merchant's answers with its one key: the signature proves an answer is
  // Antom's, not that it answers this request; its request id (and client id, in judge) must be ours.
  for (const field of ['paymentRequestId', 'refundRequestId'] as const) {
    const sent = payload[field];
    const answered = parsed[field];
    if (judged.answered && typeof sent === 'string' && typeof answered === 'string' && answered !== sent)
      return untrusted(`${operation} answer is for ${field} ${answered}, not ${sent}`);
  }
  return judged;
}

/** An HTTP 200 from Antom whose content we cannot read or trust. */
const untrusted = (reason: string): SendResult => ({
  answered: false,
  reason,
  reached: true,
  responded: true,
});

function judge(
  account: AlipayAccount,
  path: string,
  headers: IncomingHttpHeaders,
  raw: Buffer,
  body: Json,
  result: AntomResult,
): SendResult {
  const signature = header(headers, 'signature');
  const responseTime = header(headers, 'response-time');
  const clientId = header(headers, 'client-id');
  const unsigned = signature === undefined && responseTime === undefined;
  if (unsigned) {
    if (result.resultStatus === 'F' || result.resultStatus === 'U')
      return { answered: true, result, body, signed: false };
    return untrusted(`unsigned ${result.resultStatus} response is not trusted`);
  }
  if (signature === undefined || responseTime === undefined || clientId === undefined) {
    return untrusted('response carries only part of the signature headers');
  }
  if (clientId !== account.stored.client_id) return untrusted(`response is for client ${clientId}`);
  const verified = verifySignatureHeader(
    { path, clientId, time: responseTime, body: raw },
    signature,
    account.alipayPublicKeys,
  );
  if (!verified) return untrusted('response signature does not verify');
  return { answered: true, result, body, signed: true };
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}
