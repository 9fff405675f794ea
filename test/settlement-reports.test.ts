/** Settlement reports: groups add up to the totals exactly (property test), CSV for spreadsheets, the dashboard. */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import vm from 'node:vm';
import fc from 'fast-check';
import pg from 'pg';
import { ReaderGone, streamSettlementReportCsv } from '../src/settlements/reports.ts';
import { setupMerchant, startTestGateway, type TestGateway } from './helpers.ts';

let tg: TestGateway;
before(async () => {
  tg = await startTestGateway();
});
after(async () => {
  await tg.stop();
});

interface Line {
  day: number;
  type: 'payment' | 'refund';
  value: number;
  fee: number;
  currency: 'EUR' | 'JPY';
  store: string | null;
}

const lineArb = fc.record({
  day: fc.integer({ min: 1, max: 5 }),
  type: fc.constantFrom('payment' as const, 'refund' as const),
  value: fc.integer({ min: 1, max: 50_000_000 }),
  fee: fc.integer({ min: 0, max: 900_000 }),
  currency: fc.constantFrom('EUR' as const, 'JPY' as const),
  store: fc.option(fc.constantFrom('berlin-01', 'paris-02', 'wien,03'), { nil: null }),
});

/** Writes lines straight into settlement batches of a fresh merchant, bypassing parsing. */
async function plant(merchantId: string, lines: Line[]): Promise<void> {
  const db = tg.gateway.ctx.db;
  await db.query(
    `INSERT INTO settlement_imports (id, merchant_id, provider, source, status) VALUES ('job_prop_' || $1, $1, 'sandbox', 'upload', 'completed')`,
    [merchantId],
  );
  for (const [i, l] of lines.entries()) {
    const settlementId = `stl_${merchantId}_${l.day}_${l.currency}`;
    await db.query(
      `INSERT INTO settlements (id, merchant_id, provider, provider_batch_id, currency, settlement_date, status, content_hash, import_id)
       VALUES ($1, $2, 'sandbox', $3, $4, $5, 'reconciled', 'x', 'job_prop_' || $2) ON CONFLICT DO NOTHING`,
      [settlementId, merchantId, `B${l.day}`, l.currency, `2030-01-0${l.day}`],
    );
    const line = await db.query<{ id: string }>(
      `INSERT INTO settlement_lines (import_id, line_no, batch_ref, type, provider_reference, transaction_value,
         transaction_currency, settlement_value, settlement_currency, fee_value, settled_at, store_id)
       VALUES ('job_prop_' || $1, $2::int, $3, $4, 'ref' || $2::int, $5, $6, $5, $6, $7, $8, $9)
       RETURNING id`,
      [
        merchantId,
        i + 2,
        `B${l.day}`,
        l.type,
        l.value,
        l.currency,
        l.fee,
        `2030-01-0${l.day}T12:00:00Z`,
        l.store,
      ],
    );
    // What the job records for a line other than a payment matched by its reference (migration 104).
    if (i % 7 === 0 || l.type !== 'payment')
      await db.query(
        `INSERT INTO settlement_line_results (line_id, import_id, settlement_id, result)
         VALUES ($1, 'job_prop_' || $2, $3, $4)`,
        [line.rows[0].id, merchantId, settlementId, i % 7 === 0 ? 'missing_in_ledger' : 'matched'],
      );
  }
  await db.query(
    `UPDATE settlement_imports i SET first_line_id = l.first, last_line_id = l.last
       FROM (SELECT min(id) AS first, max(id) AS last FROM settlement_lines WHERE import_id = 'job_prop_' || $1) l
      WHERE i.id = 'job_prop_' || $1`,
    [merchantId],
  );
}

type Figures = {
  count: number;
  gross: { value: number };
  fees: { value: number };
  net: { value: number };
  discrepancies: number;
};

