/**
 * Scale-out: two API processes and a separate worker process against one database and one
 * Redis. A payment created on one API process is long-polled on the other and woken by a
 * callback arriving on either.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import supertest from 'supertest';
import type { SimulatorHandle } from '../adapters/contract.ts';
import { sandboxSecret, signSandbox } from '../adapters/sandbox/protocol.ts';
import { startSandboxSimulator } from '../adapters/sandbox/simulator.ts';
import { loadConfig } from '../src/config.ts';
import { createQueues } from '../src/jobs/queues.ts';
import { deriveSecret } from '../src/secrets.ts';
import {
  databaseUrl,
  discardEnvironment,
  eventually,
  FINAL,
  freePort,
  idempotencyKey,
  qrPayment,
  scanPayment,
  TcpRelay,
  testEnvironment,
} from './helpers.ts';

const children: ChildProcess[] = [];
let simulator: SimulatorHandle;
let dbName: string;
let api1: ReturnType<typeof supertest>;
let api2: ReturnType<typeof supertest>;
let worker: ReturnType<typeof supertest>;
let adminKey: string;
let seed: Buffer;

function startProcess(env: NodeJS.ProcessEnv, role: string, port: number): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, ...env, TILLBRIDGE_ROLE: role, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr?.on('data', (d) => process.stderr.write(`[${role}:${port}] ${d}`));
  // Read, or a full pipe would stall the process; a test may listen to it too.
  child.stdout?.resume();
  children.push(child);
  return child;
}

/** Waits for the process behind `api` to answer /readyz with 200. */
async function ready(api: ReturnType<typeof supertest>, what: string): Promise<void> {
  await eventually(
    async () => (await api.get('/readyz').catch(() => ({ status: 0 }))).status === 200,
    30_000,
    what,
  );
}

/** SIGTERM to each process still running, and wait for all of them to exit. */
async function stopProcesses(processes: ChildProcess[]): Promise<void> {
  await Promise.all(
    processes.map(
      (child) =>
        new Promise<void>((resolve) => {
          // Exited, or ended by a signal (a kill -9 leaves no exit code).
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        }),
    ),
  );
}

before(async () => {
  const [port1, port2, workerPort] = [await freePort(), await freePort(), await freePort()];
  const environment = testEnvironment({ PUBLIC_BASE_URL: `http://127.0.0.1:${port1}` });
  dbName = environment.dbName;
  const config = loadConfig(environment.env);
  seed = deriveSecret(config.masterKey, 'sandbox-seed');
  simulator = await startSandboxSimulator({ seed, latency_ms: 0, time_scale: 0.3 });
  const env = { ...environment.env, SANDBOX_SIMULATOR_URL_SANDBOX: simulator.url };
  adminKey = config.adminApiKey;
  // The first process creates and migrates the database; the others find it ready.
  startProcess(env, 'api', port1);
  api1 = supertest(`http://127.0.0.1:${port1}`);
  await ready(api1, 'api 1');
  startProcess(env, 'api', port2);
  startProcess(env, 'worker', workerPort);
  worker = supertest(`http://127.0.0.1:${workerPort}`);
  api2 = supertest(`http://127.0.0.1:${port2}`);
  await ready(api2, 'api 2');
});

after(async () => {
  await stopProcesses(children);
  await simulator?.close();
  await discardEnvironment(dbName);
});

/** A merchant with a sandbox account for Alipay, set up through `api` with the admin key `admin`. */
async function sandboxMerchant(api: ReturnType<typeof supertest>, admin: string, name: string) {
  const merchant = await api
    .post('/v1/admin/merchants')
    .set('Authorization', `Bearer ${admin}`)
    .send({ name, settlement_currency: 'EUR', country: 'DE' })
    .expect(201);
  const sk = merchant.body.secret_key as string;
  const account = await api
    .put('/v1/providers/sandbox')
    .set('Authorization', `Bearer ${sk}`)
    .send({ wallets: ['alipay'] })
    .expect(201);
  return { sk, accountId: account.body.id as string };
}

