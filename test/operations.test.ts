import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { hostname } from 'node:os';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import express from 'express';
import pg from 'pg';
import supertest from 'supertest';
import { isNonPublicAddress } from '../adapters/addresses.ts';
import { MAX_RESPONSE_BYTES, send } from '../adapters/transport.ts';
import { ConfigError, loadConfig } from '../src/config.ts';
import { createHttpServer, createOperationsApp } from '../src/http/app.ts';
import { createPool, inTransaction, isInfrastructureError } from '../src/ledger/db.ts';
import { createLogger } from '../src/logger.ts';
import { startGateway } from '../src/runtime.ts';
import { deliver } from '../webhooks/outbound.ts';
import {
  createPayment,
  createRefund,
  discardEnvironment,
  eventually,
  freePort,
  gatewayBehindPostgresRelay,
  idempotencyKey,
  type Merchant,
  PG_BASE,
  qrPayment,
  scanPayment,
  setupMerchant,
  startTestGateway,
  TcpRelay,
  type TestGateway,
  testEnvironment,
} from './helpers.ts';

let tg: TestGateway;
let merchant: Merchant;

before(async () => {
  tg = await startTestGateway();
  merchant = await setupMerchant(tg);
});
after(() => tg.stop());

describe('operations endpoints', () => {
  test('/healthz and /readyz', async () => {
    assert.equal((await tg.http.get('/healthz').expect(200)).body.status, 'ok');
    const ready = await tg.http.get('/readyz').expect(200);
    assert.deepEqual(ready.body, { status: 'ready', postgres: true, redis: true });
  });

  test('a PostgreSQL that stops answering makes /readyz 503 at once, and does not hold a stop for ever', async () => {
    const { gateway, relay, dbName } = await gatewayBehindPostgresRelay();
    try {
      const api = supertest(gateway.url);
      await api.get('/readyz').expect(200);
      relay.stall();
      const started = Date.now();
      const res = await api.get('/readyz');
      assert.equal(res.status, 503);
      assert.deepEqual(res.body, { status: 'unavailable', postgres: false, redis: true });
      assert.ok(Date.now() - started < 5_000, `answered after ${Date.now() - started} ms`);
      // A probe every second for as long as it lasts must not take the pool's connections one by one.
      const probes = await Promise.all(Array.from({ length: 25 }, () => api.get('/readyz')));
      assert.deepEqual(new Set(probes.map((probe) => probe.status)), new Set([503]));
      // The one ping still out, and what the worker's own ticks hold (20 without the waiting).
      assert.equal(gateway.ctx.db.waitingCount, 0);
      const held = gateway.ctx.db.totalCount - gateway.ctx.db.idleCount;
      assert.ok(held < 10, `${held} connections held while PostgreSQL does not answer`);
      // Answering again: ready again, although the ping it never answered is lost for good.
      relay.resume();
      await eventually(async () => (await api.get('/readyz')).status === 200, 20_000, 'ready again');
      const stopping = Date.now();
      await gateway.stop();
      assert.ok(Date.now() - stopping < 40_000, `stopped after ${Date.now() - stopping} ms`);
    } finally {
      await relay.cut();
      await discardEnvironment(dbName);
    }
  });

  test('a PostgreSQL that stops answering gets tills a 503 within DATABASE_QUERY_TIMEOUT_MS, not a request held for ever; they are served again once it answers', async () => {
    const { gateway, relay, dbName } = await gatewayBehindPostgresRelay({
      DATABASE_QUERY_TIMEOUT_MS: '1000',
    });
    try {
      const api = supertest(gateway.url);
      const shop = await setupMerchant({ http: api, adminKey: gateway.ctx.config.adminApiKey });
      const paid = await createPayment({ http: api }, shop.terminalKey, scanPayment(1000)).expect(201);
      const read = () =>
        api
          .get(`/v1/payments/${paid.body.id}`)
          .set('Authorization', `Bearer ${shop.terminalKey}`)
          .timeout(20_000);
      const saleKey = idempotencyKey();
      const sale = () =>
        createPayment({ http: api }, shop.terminalKey, scanPayment(1001), saleKey).timeout(20_000);

      // A request whose statements run in a transaction (a terminal's set-up).
      const addTerminal = (n: number) =>
        api
          .post('/v1/terminals')
          .set('Authorization', `Bearer ${shop.secretKey}`)
          .send({ store_id: 'berlin-01', terminal_id: `till-stall-${n}` })
          .timeout(20_000);

      // Connections already open, as on a gateway at work: the stall catches statements, not handshakes.
      await Promise.all(Array.from({ length: 20 }, read));
      relay.stall();
      const started = Date.now();
      // Sent now (a supertest request goes out when it is then'd), ahead of the reads, so that the
      // transactions hold pooled connections when the stall catches them.
      const first = [sale(), ...Array.from({ length: 5 }, (_, n) => addTerminal(n))].map((request) =>
        request.then(),
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      // More requests than the pool has connections: the ones beyond wait for a connection, not for ever.
      const answers = await Promise.all([...first, ...Array.from({ length: 20 }, read)]);
      const elapsed = Date.now() - started;
      for (const answer of answers) {
        assert.equal(answer.status, 503);
        assert.equal(answer.body.error.type, 'unavailable');
        assert.equal(answer.body.error.code, 'storage_unavailable');
        assert.equal(answer.headers['retry-after'], '1');
      }
      assert.ok(elapsed < 6_000, `answered after ${elapsed} ms`);
      // A key of a shape we never issue is refused without asking PostgreSQL: 401, not 503.
      for (const bogus of [
        'sk_nothing',
        `tk_${'a'.repeat(31)}`,
        `sk_${'b'.repeat(33)}`,
        `sk_${'-'.repeat(32)}`,
      ]) {
        const refused = await api.get('/v1/payments').set('Authorization', `Bearer ${bogus}`).timeout(3_000);
        assert.equal(refused.status, 401, bogus);
        assert.equal(refused.body.error.code, 'invalid_api_key');
      }

      // What was sent during the stall is lost for good; the connections that waited for it are
      // dropped, so the pool serves again as soon as PostgreSQL answers.
      relay.resume();
      for (const again of await Promise.all(Array.from({ length: 25 }, read))) {
        assert.equal(again.status, 200);
        assert.equal(again.body.status, 'succeeded');
      }
      assert.equal((await addTerminal(0)).status, 201);
      // The till's retry of the sale refused meanwhile, same key, takes it once.
      const retried = await eventually(
        async () => {
          const answer = await sale();
          return answer.status === 201 && answer;
        },
        35_000,
        'the sale taken on retry',
      );
      assert.equal(retried.body.status, 'succeeded');
      assert.equal((await sale()).headers['idempotent-replayed'], 'true');
    } finally {
      await gateway.stop();
      await relay.cut();
      await discardEnvironment(dbName);
    }
  });

  test('a statement held past DATABASE_QUERY_TIMEOUT_MS (a lock not released) is a 503, and stops on the server too', async () => {
    const slow = await startTestGateway({ DATABASE_QUERY_TIMEOUT_MS: '1000' });
    const locker = new pg.Client({ connectionString: slow.config.databaseUrl });
    try {
      const shop = await setupMerchant(slow);
      const paid = await createPayment(slow, shop.terminalKey, scanPayment(1000)).expect(201);
      await locker.connect();
      // An operator's migration, or a long transaction: the payments table locked for a while.
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE payments IN ACCESS EXCLUSIVE MODE');
      const started = Date.now();
      const read = await slow.http
        .get(`/v1/payments/${paid.body.id}`)
        .set('Authorization', `Bearer ${shop.terminalKey}`)
        .timeout(20_000);
      assert.equal(read.status, 503);
      assert.equal(read.body.error.code, 'storage_unavailable');
      assert.ok(Date.now() - started < 5_000, `answered after ${Date.now() - started} ms`);
      // Nothing of the gateway's still waits for the lock: what it gave up on does not run on later.
      const waiting = async () =>
        (
          await locker.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
          )
        ).rows[0].n;
      await eventually(async () => (await waiting()) === 0, 3_000, 'no statement waiting for the lock');
      await locker.query('ROLLBACK');
      const again = await slow.http
        .get(`/v1/payments/${paid.body.id}`)
        .set('Authorization', `Bearer ${shop.terminalKey}`);
      assert.equal(again.status, 200);
    } finally {
      await locker.end().catch(() => {});
      await slow.stop();
    }
  });

  test('a transaction that a stalled PostgreSQL cut short does not hand its connection to the next request', async () => {
    const relay = new TcpRelay(await freePort(), new URL(PG_BASE));
    await relay.open();
    const url = new URL(PG_BASE);
    url.host = `127.0.0.1:${relay.port}`;
    const pool = createPool(url.toString(), { max: 1, queryTimeoutMs: 500 });
    try {
      await pool.query('SELECT 1');
      relay.stall();
      await assert.rejects(
        inTransaction(pool, (client) => client.query('SELECT 1')),
        (error) => isInfrastructureError(error),
      );
      relay.resume();
      // The one connection held a statement PostgreSQL never received: this would wait behind it.
      assert.equal((await pool.query<{ n: number }>('SELECT 2 AS n')).rows[0].n, 2);
    } finally {
      await relay.cut();
      await pool.end().catch(() => {});
    }
  });

  test('an outage of PostgreSQL is logged by the outbox relay once when it starts and once when it ends', async () => {
    const { gateway, relay, dbName } = await gatewayBehindPostgresRelay();
    const messages: string[] = [];
    gateway.ctx.log = createLogger(
      'info',
      new Writable({
        write(chunk, _enc, done) {
          messages.push((JSON.parse(String(chunk)) as { msg: string }).msg);
          done();
        },
      }),
    );
    const relayLines = () => messages.filter((msg) => msg.startsWith('outbox relay'));
    try {
      await relay.cut();
      // The relay ticks every 250 ms: this outage fails it about eight times.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      await relay.open();
      await eventually(async () => relayLines().length === 2, 15_000);
      assert.deepEqual(relayLines(), [
        'outbox relay failed; retrying every tick, said again once it works',
        'outbox relay works again',
      ]);
    } finally {
      await gateway.stop();
      await relay.cut();
      await discardEnvironment(dbName);
    }
  });

  test('/metrics exposes request latency, payments by outcome and provider latency', async () => {
    await createPayment(tg, merchant.terminalKey, scanPayment(1000)).expect(201);
    // Refused before routing (no key): counted under its route, not as "unmatched", and never by its id.
    await tg.http.get('/v1/payments/pay_metricsWithoutKey').expect(401);
    // Nor a notification refused around the adapter (an undecodable body), whatever account it names.
    const unreadable = await tg.http
      .post(`/webhooks/sandbox/${merchant.accountId}`)
      .set('Content-Type', 'application/json')
      .set('Content-Encoding', 'gzip')
      .send('x');
    assert.equal(unreadable.status, 400, unreadable.text);
    await tg.http.post('/webhooks/sandbox/pva_metricsLabel').send('{}').expect(404);
    const res = await tg.http.get('/metrics').expect(200);
    assert.match(res.text, /route="\/v1\/payments\/:id",status="401"/);
    assert.doesNotMatch(res.text, /pay_metricsWithoutKey|pva_metricsLabel/);
    assert.ok(!res.text.includes(merchant.accountId));
    assert.match(res.text, /route="\/webhooks\/:provider\/:account",status="400"/);
    assert.match(res.text, /tillbridge_http_request_duration_seconds_bucket\{[^}]*route="\/v1\/payments"/);
    assert.match(res.text, /tillbridge_payments_total\{provider="sandbox",status="succeeded"\} [1-9]/);
    assert.match(
      res.text,
      /tillbridge_provider_call_duration_seconds_count\{provider="sandbox",operation="pay",outcome="succeeded"\} [1-9]/,
    );
    assert.match(res.text, /tillbridge_queue_jobs/);
  });

  test('/openapi.json is OpenAPI 3.1 with the request schemas that validate requests', async () => {
    const res = await tg.http.get('/openapi.json').expect(200);
    assert.equal(res.body.openapi, '3.1.0');
    const create = res.body.paths['/v1/payments'].post;
    const schema = create.requestBody.content['application/json'].schema;
    assert.deepEqual(schema.required.sort(), ['amount', 'mode', 'reference']);
    assert.equal(schema.additionalProperties, false);
    assert.ok(
      create.parameters.some(
        (p: { name: string; required: boolean }) => p.name === 'Idempotency-Key' && p.required,
      ),
    );
    // A refund's body may be left out: it refunds the rest.
    assert.equal(res.body.paths['/v1/payments/{id}/refunds'].post.requestBody.required, false);
    assert.equal(create.requestBody.required, true);
    // API.md: a list's limit defaults to 20.
    const limit = res.body.paths['/v1/payments'].get.parameters.find(
      (p: { name: string }) => p.name === 'limit',
    );
    assert.equal(limit.schema.default, 20);
    // API.md: every list takes limit and starting_after.
    type Operation = { parameters?: { name: string }[]; responses: Record<string, { content?: object }> };
    const lists = Object.entries(res.body.paths as Record<string, { get?: Operation }>).filter(([, item]) =>
      JSON.stringify(item.get?.responses['200']?.content ?? {}).includes('"#/components/schemas/List"'),
    );
    assert.ok(lists.length >= 10, `${lists.length} lists`);
    for (const [path, item] of lists)
      for (const name of ['limit', 'starting_after'])
        assert.ok(
          item.get?.parameters?.some((p) => p.name === name),
          `${path} documents ${name}`,
        );
    assert.ok(
      res.body.webhooks.event.post.parameters.some(
        (p: { name: string }) => p.name === 'Tillbridge-Signature',
      ),
    );
    // The objects answered are the ones documented: every field declared, every required one there.
    const schemas = res.body.components.schemas;
    const conforms = (object: Record<string, unknown>, name: string) => {
      const schema = schemas[name];
      for (const field of schema.required) assert.ok(field in object, `${name} lacks ${field}`);
      for (const field of Object.keys(object))
        assert.ok(field in schema.properties, `${name}.${field} is undocumented`);
    };
    conforms((await tg.http.get('/healthz').expect(200)).body, 'Health');
    conforms((await tg.http.get('/readyz').expect(200)).body, 'Readiness');
    assert.equal(
      res.body.paths['/readyz'].get.responses['503'].content['application/json'].schema.$ref,
      '#/components/schemas/Readiness',
    );
    const paid = await createPayment(tg, merchant.secretKey, scanPayment(2100)).expect(201);
    const documented = create.responses['201'].content['application/json'].schema.$ref;
    assert.equal(documented, '#/components/schemas/Payment');
    conforms(paid.body, 'Payment');
    conforms(paid.body.amount, 'Money');
    const refund = await createRefund(
      tg,
      merchant.secretKey,
      paid.body.id,
      { amount: { value: 100, currency: 'EUR' }, reason: 'returned' },
      `openapi-${paid.body.id}`,
    ).expect(201);
    conforms(refund.body, 'Refund');
    // The set-up objects, their keys and secrets shown once included.
    const admin = { Authorization: `Bearer ${tg.adminKey}` };
    const created = await tg.http
      .post('/v1/admin/merchants')
      .set(admin)
      .send({ name: 'Documented', settlement_currency: 'EUR', country: 'DE' })
      .expect(201);
    conforms(created.body, 'Merchant');
    const sk = { Authorization: `Bearer ${created.body.secret_key}` };
    conforms(
      (
        await tg.http
          .put('/v1/providers/sandbox')
          .set(sk)
          .send({ wallets: ['alipay'] })
          .expect(201)
      ).body,
      'ProviderAccount',
    );
    conforms(
      (await tg.http.post('/v1/terminals').set(sk).send({ store_id: 's', terminal_id: 't' }).expect(201))
        .body,
      'Terminal',
    );
    conforms(
      (
        await tg.http
          .post('/v1/webhook-endpoints')
          .set(sk)
          .send({ url: 'http://127.0.0.1:9/hook', events: ['payment.succeeded'] })
          .expect(201)
      ).body,
      'WebhookEndpoint',
    );
    // What a generated client needs: the replay's 200 and its header, errors typed, which key.
    const refundOp = res.body.paths['/v1/payments/{id}/refunds'].post;
    assert.equal(
      refundOp.responses['200'].content['application/json'].schema.$ref,
      '#/components/schemas/Refund',
    );
    assert.ok(refundOp.responses['200'].headers['Idempotent-Replayed']);
    assert.ok(refundOp.responses['201'].headers['Request-Id']);
    for (const code of ['400', '401', '404', '409', '422', '429'])
      assert.equal(
        refundOp.responses[code].content['application/json'].schema.$ref,
        '#/components/schemas/Error',
      );
    assert.deepEqual(refundOp.security, [{ secretKey: [] }, { terminalKey: [] }]);
    assert.deepEqual(res.body.paths['/v1/admin/merchants'].post.security, [{ adminKey: [] }]);
    const listed = res.body.paths['/v1/payments'].get.responses['200'].content['application/json'].schema;
    assert.deepEqual(listed.allOf[1].properties.data.items, { $ref: '#/components/schemas/Payment' });
    // The rules zod checks in code, and the configured maximum, are in the document too.
    assert.equal(schema.properties.amount.properties.value.maximum, tg.config.maxAmountMinor);
    assert.equal(schema.properties.metadata.maxProperties, 20);
    // What the refinements refuse, the document refuses too (JSON Schema patterns are unicode regexes).
    const refuses = (field: { pattern: string }, text: string) => !new RegExp(field.pattern, 'u').test(text);
    assert.ok(refuses(schema.properties.reference, '   ') && !refuses(schema.properties.reference, 'till 7'));
    assert.ok(schema.properties.amount.properties.currency.enum.includes('EUR'));
    assert.ok(!schema.properties.amount.properties.currency.enum.includes('ZZZ'));
    const merchantBody =
      res.body.paths['/v1/admin/merchants'].post.requestBody.content['application/json'].schema;
    assert.ok(merchantBody.properties.country.enum.includes('DE'));
    assert.ok(!merchantBody.properties.country.enum.includes('XX'));
    const hookUrl =
      res.body.paths['/v1/webhook-endpoints'].post.requestBody.content['application/json'].schema.properties
        .url;
    for (const refused of ['ftp://example.com/x', 'https://user:pw@example.com/', 'http://:80/'])
      assert.ok(refuses(hookUrl, refused), refused);
    assert.ok(!refuses(hookUrl, 'https://shop.example/hooks?x=1'));
    const ids = Object.values(res.body.paths).flatMap((ops) =>
      Object.values(ops as Record<string, { operationId: string }>).map((o) => o.operationId),
    );
    assert.equal(new Set(ids).size, ids.length);
  });

  test('each request is one log line at info, carrying the Request-Id the till was answered with', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const quiet = tg.gateway.ctx.log;
    tg.gateway.ctx.log = createLogger('info', sink);
    try {
      const created = await createPayment(tg, merchant.terminalKey, scanPayment(1000)).expect(201);
      const missing = await tg.http
        .get('/v1/payments/pay_nothere')
        .set('Authorization', `Bearer ${merchant.secretKey}`);
      const probe = await tg.http.get('/healthz').expect(200);
      await eventually(async () => lines.length >= 2);
      const logged = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
      const lineOf = (requestId: string) => logged.find((line) => line.request_id === requestId);
      assert.deepEqual(
        { ...lineOf(String(created.headers['request-id'])), time: 0, pid: 0, hostname: '', ms: 0 },
        {
          level: 30,
          time: 0,
          pid: 0,
          hostname: '',
          service: 'tillbridge',
          request_id: created.headers['request-id'],
          method: 'POST',
          route: '/v1/payments',
          status: 201,
          ms: 0,
          msg: 'request',
        },
      );
      assert.equal(lineOf(String(missing.headers['request-id']))?.status, 404);
      assert.equal(typeof lineOf(String(missing.headers['request-id']))?.ms, 'number');
      // Health probes, every few seconds, stay out of the info log.
      assert.equal(lineOf(String(probe.headers['request-id'])), undefined);
      // A till that gives up waiting (its request may yet do what it asked) is logged too.
      const shown = await createPayment(tg, merchant.terminalKey, qrPayment(1000)).expect(201);
      await assert.rejects(
        tg.http
          .get(`/v1/payments/${shown.body.id}?wait=30`)
          .set('Authorization', `Bearer ${merchant.terminalKey}`)
          .timeout(300),
      );
      const givenUp = await eventually(async () =>
        lines.map((line) => JSON.parse(line) as Record<string, unknown>).find((line) => line.status === 499),
      );
      assert.equal(givenUp.method, 'GET');
      assert.equal(givenUp.route, '/v1/payments/:id');
      assert.match(String(givenUp.request_id), /^req_/);
    } finally {
      tg.gateway.ctx.log = quiet;
    }
  });

  test('unknown routes answer 404 in the error shape', async () => {
    const res = await tg.http
      .get('/v1/nothing-here')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(404);
    assert.equal(res.body.error.type, 'not_found');
    const undecodable = await tg.http
      .get('/v1/payments/%ff')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(400);
    assert.equal(undecodable.body.error.code, 'invalid_path');
    // A NUL byte, whichever route the path would reach and however its id begins.
    for (const path of [
      '/v1/payments/%00',
      '/v1/payments/pay_%00',
      '/v1/settlements/%00',
      '/v1/refunds/%00',
    ]) {
      const nul = await tg.http.get(path).set('Authorization', `Bearer ${merchant.secretKey}`).expect(400);
      assert.equal(nul.body.error.code, 'invalid_path', path);
    }
  });

  test("a worker's operations port answers its own failures in the error shape too, with a Request-Id", async () => {
    const { ctx } = tg.gateway;
    const worker = supertest(createOperationsApp(ctx));
    const missing = await worker.get('/v1/payments').expect(404);
    assert.equal(missing.body.error.code, 'route_missing');
    const metrics = ctx.metrics.registry.metrics.bind(ctx.metrics.registry);
    ctx.metrics.registry.metrics = () => Promise.reject(new Error('a collector broke'));
    try {
      const broken = await worker.get('/metrics').expect(500);
      assert.equal(broken.body.error.code, 'internal_error');
      assert.equal(broken.body.error.request_id, broken.headers['request-id']);
    } finally {
      ctx.metrics.registry.metrics = metrics;
    }
  });

  test('providers API.md names but this gateway has not built are refused as not supported, unknown ones as unknown', async () => {
    const auth = { Authorization: `Bearer ${merchant.secretKey}` };
    for (const provider of ['wechatpay', 'stripe']) {
      const put = await tg.http
        .put(`/v1/providers/${provider}`)
        .set(auth)
        .send({ sandbox: true })
        .expect(422);
      assert.equal(put.body.error.code, 'provider_not_supported');
      assert.match(put.body.error.message, /not supported by this gateway yet/);
      const upload = await tg.http
        .post(`/v1/settlements/imports?provider=${provider}`)
        .set(auth)
        .set('Content-Type', 'text/csv')
        .send('a,b\n')
        .expect(422);
      assert.equal(upload.body.error.code, 'provider_not_supported');
      const listed = await tg.http
        .get(`/v1/reconciliation/discrepancies?provider=${provider}`)
        .set(auth)
        .expect(200);
      assert.deepEqual(listed.body.data, []);
    }
    await tg.http.put('/v1/providers/paypal').set(auth).send({ sandbox: true }).expect(404);
    const unknown = await tg.http
      .get('/v1/reconciliation/discrepancies?provider=paypal')
      .set(auth)
      .expect(400);
    assert.equal(unknown.body.error.code, 'provider_unknown');
  });

  test('a request Node would answer itself (refused by its parser, no Host, CONNECT) is answered in the error shape, with a Request-Id', async () => {
    const { hostname, port } = new URL(tg.url);
    // Sent whole and half-closed, unless the request says Connection: close (Node drops a request
    // still being served when the client half-closes).
    const raw = (request: string, halfClose = true) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), hostname, () =>
          halfClose ? socket.end(request) : socket.write(request),
        );
        let answer = '';
        socket.on('data', (chunk) => {
          answer += chunk;
        });
        socket.on('end', () => resolve(answer));
        socket.on('error', reject);
      });
    for (const request of [
      `POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\u0001b\r\nContent-Length: 0\r\n\r\n`,
      `GET /v1/payments HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`,
      'GET /v1/payments HTTP/1.1\r\n\r\n',
      'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
    ]) {
      const answer = await raw(request);
      const [head, body] = answer.split('\r\n\r\n');
      assert.match(head, /^HTTP\/1\.1 400 /);
      const requestId = /\r\nRequest-Id: (req_\S+)/i.exec(head)?.[1];
      assert.ok(requestId, head);
      const error = JSON.parse(body).error;
      assert.equal(error.type, 'invalid_request');
      assert.equal(error.request_id, requestId);
    }
    // An expectation the gateway does not know is ignored (RFC 9110 allows it), not a bare 417.
    const expecting = await raw(
      `GET /v1/payments HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nAuthorization: Bearer ${merchant.secretKey}\r\nConnection: close\r\n\r\n`,
      false,
    );
    assert.match(expecting, /^HTTP\/1\.1 200 /);
    assert.match(expecting, /\r\nRequest-Id: req_/i);
    assert.ok(JSON.parse(expecting.split('\r\n\r\n')[1]).data);
  });

  test('a CONNECT client that keeps its side open after the answer is cut off, not left holding a socket (or a stop)', async () => {
    const server = createHttpServer(express());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const lingering = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () =>
      lingering.write('CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n'),
    );
    let answer = '';
    lingering.on('data', (chunk) => {
      answer += chunk;
    });
    await new Promise((resolve) => lingering.once('end', resolve));
    assert.match(answer, /^HTTP\/1\.1 400 /);
    // Closing waits for every connection: it ends only once the gateway has let this one go.
    const closed = await new Promise<boolean>((resolve) => {
      server.close(() => resolve(true));
      setTimeout(() => resolve(false), 5_000);
    });
    lingering.destroy();
    server.closeAllConnections();
    assert.ok(closed, 'the server let the connection go');
  });

  test('the rate limit per key answers 429 with Retry-After', async () => {
    const limited = await startTestGateway({ RATE_LIMIT_PER_KEY_RPS: '5' });
    try {
      const shop = await setupMerchant(limited);
      const results = await Promise.all(
        Array.from({ length: 20 }, () =>
          limited.http.get('/v1/payments').set('Authorization', `Bearer ${shop.secretKey}`),
        ),
      );
      const refused = results.filter((r) => r.status === 429);
      assert.ok(refused.length >= 10, `429s: ${refused.length}`);
      assert.equal(refused[0].headers['retry-after'], '1');
      assert.equal(refused[0].body.error.type, 'rate_limited');
    } finally {
      await limited.stop();
    }
  });
});