test('property: for any lines and any grouping, the groups sum exactly to the totals, per currency', async () => {
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(lineArb, { minLength: 0, maxLength: 25 }), async (lines) => {
      run++;
      const merchant = await tg.http
        .post('/v1/admin/merchants')
        .set('Authorization', `Bearer ${tg.adminKey}`)
        .send({ name: `Prop ${run}`, settlement_currency: 'EUR', country: 'DE' })
        .expect(201);
      await plant(merchant.body.id, lines);
      for (const groupBy of ['day', 'store', 'wallet']) {
        const res = await tg.http
          .get(`/v1/reports/settlements?from=2030-01-01&to=2030-01-31&group_by=${groupBy}`)
          .set('Authorization', `Bearer ${merchant.body.secret_key}`);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        for (const currency of ['EUR', 'JPY']) {
          const mine = lines.filter((l) => l.currency === currency);
          const groups = (res.body.groups as (Figures & { currency: string })[]).filter(
            (g) => g.currency === currency,
          );
          const total = (res.body.totals as (Figures & { currency: string })[]).find(
            (t) => t.currency === currency,
          );
          if (mine.length === 0) {
            assert.equal(total, undefined);
            continue;
          }
          assert.ok(total);
          const sum = (f: (g: Figures) => number) => groups.reduce((a, g) => a + f(g), 0);
          assert.equal(
            sum((g) => g.count),
            total.count,
          );
          assert.equal(
            sum((g) => g.gross.value),
            total.gross.value,
          );
          assert.equal(
            sum((g) => g.fees.value),
            total.fees.value,
          );
          assert.equal(
            sum((g) => g.net.value),
            total.net.value,
          );
          assert.equal(
            sum((g) => g.discrepancies),
            total.discrepancies,
          );
          // …and the totals are the lines' own sums, in integer minor units.
          const gross = mine.reduce((a, l) => a + (l.type === 'payment' ? l.value : -l.value), 0);
          const fees = mine.reduce((a, l) => a + l.fee, 0);
          assert.equal(total.count, mine.length);
          assert.equal(total.gross.value, gross);
          assert.equal(total.fees.value, fees);
          assert.equal(total.net.value, gross - fees);
        }
      }
    }),
    { numRuns: 25 },
  );
});

test('CSV: streamed, UTF-8 with BOM, CRLF, major units, quoted cells, a TOTAL row per currency marked as one', async () => {
  const m = await setupMerchant(tg);
  await plant(m.id, [
    { day: 1, type: 'payment', value: 123456, fee: 2222, currency: 'EUR', store: 'wien,03' },
    { day: 2, type: 'refund', value: 1000, fee: 0, currency: 'EUR', store: '=cmd()' },
    { day: 2, type: 'payment', value: 500, fee: 9, currency: 'JPY', store: null },
    // A store may be named TOTAL: the `row` column tells it from the totals.
    { day: 3, type: 'payment', value: 1200, fee: 0, currency: 'EUR', store: 'TOTAL' },
  ]);
  const res = await tg.http
    .get('/v1/reports/settlements?from=2030-01-01&to=2030-01-31&format=csv&group_by=store')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .buffer(true)
    .parse((r, done) => {
      const chunks: Buffer[] = [];
      r.on('data', (c: Buffer) => chunks.push(c));
      r.on('end', () => done(null, Buffer.concat(chunks).toString('utf8')));
    });
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type'], /text\/csv/);
  assert.match(
    res.headers['content-disposition'],
    /attachment; filename="settlements_2030-01-01_2030-01-31_by_store.csv"/,
  );
  const text = res.body as string;
  assert.ok(text.startsWith('\ufeff'));
  assert.deepEqual(text.slice(1).split('\r\n'), [
    'group,currency,count,gross,fees,net,discrepancies,row',
    "'=cmd(),EUR,1,-10.00,0.00,-10.00,0,group",
    'TOTAL,EUR,1,12.00,0.00,12.00,0,group',
    '"wien,03",EUR,1,1234.56,22.22,1212.34,1,group',
    'TOTAL,EUR,3,1236.56,22.22,1214.34,1,total',
    '(no store),JPY,1,500,9,491,0,group',
    'TOTAL,JPY,1,500,9,491,0,total',
    '',
  ]);
  const bad = await tg.http
    .get('/v1/reports/settlements?from=2030-02-01&to=2030-01-01')
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.type, 'invalid_request');
  const noDates = await tg.http.get('/v1/reports/settlements').set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(noDates.status, 400);
  // There is no year 0: refused as a date, before any CSV header is sent.
  const yearZero = await tg.http
    .get('/v1/reports/settlements?from=0000-01-01&to=2030-01-01&format=csv')
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(yearZero.status, 400);
  assert.equal(yearZero.body.error.param, 'from');
  assert.match(yearZero.headers['content-type'], /application\/json/);
  // A provider filter naming no provider is a mistake, not an empty report.
  for (const path of [
    '/v1/reports/settlements?from=2030-01-01&to=2030-02-01&provider=nosuch',
    '/v1/settlements?provider=nosuch',
    '/v1/reconciliation/discrepancies?provider=nosuch',
  ]) {
    const unknown = await tg.http.get(path).set('Authorization', `Bearer ${m.secretKey}`);
    assert.equal(unknown.status, 400, path);
    assert.equal(unknown.body.error.code, 'provider_unknown', path);
  }
});