const merchantKeys = (api: ReturnType<typeof supertest>) => sandboxMerchant(api, adminKey, 'Scale');

describe('two API processes and a worker', () => {
  test('the worker serves its health and metrics, and every process shows the queues', async () => {
    await ready(worker, 'the worker ready');
    const own = await worker.get('/metrics').expect(200);
    assert.match(own.text, /^tillbridge_queue_jobs\{queue="maintenance",state="\w+"\} \d+/m);
    assert.match(own.text, /^# TYPE tillbridge_reconciliation_lines_total counter/m);
    // An API process counts the queues when scraped, though it runs none of their jobs.
    const api = await api2.get('/metrics').expect(200);
    assert.match(api.text, /^tillbridge_queue_jobs\{queue="resolve",state="waiting"\} \d+/m);
    // The worker serves nothing of the API.
    const elsewhere = await worker.get('/v1/payments').expect(404);
    assert.equal(elsewhere.body.error.code, 'route_missing');
    // In the API's error shape, with a Request-Id on every answer (API.md), as the API's own.
    assert.equal(elsewhere.body.error.request_id, elsewhere.headers['request-id']);
    assert.match((await worker.get('/healthz').expect(200)).headers['request-id'], /^req_/);
  });

  test('a terminal key revoked on API 1 stops working on API 2 at once, though API 2 had it cached', async () => {
    const { sk } = await merchantKeys(api1);
    const terminal = await api1
      .post('/v1/terminals')
      .set('Authorization', `Bearer ${sk}`)
      .send({ store_id: 'berlin-01', terminal_id: 'till-9' })
      .expect(201);
    const key = terminal.body.terminal_key as string;
    // API 2 looks the key up and keeps it for up to 10 s.
    await api2.get('/v1/payments').set('Authorization', `Bearer ${key}`).expect(200);
    await api1
      .delete(`/v1/terminals/${terminal.body.id}/key`)
      .set('Authorization', `Bearer ${sk}`)
      .expect(200);
    await eventually(
      async () => (await api2.get('/v1/payments').set('Authorization', `Bearer ${key}`)).status === 401,
      2_000,
      'the revoked key refused on API 2',
    );
  });

  test('a QR payment created on API 1 is long-polled on API 2 and woken by the callback that reaches API 1', async () => {
    const { sk } = await merchantKeys(api1);
    const created = await api1
      .post('/v1/payments')
      .set('Authorization', `Bearer ${sk}`)
      .set('Idempotency-Key', idempotencyKey())
      .send(qrPayment(2500))
      .expect(201);
    assert.equal(created.body.status, 'requires_customer');
    const started = Date.now();
    const polled = api2
      .get(`/v1/payments/${created.body.id}?wait=30`)
      .set('Authorization', `Bearer ${sk}`)
      .then((r) => r);
    await new Promise((r) => setTimeout(r, 500));
    const paid = await fetch(created.body.qr_code.data, { method: 'POST' });
    assert.equal(paid.status, 200);
    const res = await polled;
    assert.equal(res.body.status, 'succeeded');
    assert.ok(Date.now() - started < 10_000);
  });

  test('a callback arriving on API 2 wakes a till long-polling on API 1', async () => {
    const { sk, accountId } = await merchantKeys(api2);
    const created = await api2
      .post('/v1/payments')
      .set('Authorization', `Bearer ${sk}`)
      .set('Idempotency-Key', idempotencyKey())
      .send(scanPayment(2557, { reference: 'R-SCALE-2' }))
      .expect(201);
    assert.equal(created.body.status, 'processing');
    const polled = api1
      .get(`/v1/payments/${created.body.id}?wait=30`)
      .set('Authorization', `Bearer ${sk}`)
      .then((r) => r);
    await new Promise((r) => setTimeout(r, 500));
    const body = JSON.stringify({
      notification_id: `ntf_scale_${created.body.id}`,
      type: 'payment',
      payment: { request_id: created.body.id, status: 'succeeded', transaction_id: 'sbx_scale' },
    });
    const started = Date.now();
    await api2
      .post(`/webhooks/sandbox/${accountId}`)
      .set('Content-Type', 'application/json')
      .set('Sandbox-Signature', signSandbox(sandboxSecret(seed), body))
      .send(body)
      .expect(200);
    const res = await polled;
    assert.equal(res.body.status, 'succeeded');
    assert.ok(Date.now() - started < 5000, 'woken through Redis pub/sub, not by the timeout');
  });

  test('payments resolved by the separate worker reach one final state each, with one transition', async () => {
    const { sk } = await merchantKeys(api1);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      const api = i % 2 ? api2 : api1;
      const res = await api
        .post('/v1/payments')
        .set('Authorization', `Bearer ${sk}`)
        .set('Idempotency-Key', idempotencyKey())
        .send(scanPayment(i % 2 ? 2052 : 2054, { reference: `R-SCALE-W${i}` }))
        .expect(201);
      ids.push(res.body.id);
    }
    for (const id of ids) {
      const done = await eventually(
        async () => {
          const res = await api2.get(`/v1/payments/${id}`).set('Authorization', `Bearer ${sk}`);
          return res.body.status === 'succeeded' ? res.body : undefined;
        },
        30_000,
        `payment ${id}`,
      );
      assert.equal(done.status, 'succeeded');
    }
    const client = new pg.Client({ connectionString: databaseUrl(dbName) });
    await client.connect();
    try {
      const { rows } = await client.query<{ payment_id: string; n: number }>(
        "SELECT payment_id, count(*)::int AS n FROM payment_events WHERE to_status = 'succeeded' AND payment_id = ANY($1) GROUP BY payment_id",
        [ids],
      );
      assert.equal(rows.length, ids.length);
      for (const row of rows)
        assert.equal(row.n, 1, `payment ${row.payment_id} moved to succeeded ${row.n} times`);
      // Each scheduled resolution job asks the provider at most once: never more inquiries than jobs.
      const { rows: steps } = await client.query<{ id: string; poll_step: number; amount_value: number }>(
        'SELECT id, poll_step, amount_value FROM payments WHERE id = ANY($1)',
        [ids],
      );
      for (const payment of steps) {
        const res = await fetch(`${simulator.url}/_sim/calls/${payment.id}`);
        const calls = (await res.json()) as Record<string, number>;
        const inquiries = calls['/v1/inquire'] ?? 0;
        assert.ok(
          inquiries <= payment.poll_step,
          `${payment.id}: ${inquiries} inquiries for ${payment.poll_step} jobs`,
        );
        if (payment.amount_value % 100 === 54)
          assert.ok(inquiries >= 1, 'a payment with no answer is found by inquiry');
        assert.equal(calls['/v1/pay'], 1, 'the payment was sent once');
      }
    } finally {
      await client.end();
    }
  });
});