describe("the gateway's own requests", () => {
  test('an answer longer than 1 MiB (a provider endpoint or webhook URL streaming for ever) is cut off, not held', async () => {
    let closed = false;
    const endless = http.createServer((_req, res) => {
      const piece = Buffer.alloc(64 * 1024, 'x');
      const more = () => {
        while (!res.destroyed && res.write(piece)) {}
      };
      res.on('drain', more);
      res.on('close', () => {
        closed = true;
      });
      more();
    });
    await new Promise<void>((resolve) => endless.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(endless.address() as AddressInfo).port}/`;
      const before = process.memoryUsage().rss;
      await assert.rejects(
        send({ method: 'POST', url, body: '{}', timeoutMs: 10_000 }),
        new RegExp(`the answer is longer than ${MAX_RESPONSE_BYTES} bytes`),
      );
      await eventually(async () => closed || undefined, 5_000, 'the connection dropped');
      assert.ok(process.memoryUsage().rss - before < 64 << 20, 'the answer was not kept');
    } finally {
      endless.closeAllConnections();
      endless.close();
    }
  });
});

describe('secrets stay secret', () => {
  test('payment codes and keys are masked in logs', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const serviceLog = createLogger('info', sink);
    serviceLog.info(
      {
        payment_code: '286714335246118790',
        req: { headers: { authorization: 'Bearer sk_secret' } },
        body: { private_key: 'PEM' },
      },
      'x',
    );
    const text = lines.join('');
    assert.ok(!text.includes('286714335246118790'));
    assert.ok(!text.includes('sk_secret'));
    assert.ok(!text.includes('PEM'));
    assert.match(text, /\[redacted\]/);
  });

  test('provider credentials are stored encrypted and never echoed', async () => {
    const { rows } = await tg.gateway.ctx.db.query<{ credentials: Buffer }>(
      'SELECT credentials FROM provider_accounts WHERE id = $1',
      [merchant.accountId],
    );
    assert.ok(!rows[0].credentials.toString('utf8').includes('sandbox'), 'sealed, not plain JSON');
    const list = await tg.http
      .get('/v1/providers')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.equal(list.body.data[0].webhook_url, `/webhooks/sandbox/${merchant.accountId}`);
    assert.equal(list.body.data[0].credentials, undefined);
    // One account by its provider, as the list shows it (an addition to API.md).
    const one = await tg.http
      .get('/v1/providers/sandbox')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
    assert.deepEqual(one.body, list.body.data[0]);
    const none = await tg.http
      .get('/v1/providers/alipay')
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(404);
    assert.equal(none.body.error.type, 'not_found');
  });

  test('API keys are stored only as hashes', async () => {
    const { rows } = await tg.gateway.ctx.db.query<{ key_hash: Buffer; key_hint: string }>(
      'SELECT key_hash, key_hint FROM api_keys',
    );
    for (const row of rows) {
      assert.equal(row.key_hash.length, 32);
      assert.ok(!row.key_hint.includes(merchant.secretKey));
    }
  });
});

describe('start-up', () => {
  /** `npm start` as a newcomer runs it: the walk-through it prints, and a way to stop it. */
  async function startMain(env: NodeJS.ProcessEnv): Promise<{ printed: string; stop(): Promise<void> }> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      env: { PATH: process.env.PATH, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let printed = '';
    child.stdout.on('data', (chunk: Buffer) => {
      printed += chunk.toString();
    });
    try {
      await eventually(
        async () => printed.includes('Amounts ending') || undefined,
        30_000,
        'the walk-through',
      );
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    }
    return {
      printed,
      stop: async () => {
        child.kill('SIGTERM');
        await exited;
      },
    };
  }

  /** The copy-paste commands of the walk-through, run as printed; what the last one answers. */
  function runWalkthrough(printed: string, env: NodeJS.ProcessEnv = {}): string {
    const commands = printed.slice(
      printed.indexOf('needs curl and jq):') + 19,
      printed.indexOf('Amounts ending'),
    );
    const run = spawnSync('bash', ['-e', '-c', commands], {
      env: { PATH: process.env.PATH, ...env },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(run.status, 0, run.stderr);
    return run.stdout;
  }

  test('npm start prints a walk-through that works as printed; an admin key the operator set is not printed', async () => {
    for (const own of [false, true]) {
      const { env, dbName } = testEnvironment({ PORT: String(await freePort()) });
      const adminKey = env.ADMIN_API_KEY as string;
      if (!own) delete env.ADMIN_API_KEY;
      const gateway = await startMain(env);
      try {
        if (own) assert.equal(gateway.printed.includes(adminKey), false, 'the key set is not printed');
        else assert.match(gateway.printed, /Admin key: \S{16,} \(a new one at each start/);
        const answers = runWalkthrough(gateway.printed, own ? { ADMIN_API_KEY: adminKey } : {});
        const sale = JSON.parse(answers.trim().split('\n').at(-1) ?? '{}');
        assert.equal(sale.status, 'succeeded', answers);
        assert.match(sale.id, /^pay_/);
      } finally {
        await gateway.stop();
        await discardEnvironment(dbName);
      }
    }
  });

  test('NODE_ENV=production refuses to start without real secrets', () => {
    const { env } = testEnvironment();
    const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      env: { PATH: process.env.PATH, NODE_ENV: 'production', DATABASE_URL: env.DATABASE_URL },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(result.status, 2, result.stderr);
    // Everything missing at once, not one variable per attempt.
    assert.match(
      result.stderr,
      /configuration error: ADMIN_API_KEY, TILLBRIDGE_MASTER_KEY, PUBLIC_BASE_URL are required when NODE_ENV=production/,
    );
  });

  test('NODE_ENV=production refuses placeholder secrets, naming the variable', () => {
    const { env } = testEnvironment();
    const real = {
      ...env,
      NODE_ENV: 'production',
      ADMIN_API_KEY: randomBytes(24).toString('base64url'),
      TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
      PUBLIC_BASE_URL: 'https://pay.shop.de',
    };
    assert.equal(loadConfig(real).production, true);
    for (const [name, value, message] of [
      ['ADMIN_API_KEY', 'changeme-changeme-changeme', /ADMIN_API_KEY looks like a placeholder/],
      ['ADMIN_API_KEY', 'aaaaaaaaaaaaaaaaaaaaaaaa', /ADMIN_API_KEY looks like a placeholder/],
      ['ADMIN_API_KEY', 'your-admin-key-goes-here', /ADMIN_API_KEY looks like a placeholder/],
      [
        'TILLBRIDGE_MASTER_KEY',
        Buffer.alloc(32).toString('base64'),
        /TILLBRIDGE_MASTER_KEY looks like a placeholder/,
      ],
      [
        'TILLBRIDGE_MASTER_KEY',
        Buffer.from('my-very-own-master-key-for-prod!').toString('base64'),
        /TILLBRIDGE_MASTER_KEY looks like a placeholder/,
      ],
      ['PUBLIC_BASE_URL', 'https://pay.example.com', /PUBLIC_BASE_URL is a placeholder/],
      ['PUBLIC_BASE_URL', 'https://pay.EXAMPLE.com./', /PUBLIC_BASE_URL is a placeholder/],
      ...['adminadminadmin12345', 'secretsecretsecret99', '0123456789abcdef', 'MyTestKey-For-Prod'].map(
        (key) => ['ADMIN_API_KEY', key, /ADMIN_API_KEY looks like a placeholder/] as const,
      ),
      [
        'TILLBRIDGE_MASTER_KEY',
        Buffer.from(Array.from({ length: 32 }, (_, i) => i)).toString('base64'),
        /TILLBRIDGE_MASTER_KEY looks like a placeholder/,
      ],
    ] as const)
      assert.throws(() => loadConfig({ ...real, [name]: value }), message, `${name}=${value}`);
    // Sandbox takes them: nothing real is guarded there.
    assert.equal(
      loadConfig({ ...real, NODE_ENV: 'test', ADMIN_API_KEY: 'changeme-changeme' }).production,
      false,
    );
  });

  test('bad values are configuration errors at start, naming the variable', () => {
    const { env } = testEnvironment();
    for (const [name, value, message] of [
      ['PORT', '99999', /PORT must be an integer from 0 to 65535/],
      ['LOG_LEVEL', 'verbose', /LOG_LEVEL must be one of/],
      ['DATABASE_URL', 'foo', /DATABASE_URL must be a postgres or postgresql URL/],
      ['REDIS_URL', 'http://127.0.0.1:6379', /REDIS_URL must be a redis or rediss URL/],
      ['REDIS_PREFIX', 'tb kiosk', /REDIS_PREFIX must be 1 to 64 printable ASCII/],
      ['REDIS_PREFIX', 'tbк', /REDIS_PREFIX must be 1 to 64 printable ASCII/],
      // Keys no Authorization header could carry so as to match.
      [
        'ADMIN_API_KEY',
        'correct horse battery staple',
        /ADMIN_API_KEY must be printable ASCII without spaces/,
      ],
      ['ADMIN_API_KEY', 'clé-secrète-0123456789', /ADMIN_API_KEY must be printable ASCII without spaces/],
    ] as const)
      assert.throws(() => loadConfig({ ...env, [name]: value }), message, name);
  });

  test('a port already in use stops the start with that reason, in one line naming PORT', async () => {
    await assert.rejects(
      startGateway(tg.config),
      (error: Error) =>
        error instanceof ConfigError &&
        error.message ===
          `PORT ${tg.config.port} is already in use on 127.0.0.1: stop what listens there, or set another PORT`,
    );
  });

  test('a PUBLIC_BASE_URL that is no URL is refused: providers would be given it as their notify URL', () => {
    const { env } = testEnvironment();
    // The last three pass a pattern but not `new URL`, which each sale's notify URL is made with.
    for (const bad of [
      'notaurl',
      'pay.example.com',
      'ftp://pay.example.com',
      'https://pay.example.com/?x=1',
      'http://:80',
      'http://[::1',
      'http://exa%mple.com',
    ])
      assert.throws(
        () => loadConfig({ ...env, PUBLIC_BASE_URL: bad }),
        /PUBLIC_BASE_URL must be an http\(s\) URL/,
        bad,
      );
    assert.equal(
      loadConfig({ ...env, PUBLIC_BASE_URL: 'https://pay.example.com/tb/' }).publicBaseUrl,
      'https://pay.example.com/tb',
    );
    // Blank is unset, as for PORT: the gateway's own address, where it listens (IPv6 in brackets).
    const { PUBLIC_BASE_URL: _unset, ...bare } = env;
    assert.equal(
      loadConfig({ ...bare, PUBLIC_BASE_URL: '', PORT: '4100' }).publicBaseUrl,
      'http://127.0.0.1:4100',
    );
    assert.equal(loadConfig({ ...bare, HOST: '::1', PORT: '4100' }).publicBaseUrl, 'http://[::1]:4100');
    assert.equal(loadConfig({ ...bare, HOST: '' }).host, '127.0.0.1');
  });

  test('a Redis database the server does not have is a configuration error naming REDIS_URL, not database 0 used unsaid', async () => {
    const { env } = testEnvironment();
    const url = new URL(env.REDIS_URL ?? 'redis://127.0.0.1:6379');
    url.pathname = '/99';
    await assert.rejects(
      startGateway(loadConfig({ ...env, REDIS_URL: url.toString() })),
      (error: Error) =>
        error instanceof ConfigError &&
        /^REDIS_URL \(.*\/99\) names a database Redis refuses/.test(error.message),
    );
  });

  test('a database that refuses the gateway, or is not PostgreSQL, is a configuration error naming DATABASE_URL', async () => {
    const { env } = testEnvironment();
    const redis = new URL(env.REDIS_URL ?? 'redis://127.0.0.1:6379');
    for (const url of [
      'postgres://tb_no_such_role@127.0.0.1:5432/tb_never',
      // Redis answers on its port, not as PostgreSQL.
      `postgres://postgres@${redis.hostname}:${redis.port || 6379}/tb_never`,
    ])
      await assert.rejects(
        startGateway(loadConfig({ ...env, DATABASE_URL: url })),
        (error: Error) =>
          error instanceof ConfigError && /^PostgreSQL at DATABASE_URL \(/.test(error.message),
        url,
      );
  });

  test('in production no provider account can be pointed at a simulator, nor take a sale on one', async () => {
    const port = await freePort();
    const trial = await startTestGateway({ PORT: String(port), PUBLIC_BASE_URL: `http://127.0.0.1:${port}` });
    const shop = await setupMerchant(trial, 'Went live');
    // A webhook receiver on this machine, reached by name during the trial.
    const received: string[] = [];
    const receiver = http.createServer((req, res) => {
      received.push(req.url ?? '');
      res.end();
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const hook = `http://localhost:${(receiver.address() as AddressInfo).port}/hook`;
    const endpoint = await trial.http
      .post('/v1/webhook-endpoints')
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .send({ url: hook, events: ['payment.succeeded'] })
      .expect(201);
    await createPayment(trial, shop.terminalKey, scanPayment(1000)).expect(201);
    const delivered = await eventually(async () => {
      const { rows } = await trial.gateway.ctx.db.query<{ id: string }>(
        "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'succeeded'",
        [endpoint.body.id],
      );
      return rows[0];
    });
    assert.deepEqual(received, ['/hook']);
    await trial.stop({ keepDatabase: true });
    const live = await startGateway(loadConfig({ ...trial.env, NODE_ENV: 'production' }));
    try {
      const http = supertest(live.url ?? '');
      for (const [provider, body] of [
        ['sandbox', { wallets: ['alipay'] }],
        ['alipay', { sandbox: true }],
      ] as const) {
        const res = await http
          .put(`/v1/providers/${provider}`)
          .set('Authorization', `Bearer ${shop.secretKey}`)
          .send(body);
        assert.equal(res.status, 400, `${provider}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error.code, 'sandbox_unavailable');
      }
      // The sandbox account configured during the trial takes no live sale.
      const sale = await createPayment({ http }, shop.terminalKey, scanPayment(1000), 'first-live-sale');
      assert.equal(sale.status, 422, JSON.stringify(sale.body));
      assert.equal(sale.body.error.code, 'no_provider_account');
      // Webhooks go to the public internet only: no endpoint on loopback or a private network...
      for (const url of [
        'http://127.0.0.1:6379/',
        'http://localhost/hook',
        'http://localhost./hook',
        'http://[::7f00:1]/hook',
        'http://[64:ff9b::a00:1]/hook',
        'http://[::1]/hook',
        'http://[::ffff:127.0.0.1]/hook',
        'https://10.1.2.3/hook',
        'http://169.254.169.254/latest/meta-data',
        'http://192.168.0.10/hook',
      ]) {
        const refused = await http
          .post('/v1/webhook-endpoints')
          .set('Authorization', `Bearer ${shop.secretKey}`)
          .send({ url, events: ['payment.succeeded'] });
        assert.equal(refused.status, 400, `${url}: ${JSON.stringify(refused.body)}`);
        assert.equal(refused.body.error.code, 'url_not_public');
        assert.equal(refused.body.error.param, 'url');
      }
      // Nor a provider endpoint there: the gateway's signed requests would go to its neighbours.
      const keys = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const antomAt = (endpoint: string) =>
        http
          .put('/v1/providers/alipay')
          .set('Authorization', `Bearer ${shop.secretKey}`)
          .send({
            wallets: ['alipay'],
            client_id: 'C1',
            private_key: keys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
            alipay_public_key: generateKeyPairSync('rsa', { modulusLength: 2048 })
              .publicKey.export({ type: 'spki', format: 'pem' })
              .toString(),
            endpoint,
          });
      const inside = await antomAt('http://10.0.0.7:8080');
      assert.equal(inside.status, 400, JSON.stringify(inside.body));
      assert.equal(inside.body.error.code, 'endpoint_not_public');
      assert.equal(inside.body.error.param, 'endpoint');
      // ...and none made before, whose name resolves to one: the delivery fails without a request.
      await live.ctx.db.query(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0 WHERE id = $1",
        [delivered.id],
      );
      await deliver(live.ctx, delivered.id, null).catch(() => {});
      const { rows } = await live.ctx.db.query<{ status: string; last_error: string }>(
        'SELECT status, last_error FROM webhook_deliveries WHERE id = $1',
        [delivered.id],
      );
      assert.equal(rows[0].status, 'failed');
      assert.match(rows[0].last_error, /localhost is not a public address/);
      await assert.rejects(
        send({ method: 'POST', url: hook, timeoutMs: 5000, publicOnly: true }),
        /localhost is not a public address/,
      );
      // A name is checked as it resolves, whatever it is called (its DNS may change after the
      // check): a provider endpoint named so that it passes the check at configure time (this
      // machine's own name, which resolves to loopback here) takes no request.
      const ownName = hostname();
      assert.ok(
        isNonPublicAddress((await lookup(ownName)).address),
        `${ownName} resolves to a private address`,
      );
      const named = await antomAt(`http://${ownName}:${(receiver.address() as AddressInfo).port}`);
      assert.ok([200, 201].includes(named.status), JSON.stringify(named.body));
      const refusedSale = await createPayment(
        { http },
        shop.terminalKey,
        scanPayment(1000),
        'sale-to-a-private-endpoint',
      );
      assert.equal(refusedSale.status, 201, JSON.stringify(refusedSale.body));
      assert.equal(refusedSale.body.status, 'failed');
      assert.equal(refusedSale.body.failure.code, 'provider_error');
      assert.deepEqual(received, ['/hook'], 'nothing reached the private address');
    } finally {
      await live.stop();
      receiver.close();
      await discardEnvironment(trial.dbName);
    }
  });

  test('config rejects a master key that is not 32 bytes', () => {
    assert.throws(
      () => loadConfig({ TILLBRIDGE_MASTER_KEY: Buffer.alloc(16).toString('base64') }),
      /32 bytes/,
    );
  });

  test('the CLI migrates, creates a merchant and a terminal key, in production with DATABASE_URL alone', () => {
    // No admin key, master key or public URL: the CLI uses none of them.
    const env = { PATH: process.env.PATH, NODE_ENV: 'production' };
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
        env: { ...env, DATABASE_URL: tg.config.databaseUrl },
        encoding: 'utf8',
        timeout: 30_000,
      });
    const migrate = cli('migrate');
    assert.equal(migrate.status, 0, migrate.stderr);
    assert.match(migrate.stdout, /up to date/);
    const merchantOut = cli('create-merchant', 'CLI Shop', 'EUR', 'FR');
    assert.equal(merchantOut.status, 0, merchantOut.stderr);
    const created = JSON.parse(merchantOut.stdout);
    assert.match(created.secret_key, /^sk_/);
    const terminalOut = cli('create-terminal', created.id, 'lyon-1', 'till-1', '--can-refund');
    assert.equal(terminalOut.status, 0, terminalOut.stderr);
    const terminal = JSON.parse(terminalOut.stdout);
    assert.match(terminal.terminal_key, /^tk_/);
    assert.equal(terminal.can_refund, true);
    const again = cli('create-terminal', created.id, 'lyon-1', 'till-1');
    assert.equal(again.status, 2, 'a terminal that exists is the operator’s to change, as a bad argument is');
    assert.match(again.stderr, /^error: .*exists/m);
    const bad = cli('create-terminal', 'mer_nope', 's', 't');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^error: no merchant mer_nope$/m);
    const none = cli();
    assert.equal(none.status, 2, 'no command is a usage error');
    assert.match(none.stderr, /a command is required[\s\S]*usage:/);
    // A forgotten argument is a usage error, never a terminal named after the flag.
    const forgotten = cli('create-terminal', created.id, 'lyon-1', '--can-refund');
    assert.equal(forgotten.status, 2);
    assert.match(forgotten.stderr, /takes 3 argument\(s\), got 2[\s\S]*usage:/);
    // A bad value is a usage error too, said in the API's words.
    const badCurrency = cli('create-merchant', 'Shop', 'EURO', 'FR');
    assert.equal(badCurrency.status, 2);
    assert.match(badCurrency.stderr, /^error: settlement_currency must be a three-letter ISO 4217 code/m);
    const longTill = cli('create-terminal', created.id, 'lyon-1', 't'.repeat(65));
    assert.equal(longTill.status, 2);
    assert.match(longTill.stderr, /^error: terminal_id must be at most 64 characters long$/m);
    // Production never falls back to the local default database.
    const unset = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'migrate'], {
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(unset.status, 2);
    assert.match(unset.stderr, /^error: DATABASE_URL is required when NODE_ENV=production$/m);
    // A database it cannot reach is named by its variable, as the gateway names it.
    const unreachable = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'migrate'], {
      env: { ...env, DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(unreachable.status, 2);
    // Arguments are checked before any database work: a bad one is said as such.
    const badAndUnreachable = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'src/cli.ts', 'create-merchant', 'Shop', 'EURO', 'FR'],
      {
        env: { ...env, DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere' },
        encoding: 'utf8',
        timeout: 30_000,
      },
    );
    assert.equal(badAndUnreachable.status, 2);
    assert.match(badAndUnreachable.stderr, /^error: settlement_currency must be/m);
    assert.match(
      unreachable.stderr,
      /^error: PostgreSQL at DATABASE_URL \(postgres:\/\/postgres@127\.0\.0\.1:1\/nowhere\) cannot be used: /m,
    );
  });
});