test('a CSV download its client gives up on (gone, or reading no more) ends its transaction: the bulk pool every merchant shares is not drained by it', async () => {
  const merchant = await setupMerchant(tg);
  const { ctx } = tg.gateway;
  const q = { merchant_id: merchant.id, from: '2026-11-01', to: '2026-11-30', group_by: 'day' as const };
  /** A client that takes nothing: its buffer is full at once. */
  const stuck = () => new Writable({ highWaterMark: 1, write() {} });
  const inUse = () => ctx.bulkDb.totalCount - ctx.bulkDb.idleCount;
  const within = <T>(work: Promise<T>) =>
    Promise.race([
      work,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('still streaming')), 5_000)),
    ]);
  // Closed while the report is written.
  const gone = stuck();
  const streaming = streamSettlementReportCsv(ctx, q, gone);
  await new Promise((resolve) => setTimeout(resolve, 200));
  gone.destroy();
  await assert.rejects(within(streaming), ReaderGone);
  // Kept open, reading nothing.
  await assert.rejects(within(streamSettlementReportCsv(ctx, q, stuck(), 300)), ReaderGone);
  assert.equal(inUse(), 0, 'every bulk connection back in the pool');
  const { rows } = await ctx.db.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
  );
  assert.equal(rows[0].n, 0, 'no transaction left open');
});

test('a CSV report that fails after its first rows went out is cut off, not ended as if whole', async () => {
  const merchant = await setupMerchant(tg);
  const { query } = pg.Client.prototype;
  // The ledger fails while the rows are read (a lost connection, a statement past its time).
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    if (typeof args[0] === 'string' && args[0].startsWith('FETCH')) throw new Error('connection lost');
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query;
  try {
    const res = await fetch(`${tg.url}/v1/reports/settlements?from=2026-11-01&to=2026-11-30&format=csv`, {
      headers: { Authorization: `Bearer ${merchant.secretKey}` },
    });
    assert.equal(res.status, 200, 'the header row was on its way');
    await assert.rejects(res.text(), 'the download does not end cleanly');
  } finally {
    pg.Client.prototype.query = query;
  }
});