describe('an api and a worker process started at once', () => {
  test('on a fresh database, both start, and a sale whose first answer was a 5xx (55) is resolved', async () => {
    const [apiPort, workerPort] = [await freePort(), await freePort()];
    const environment = testEnvironment({ PAYMENT_RESOLUTION_WINDOW_S: '30' });
    const processes = [
      startProcess(environment.env, 'api', apiPort),
      startProcess(environment.env, 'worker', workerPort),
    ];
    try {
      const api = supertest(`http://127.0.0.1:${apiPort}`);
      for (const port of [apiPort, workerPort])
        await ready(supertest(`http://127.0.0.1:${port}`), `process on ${port}`);
      const admin = `Bearer ${loadConfig(environment.env).adminApiKey}`;
      for (const provider of ['sandbox', 'alipay']) {
        const merchant = await api
          .post('/v1/admin/merchants')
          .set('Authorization', admin)
          .send({ name: `Split ${provider}`, settlement_currency: 'EUR', country: 'DE' })
          .expect(201);
        const sk = `Bearer ${merchant.body.secret_key}`;
        await api
          .put(`/v1/providers/${provider}`)
          .set('Authorization', sk)
          .send(provider === 'sandbox' ? { wallets: ['alipay'] } : { sandbox: true, wallets: ['alipay'] })
          .expect(201);
        const created = await api
          .post('/v1/payments')
          .set('Authorization', sk)
          .set('Idempotency-Key', idempotencyKey())
          .send(scanPayment(2055))
          .expect(201);
        assert.equal(created.body.status, 'processing', provider);
        const done = await eventually(
          async () => {
            const res = await api.get(`/v1/payments/${created.body.id}`).set('Authorization', sk);
            return FINAL.includes(res.body.status) ? res.body : undefined;
          },
          25_000,
          `the ${provider} sale`,
        );
        assert.equal(done.status, 'succeeded', provider);
      }
    } finally {
      await stopProcesses(processes);
      await discardEnvironment(environment.dbName);
    }
  });
});

