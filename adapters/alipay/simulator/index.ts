/**
 * The simulated Antom (alipay.md §15): a real HTTP server on 127.0.0.1 that speaks the AMS
 * in-store API, signs every answer, keeps per-paymentRequestId state, plays API.md's magic digits,
 * serves the Order Code wallet page, sends notifyPayment with Antom's retry schedule, and serves
 * settlement files. Its keys derive from the seed, so a restarted simulator trusts and is trusted
 * by sandbox accounts configured before the restart.
 */

import type { KeyObject } from 'node:crypto';
import http from 'node:http';
import type { SimulatorHandle, SimulatorOptions } from '../../contract.ts';
import { listenRemembered } from '../../simulator-port.ts';
import { normalisePublicKey, publicKeyObject } from '../keys.ts';
import { sandboxKeys } from '../sandbox-keys.ts';
import { formatSignatureHeader, isoTime, signBase64 } from '../signature.ts';
import { defaultJournalPath, Journal } from './journal.ts';
import { Ledger, type PaymentRecord } from './ledger.ts';
import { type DeliveryAttempt, Notifier } from './notifier.ts';
import { Renderer } from './render.ts';
import { createHandler, followUp, type ServerContext } from './server.ts';
import { applySwitches, DEFAULT_SWITCHES, type SimulatorSwitches } from './switches.ts';

export { NOTIFY_SCHEDULE_S } from './notifier.ts';
export type { SimulatorSwitches } from './switches.ts';

export interface AlipaySimulatorOptions extends SimulatorOptions {
  switches?: Partial<SimulatorSwitches>;
  /** Merchant clients besides the sandbox ones: client id → public key (PEM or base64). */
  clients?: Record<string, string>;
  /** Where the simulator remembers orders across restarts; default derived from the seed; null: nowhere. */
  state_file?: string | null;
}

export interface AlipaySimulatorHandle extends SimulatorHandle {
  /** Antom's public key (SPKI PEM): what a merchant pastes as `alipay_public_key`. */
  antomPublicKeyPem: string;
  /** The sandbox merchant key pair (derived from the seed). */
  sandboxMerchantPublicKeyPem: string;
  registerClient(clientId: string, publicKey: string): void;
  setSwitches(patch: Partial<SimulatorSwitches>): void;
  /** Snapshot of a payment, by paymentRequestId (any client) or paymentId. */
  payment(id: string): PaymentRecord | undefined;
  /** The customer scans and confirms an Order Code (what a POST to the wallet page does). */
  scan(paymentId: string): boolean;
  notifications: readonly DeliveryAttempt[];
  /** Sign a notification body the way the simulator does (for tests of forged/stale variants). */
  signNotification(
    path: string,
    clientId: string,
    body: string,
    requestTime?: string,
  ): Record<string, string>;
}

export async function startAlipaySimulator(options: AlipaySimulatorOptions): Promise<AlipaySimulatorHandle> {
  const keys = await sandboxKeys(options.seed);
  const switches: SimulatorSwitches = { ...DEFAULT_SWITCHES };
  applySwitches(switches, options.switches ?? {});
  const clients = new Map<string, KeyObject>();
  const registerClient = (clientId: string, publicKey: string) => {
    clients.set(clientId, publicKeyObject(normalisePublicKey(publicKey).pem));
  };
  for (const [clientId, key] of Object.entries(options.clients ?? {})) registerClient(clientId, key);

  const timeScale = options.time_scale;
  const stateFile = options.state_file === undefined ? defaultJournalPath(options.seed) : options.state_file;
  const journal = stateFile ? new Journal(stateFile) : undefined;
  const ledger = new Ledger(timeScale, journal);
  const headersFor = (path: string, clientId: string, body: string, requestTime?: string) => {
    const time = requestTime ?? (switches.epoch_time ? String(Date.now()) : isoTime(new Date()));
    const signature = signBase64({ path, clientId, time, body }, keys.antom.privateKey);
    return {
      'content-type': 'application/json; charset=UTF-8',
      'client-id': clientId,
      'request-time': time,
      signature: formatSignatureHeader(signature, '1', switches.raw_signature),
    };
  };
  const notifier = new Notifier({
    timeScale,
    headersFor: (path, clientId, body) => headersFor(path, clientId, body),
    noRetryOnMalformedAck: () => switches.no_retry_on_malformed_ack,
    duplicates: () => switches.duplicate_notifications,
  });
  let baseUrl = '';
  const ctx: ServerContext = {
    ledger,
    notifier,
    render: new Renderer(switches),
    switches,
    antomKey: keys.antom.privateKey,
    // Sandbox client ids (SANDBOX_…) all sign with the seed-derived sandbox merchant key.
    clientKey: (clientId) =>
      clients.get(clientId) ?? (clientId.startsWith('SANDBOX_') ? keys.merchant.publicKey : undefined),
    registerClient,
    baseUrl: () => baseUrl,
    timeScale,
    latencyMs: options.latency_ms,
    held: new Set(),
  };
  const server = http.createServer(createHandler(ctx));
  const port = await listenRemembered(server, stateFile ? `${stateFile}.port` : undefined, options.port);
  baseUrl = `http://127.0.0.1:${port}`;
  // Orders that were waiting when a previous simulator stopped decide (and notify) on time.
  for (const record of ledger.waiting()) followUp(ctx, record);

  return {
    url: baseUrl,
    antomPublicKeyPem: keys.antom.publicPem,
    sandboxMerchantPublicKeyPem: keys.merchant.publicPem,
    registerClient,
    setSwitches: (patch) => {
      applySwitches(switches, patch);
    },
    payment: (id) => {
      const record =
        ledger.paymentsById.get(id) ?? [...ledger.payments.values()].find((p) => p.paymentRequestId === id);
      if (record) ledger.settle(record);
      return record ? structuredClone(record) : undefined;
    },
    scan: (paymentId) => {
      const record = ledger.paymentsById.get(paymentId);
      if (!record || !ledger.scan(record, new Date())) return false;
      followUp(ctx, record);
      return true;
    },
    notifications: notifier.attempts,
    signNotification: (path, clientId, body, requestTime) => headersFor(path, clientId, body, requestTime),
    close: async () => {
      notifier.close();
      for (const timer of ctx.held) clearTimeout(timer);
      ctx.held.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await journal?.flush();
    },
  };
}
