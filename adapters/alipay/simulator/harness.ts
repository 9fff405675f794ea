/**
 * Test harness: a simulator, a sandbox account configured and re-loaded the way the core does it
 * (configure → JSON → load), and a webhook receiver that feeds notifications to the adapter. Used by
 * test/alipay-*.test.ts; not used by the gateway.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type {
  AccountContext,
  NotificationResult,
  PaymentRequest,
  RefundRequest,
  SandboxEnvironment,
} from '../../contract.ts';
import { alipayAdapter } from '../adapter.ts';
import type { AlipayAccount } from '../credentials.ts';
import { type AlipaySimulatorHandle, type AlipaySimulatorOptions, startAlipaySimulator } from './index.ts';

export interface Harness {
  sim: AlipaySimulatorHandle;
  env: SandboxEnvironment;
  account: AccountContext<AlipayAccount>;
  /** Every notification the receiver got, with what the adapter made of it. */
  received: NotificationResult[];
  /** How many more notifications the receiver answers with HTTP 500 before processing them. */
  failNext: { count: number };
  receiverUrl: string;
  close(): Promise<void>;
}

export const TEST_SEED = Buffer.from('tillbridge-alipay-test-seed-0001');

export async function startHarness(
  options: Partial<AlipaySimulatorOptions> & { input?: Record<string, unknown> } = {},
): Promise<Harness> {
  const seed = options.seed ?? TEST_SEED;
  // Tests share TEST_SEED: without an explicit choice, no journal, so test runs never share state.
  const state_file = 'state_file' in options ? options.state_file : null;
  const sim = await startAlipaySimulator({ latency_ms: 0, time_scale: 0.01, ...options, seed, state_file });
  const env: SandboxEnvironment = { seed, latency_ms: 0, simulatorUrl: async () => sim.url };
  const received: NotificationResult[] = [];
  const failNext = { count: 0 };
  const accountRef: { current?: AccountContext<AlipayAccount> } = {};
  const receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', async () => {
      if (failNext.count > 0) {
        failNext.count--;
        res.writeHead(500);
        res.end('busy');
        return;
      }
      const account = accountRef.current;
      if (!account) {
        res.writeHead(503);
        res.end();
        return;
      }
      const result = await alipayAdapter.handleNotification(account, {
        method: req.method ?? 'POST',
        path: req.url ?? '/',
        headers: req.headers,
        raw_body: Buffer.concat(chunks),
        received_at: new Date(),
      });
      received.push(result);
      res.writeHead(result.ack.status, result.ack.headers);
      res.end(result.ack.body);
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  const { credentials } = await alipayAdapter.configure({ sandbox: true, ...options.input }, env, 'pva_test');
  const notifyPath = '/webhooks/alipay/pva_test';
  accountRef.current = {
    account_id: 'pva_test',
    merchant_id: 'mer_test',
    credentials: alipayAdapter.load(JSON.parse(JSON.stringify(credentials)), env, { publicOnly: false }),
    sandbox: true,
    notify_url: `${receiverUrl}${notifyPath}`,
    notify_path: notifyPath,
  };
  return {
    sim,
    env,
    account: accountRef.current,
    received,
    failNext,
    receiverUrl,
    close: async () => {
      receiver.closeAllConnections();
      await new Promise<void>((resolve) => receiver.close(() => resolve()));
      await sim.close();
    },
  };
}

export function paymentRequest(overrides: Partial<PaymentRequest> = {}): PaymentRequest {
  const id = `pay_${randomBytes(8).toString('hex')}`;
  const now = new Date();
  return {
    payment_id: id,
    provider_request_id: id,
    amount: { value: 1999, currency: 'EUR' },
    mode: 'scan',
    wallet: 'alipay',
    payment_code: '286714335246118790',
    reference: 'R-0042-000123',
    description: 'Drugstore purchase',
    store_id: 'berlin-01',
    terminal_id: 'till-3',
    merchant_id: 'mer_test',
    created_at: now,
    expires_at: new Date(now.getTime() + 10 * 60_000),
    ...overrides,
  };
}

export function refundRequest(
  payment: PaymentRequest,
  overrides: Partial<RefundRequest> = {},
): RefundRequest {
  const id = `re_${randomBytes(8).toString('hex')}`;
  return {
    refund_id: id,
    provider_request_id: id,
    payment,
    amount: payment.amount,
    created_at: new Date(),
    ...overrides,
  };
}

/** Poll until `check` returns a value, or fail after `timeoutMs`. */
export async function eventually<T>(
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