describe('a worker killed while it checks a sale', () => {
  test('the sale is resolved by the next worker within seconds, not after a minute of its job locked by the dead one', async () => {
    const [apiPort, workerPort, relayPort] = [await freePort(), await freePort(), await freePort()];
    const environment = testEnvironment({ PAYMENT_RESOLUTION_WINDOW_S: '60' });
    const seedOf = deriveSecret(loadConfig(environment.env).masterKey, 'sandbox-seed');
    const provider = await startSandboxSimulator({ seed: seedOf, latency_ms: 0, time_scale: 0.3 });
    // The worker reaches the simulator through a relay that can hold its calls unanswered.
    const relay = new TcpRelay(relayPort, new URL(provider.url));
    await relay.open();
    const env = { ...environment.env, SANDBOX_SIMULATOR_URL_SANDBOX: provider.url };
    const workerEnv = { ...env, SANDBOX_SIMULATOR_URL_SANDBOX: `http://127.0.0.1:${relayPort}` };
    const processes = [startProcess(env, 'api', apiPort)];
    try {
      const api = supertest(`http://127.0.0.1:${apiPort}`);
      await ready(api, 'api');
      const first = startProcess(workerEnv, 'worker', workerPort);
      processes.push(first);
      await ready(supertest(`http://127.0.0.1:${workerPort}`), 'worker');
      const sk = `Bearer ${(await sandboxMerchant(api, loadConfig(environment.env).adminApiKey, 'Crash')).sk}`;
      relay.stall();
      // No answer to the sale (54): the worker's check of it hangs at the provider, and dies there.
      const created = await api
        .post('/v1/payments')
        .set('Authorization', sk)
        .set('Idempotency-Key', idempotencyKey())
        .send(scanPayment(2054))
        .expect(201);
      assert.equal(created.body.status, 'processing');
      await eventually(async () => relay.connections > 0 || undefined, 20_000, "the worker's check");
      const killed = new Promise((resolve) => first.once('exit', resolve));
      first.kill('SIGKILL');
      await killed;
      relay.resume();
      processes.push(startProcess(workerEnv, 'worker', await freePort()));
      const done = await eventually(
        async () => {
          const res = await api.get(`/v1/payments/${created.body.id}`).set('Authorization', sk);
          return res.body.status === 'processing' ? undefined : res.body;
        },
        25_000,
        'the sale, after the crash',
      );
      assert.equal(done.status, 'succeeded');
    } finally {
      await stopProcesses(processes);
      await relay.cut();
      await provider.close();
      await discardEnvironment(environment.dbName);
    }
  });
});