test('the dashboard page needs no key to load, and holds no data', async () => {
  const page = await tg.http.get('/dashboard');
  assert.equal(page.status, 200);
  assert.match(page.headers['content-type'], /text\/html/);
  assert.match(page.headers['content-security-policy'], /script-src 'self'/);
  assert.match(page.text, /merchant secret key/);
  const js = await tg.http.get('/dashboard/app.js');
  assert.equal(js.status, 200);
  assert.match(js.text, /\/v1\/reports\/settlements/);
  // The script is a string in our source: one syntax error and the page is blank.
  assert.doesNotThrow(() => new vm.Script(js.text));
  // Amounts are shown in every currency's own minor units (XPF has none, CLF four).
  const exponents = JSON.parse(/var EXP = (\{[^}]*\});/.exec(js.text)?.[1] ?? '{}');
  assert.deepEqual(
    [exponents.XPF, exponents.CLF, exponents.JPY, exponents.KWD, exponents.EUR],
    [0, 4, 0, 3, undefined],
  );
  // Lists are read page by page (the newest 100 batches once hid older ones of the period), up to a cap.
  const pagesSource = /async function pages[\s\S]*?\n {2}\}\n/.exec(js.text)?.[0] ?? '';
  const served: string[] = [];
  const fakeApi = async (path: string) => {
    served.push(path);
    const after = Number(/starting_after=b(\d+)/.exec(path)?.[1] ?? 0);
    const data = Array.from({ length: 100 }, (_, i) => ({ id: `b${after + i + 1}` }));
    return { json: async () => ({ data, has_more: after + 100 < 250 }) };
  };
  const pages = new Function('api', `${pagesSource}; return pages;`)(fakeApi);
  const all = await pages('/v1/settlements', 5000);
  assert.deepEqual([all.data.length, all.more, served.length], [300, false, 3]);
  assert.equal(served[1], '/v1/settlements?limit=100&starting_after=b100');
  const capped = await pages('/v1/settlements', 150);
  assert.deepEqual([capped.data.length, capped.more], [200, true]);
  // A key the API refuses: the sign-in form comes back saying why (the report's error line is hidden with the report).
  const apiSource = /async function api[\s\S]*?\n {2}\}\n/.exec(js.text)?.[0] ?? '';
  const elements: Record<string, { textContent: string }> = { 'login-error': { textContent: '' } };
  let signedOut = 0;
  class Stale {}
  const refused = new Function('fetch', 'signOut', '$', 'Stale', 'generation', `${apiSource}; return api;`)(
    async () => ({
      status: 403,
      ok: false,
      json: async () => ({ error: { message: 'a terminal key cannot read settlements' } }),
    }),
    () => signedOut++,
    (id: string) => elements[id],
    Stale,
    1,
  );
  // Signed out (the report cleared with it), and the load that asked gives up quietly.
  await assert.rejects(refused('/v1/reports/settlements', { id: 1, key: 'tk_a_terminal_key' }), Stale);
  assert.equal(signedOut, 1);
  // An answer for an earlier load (another Show, another key) is dropped, not drawn over the later one.
  const overtaken = new Function('fetch', 'signOut', '$', 'Stale', 'generation', `${apiSource}; return api;`)(
    async () => ({ status: 200, ok: true, json: async () => ({ groups: [] }) }),
    () => signedOut++,
    (id: string) => elements[id],
    Stale,
    2,
  );
  await assert.rejects(overtaken('/v1/reports/settlements', { id: 1, key: 'sk_a' }), Stale);
  assert.ok(await overtaken('/v1/reports/settlements', { id: 2, key: 'sk_a' }));
  assert.match(elements['login-error'].textContent, /not accepted: a terminal key cannot read settlements/);
  const spec = await tg.http.get('/openapi.json');
  assert.ok(spec.body.paths['/v1/reports/settlements']);
  const importOp = spec.body.paths['/v1/settlements/imports'].post;
  assert.ok(importOp.requestBody.content['text/csv'], 'the file is the raw body');
  const required = (op: { parameters: { name: string; in: string; required: boolean }[] }) =>
    op.parameters.filter((p) => p.in === 'query' && p.required).map((p) => p.name);
  assert.deepEqual(required(importOp), ['provider']);
  assert.deepEqual(required(spec.body.paths['/v1/reports/settlements'].get), ['from', 'to']);
  assert.ok(spec.body.paths['/openapi.json'].get && spec.body.paths['/dashboard/app.js'].get);
});