describe('graceful shutdown', () => {
  /** A gateway process of `role` with a merchant on the sandbox provider; its stdout kept. */
  async function gatewayWithMerchant(role: string, env: Record<string, string> = {}) {
    const port = await freePort();
    // Errors logged, to tell a clean shutdown from one that cut work off.
    const environment = testEnvironment({ PORT: String(port), LOG_LEVEL: 'error', ...env });
    const child = startProcess(environment.env, role, port);
    const output: string[] = [];
    child.stdout?.on('data', (d) => output.push(String(d)));
    const api = supertest(`http://127.0.0.1:${port}`);
    await ready(api, 'gateway');
    const sk = `Bearer ${(await sandboxMerchant(api, loadConfig(environment.env).adminApiKey, 'Stop')).sk}`;
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    /** Log lines at error level or above (pino's 50, 60). */
    const errors = () =>
      output
        .join('')
        .split('\n')
        .filter((line) => /"level":(5|6)\d/.test(line));
    return { child, environment, api, sk, exited, errors };
  }

  test('SIGTERM answers waiting tills at once, finishes in-flight requests and exits cleanly', async () => {
    const { child, environment, api, sk, exited } = await gatewayWithMerchant('all');
    try {
      const created = await api
        .post('/v1/payments')
        .set('Authorization', sk)
        .set('Idempotency-Key', idempotencyKey())
        .send(qrPayment(2600))
        .expect(201);
      assert.equal(created.body.status, 'requires_customer');
      const polled = api
        .get(`/v1/payments/${created.body.id}?wait=60`)
        .set('Authorization', sk)
        .then((r) => r);
      await new Promise((r) => setTimeout(r, 300));
      const started = Date.now();
      child.kill('SIGTERM');
      const res = await polled;
      assert.equal(res.status, 200);
      assert.equal(res.body.status, 'requires_customer', 'answered with the payment as it stands');
      assert.ok(Date.now() - started < 5000, 'not held for the wait');
      assert.equal(await exited, 0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await discardEnvironment(environment.dbName);
    }
  });

  test('SIGTERM stops the worker taking jobs at once: one queued while in-flight sales finish is left to a worker that stays', async () => {
    // Every provider call takes 2 s: the sale below is still in flight when the job is queued.
    const { child, environment, api, sk, exited, errors } = await gatewayWithMerchant('all', {
      SANDBOX_LATENCY_MS: '2000',
    });
    const config = loadConfig(environment.env);
    const queues = createQueues(config.redisUrl, config.redisPrefix);
    try {
      const sale = api
        .post('/v1/payments')
        .set('Authorization', sk)
        .set('Idempotency-Key', idempotencyKey())
        .send(scanPayment(2700))
        .then((r) => r);
      await new Promise((r) => setTimeout(r, 500));
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      // A check of nothing: a worker taking it would complete it at once.
      const job = await queues.resolve.add({});
      const res = await sale;
      assert.equal(res.status, 201, 'the sale in flight was answered');
      assert.equal(res.body.status, 'succeeded');
      assert.equal(await exited, 0);
      assert.equal(await job.getState(), 'waiting', 'left for a worker that stays');
      assert.deepEqual(errors(), []);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await queues.close();
      await discardEnvironment(environment.dbName);
    }
  });

  test('SIGTERM while a QR sale is held for its code answers the till with the sale as it stands, and exits without an error', async () => {
    // An api process alone: no worker inquires, so the code of a sale whose answer was lost (54)
    // never comes, and the create would be held for its code until the hold runs out.
    const { child, environment, api, sk, exited, errors } = await gatewayWithMerchant('api');
    try {
      const held = api
        .post('/v1/payments')
        .set('Authorization', sk)
        .set('Idempotency-Key', idempotencyKey())
        .send(qrPayment(2654))
        .then((r) => r);
      await new Promise((r) => setTimeout(r, 1000));
      const started = Date.now();
      child.kill('SIGTERM');
      const res = await held;
      assert.equal(res.status, 201);
      assert.equal(res.body.status, 'processing', 'the sale as it stands: created, no code yet');
      assert.ok(Date.now() - started < 3000, `answered ${Date.now() - started} ms after SIGTERM`);
      assert.equal(await exited, 0);
      assert.deepEqual(errors(), []);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await discardEnvironment(environment.dbName);
    }
  });
});
