/** Settlement files in each provider's format, fetched or uploaded, and malformed files rejected whole. */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import net from 'node:net';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { deflateSync, gzipSync } from 'node:zlib';
import {
  ALIPAY_CODE,
  createPayment,
  createRefund,
  eventually,
  scanPayment,
  setupMerchant,
  signal,
  startTestGateway,
  type TestGateway,
  waitForStatus,
} from './helpers.ts';
import {
  batchLines,
  discrepancies,
  importAndWait,
  lineFor,
  pay,
  refundPart,
  SANDBOX_HEADER,
  sandboxCsv,
  settlements,
  waitJob,
} from './settlement-helpers.ts';

let tg: TestGateway;
before(async () => {
  tg = await startTestGateway();
});
after(async () => {
  await tg.stop();
});

const today = () => new Date().toISOString().slice(0, 10);

async function nothingImported(merchantId: string, imports = 0) {
  const { rows } = await tg.gateway.ctx.db.query(
    `SELECT (SELECT count(*) FROM settlement_imports WHERE merchant_id = $1)::int AS imports,
            (SELECT count(*) FROM settlement_import_batches b JOIN settlement_imports i ON i.id = b.import_id
              WHERE i.merchant_id = $1)::int AS staged_batches,
            (SELECT count(*) FROM settlement_lines l JOIN settlement_imports i ON i.id = l.import_id
              WHERE i.merchant_id = $1)::int AS lines,
            (SELECT count(*) FROM settlements WHERE merchant_id = $1)::int AS batches,
            (SELECT count(*) FROM reconciliation_discrepancies WHERE merchant_id = $1)::int AS discrepancies,
            (SELECT count(*) FROM payment_settlements WHERE merchant_id = $1)::int AS settled`,
    [merchantId],
  );
  assert.deepEqual(rows[0], {
    imports,
    staged_batches: 0,
    lines: 0,
    batches: 0,
    discrepancies: 0,
    settled: 0,
  });
}

/** The staging tables left behind (each import's table is dropped by its reconcile job). */
/** The lines stored for a merchant, whichever import brought them. */
async function storedLines(merchantId: string): Promise<number> {
  const { rows } = await tg.gateway.ctx.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM settlement_lines l JOIN settlement_imports i ON i.id = l.import_id
      WHERE i.merchant_id = $1`,
    [merchantId],
  );
  return rows[0].n;
}

async function upload(key: string, body: Buffer | string, provider = 'sandbox') {
  return tg.http
    .post(`/v1/settlements/imports?provider=${provider}`)
    .set('Authorization', `Bearer ${key}`)
    .set('Content-Type', 'text/csv')
    .send(Buffer.isBuffer(body) ? body : Buffer.from(body));
}

/** A malformed file is refused at the POST: 400 settlement_file_invalid naming the problem. */
interface Refusal {
  status: number;
  body: { error: { type: string; code: string; message: string; request_id: string } };
}
function assertRefused(res: Refusal, message: RegExp, name = '') {
  assert.equal(res.status, 400, `${name}: ${JSON.stringify(res.body)}`);
  assert.equal(res.body.error.type, 'invalid_request', name);
  assert.equal(res.body.error.code, 'settlement_file_invalid', name);
  assert.match(res.body.error.message, message, name);
  assert.match(res.body.error.request_id, /./, name);
}

test('malformed sandbox files are refused at the POST with a clear 400, and nothing is stored', async () => {
  const m = await setupMerchant(tg);
  const a = await pay(tg, m, 1000);
  const b = await pay(tg, m, 1200);
  const good = sandboxCsv([lineFor(a), lineFor(b)], 'BAD-1');
  const cases: [string, Buffer, RegExp][] = [
    [
      'wrong columns',
      Buffer.from(good.replace('settled_at', 'settlement_time')),
      /missing required column.*settled_at/,
    ],
    ['truncated mid-line', Buffer.from(good.slice(0, good.length - 40)), /line 3|record|column|truncated/i],
    [
      'wrong encoding (Latin-1)',
      Buffer.concat([Buffer.from(good.trimEnd()), Buffer.from(',M\xfcnchen\n', 'latin1')]),
      /not valid UTF-8/,
    ],
    ['UTF-16', Buffer.from(`\ufeff${good}`, 'utf16le'), /UTF-16/],
    [
      'not an amount',
      Buffer.from(good.replace(',1000,EUR,1000,', ',10.00,EUR,1000,')),
      /line 2: amount "10.00"/,
    ],
    ['unknown currency', Buffer.from(good.replace(',1200,EUR,', ',1200,EUX,')), /line 3: currency "EUX"/],
    ...['1e999999', 'NaN', '-1', '0.000', '7,5'].map((rate): [string, Buffer, RegExp] => [
      `an exchange rate of ${rate}`,
      Buffer.from(
        sandboxCsv([lineFor(a), { ...lineFor(b), rate: rate.includes(',') ? `"${rate}"` : rate }], 'BAD-1'),
      ),
      /line 3: the exchange rate .* is not a positive decimal/,
    ]),
    // Taken as positive, it settled the sale the file says the opposite of.
    [
      'a payment written negative',
      Buffer.from(good.replace(',1200,EUR,1200,', ',-1200,EUR,-1200,')),
      /line 3: amount "-1200" is negative on a payment line/,
    ],
    [
      'a time PostgreSQL cannot store',
      Buffer.from(good.replace(/\d{4}-\d{2}-\d{2}T12:00:00Z/, '9999-12-31T23:59:59-05:00')),
      /line 2: the settlement time is not a date from 1970 to 9999/,
    ],
    [
      'a time that is not RFC 3339',
      Buffer.from(good.replace(/\d{4}-\d{2}-\d{2}T12:00:00Z/, '1')),
      /line 2: settled_at "1" is not an RFC 3339 timestamp/,
    ],
    // Not a type, though every JavaScript object has a property of that name.
    ['unknown type', Buffer.from(good.replace(',payment,', ',toString,')), /line 2: unknown type "toString"/],
    ['nothing at all', Buffer.from('\n'), /empty settlement file/],
    [
      'a date not on the calendar',
      Buffer.from(good.replace(/\d{4}-\d{2}-\d{2}T12:00:00Z/, '2026-02-30T12:00:00Z')),
      /line 2: settled_at "2026-02-30T12:00:00Z"/,
    ],
    [
      'a column named twice',
      Buffer.from(good.replace('wallet_psp', 'amount')),
      /line 1: column\(s\) named more than once in the header: amount/,
    ],
    ['old Mac line endings (CR only)', Buffer.from(good.replace(/\n/g, '\r')), /line 1: a carriage return/],
    // What `curl -d @file` sends: every line break dropped, the rows run on in the header.
    [
      'its line breaks dropped',
      Buffer.from(good.replace(/\n/g, '')),
      /line 1: the header holds values .*, not column names: were the file's line breaks lost/,
    ],
    // An id past what an index holds was a 500; a line of megabytes was buffered whole.
    [
      'a batch id of 2,800 characters',
      Buffer.from(good.replaceAll('BAD-1', 'B'.repeat(2800))),
      /line 2: the settlement batch id is longer than 256 characters/,
    ],
    [
      'a line of 70,000 characters',
      Buffer.from(good.replace(',SANDBOXWALLET\n', `,${'W'.repeat(70_000)}\n`)),
      /line 2: longer than 65,536 characters/,
    ],
    // Lines are numbered as the file has them: blank lines count.
    [
      'a bad line after blank lines',
      Buffer.from(good.replace('\n', '\n\n\n').replace(',1200,EUR,', ',1200,EUX,')),
      /line 5: currency "EUX"/,
    ],
  ];
  for (const [name, body, message] of cases) {
    assertRefused(await upload(m.secretKey, body), message, name);
    await nothingImported(m.id);
  }
  // A bad line far into a file (past the first COPY writes) rolls back what was already staged.
  const many = Array.from({ length: 5000 }, (_, i) => ({ transaction_id: `sbx_many_${i}`, amount: 100 + i }));
  const late = sandboxCsv(many, 'BAD-2').replace(',sbx_many_4321,,,4421,EUR,', ',sbx_many_4321,,,44.21,EUR,');
  assertRefused(await upload(m.secretKey, late), /line 4323: amount "44.21"/, 'late bad line');
  await nothingImported(m.id);
  // A header without lines is a day without settlements: fine, and nothing to import.
  const none = await importAndWait(tg, m.secretKey, `${SANDBOX_HEADER}\n`);
  assert.equal(none.status, 'completed');
  assert.equal(none.counts.lines, 0);
  await nothingImported(m.id, 1);
  // An empty body is refused at once.
  const empty = await tg.http
    .post('/v1/settlements/imports?provider=sandbox')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .set('Content-Type', 'text/csv')
    .send('');
  assert.equal(empty.status, 400);
  assert.equal(empty.body.error.code, 'settlement_file_empty');
  const unknown = await tg.http
    .post('/v1/settlements/imports?provider=nope')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .send('x');
  assert.equal(unknown.status, 400);
  assert.equal(unknown.body.error.param, 'provider');
  // The route answers with a trailing slash too, and then still takes the file raw (not as JSON).
  const slashed = await tg.http
    .post('/v1/settlements/imports/?provider=sandbox')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .set('Content-Type', 'text/csv')
    .send(`${SANDBOX_HEADER}\n`);
  assert.equal(slashed.status, 202, JSON.stringify(slashed.body));
  // After all that, the good file imports cleanly.
  const ok = await importAndWait(tg, m.secretKey, good);
  assert.equal(ok.status, 'completed');
  assert.equal(ok.counts.matched, 2);
  assert.equal(ok.file.bytes, Buffer.byteLength(good));
  assert.match(ok.file.sha256, /^[0-9a-f]{64}$/);
  assert.equal(await storedLines(m.id), 2, 'only the good file left lines behind');
});

/** Sends `head` and then `rest` on a raw socket, half-closes it, and resolves with the status line. */
function rawRequest(head: string, rest: string): Promise<string> {
  const url = new URL(tg.url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(url.port), url.hostname);
    let answer = '';
    socket.on('data', (data) => {
      answer += data;
    });
    socket.on('error', () => {});
    socket.on('close', () => resolve(answer.split('\r\n')[0] ?? ''));
    socket.write(head + rest);
    setTimeout(() => socket.end(), 1000);
  });
}

test('an upload that breaks off (a broken chunk, a body short of its length) holds no database connection', async () => {
  const m = await setupMerchant(tg);
  const header = `${SANDBOX_HEADER}\n`;
  // The second chunk announces 2 bytes and sends more: the HTTP parser gives up mid-body.
  const head = `POST /v1/settlements/imports?provider=sandbox HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${m.secretKey}\r\nTransfer-Encoding: chunked\r\n\r\n${Buffer.byteLength(header).toString(16)}\r\n${header}\r\n`;
  const answers = await Promise.all(Array.from({ length: 3 }, () => rawRequest(head, '2\r\nB1,pa\r\n')));
  for (const answer of answers) assert.match(answer, /^HTTP\/1.1 400/);
  // A body that stops short of its Content-Length: the client is gone; so must the COPY be.
  const short = `POST /v1/settlements/imports?provider=sandbox HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${m.secretKey}\r\nContent-Length: 100000\r\n\r\n`;
  await Promise.all(Array.from({ length: 3 }, () => rawRequest(short, header)));
  await eventually(
    async () => {
      const { rows } = await tg.gateway.ctx.db.query(
        `SELECT 1 FROM pg_stat_activity
          WHERE datname = current_database() AND state = 'active' AND query LIKE 'COPY settlement_lines%'`,
      );
      return rows.length === 0;
    },
    10_000,
    "the broken uploads' COPY to end",
  );
  await nothingImported(m.id);
});

test('the 256-character limit counts characters: 200 emoji are a store id, not too long', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 1300);
  const file = sandboxCsv([lineFor(p)], 'EMOJI-1');
  const withStore = file.replace(/,([^,\n]*),SANDBOXWALLET\n/, `,${'🛒'.repeat(200)},SANDBOXWALLET\n`);
  assert.notEqual(withStore, file);
  const job = await importAndWait(tg, m.secretKey, withStore);
  assert.equal(job.status, 'completed', JSON.stringify(job));
});

/** An upload over a socket of its own that sends the sandbox header and then nothing more, for now. */
function slowUpload(port: number, key: string): net.Socket {
  const header = `${SANDBOX_HEADER}\n`;
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write(
    `POST /v1/settlements/imports?provider=sandbox HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nTransfer-Encoding: chunked\r\n\r\n${Buffer.byteLength(header).toString(16)}\r\n${header}\r\n`,
  );
  return socket;
}

async function copiesUnderWay(gateway: TestGateway, n: number, what: string) {
  await eventually(
    async () => {
      const { rows } = await gateway.gateway.ctx.db.query(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY settlement_lines%'",
      );
      return rows.length === n;
    },
    10_000,
    what,
  );
}

test('slow uploads take at most four database connections, three a merchant: the next is 429, and sales go on', async () => {
  const [m, other, third] = await Promise.all([setupMerchant(tg), setupMerchant(tg), setupMerchant(tg)]);
  const port = Number(new URL(tg.url).port);
  const header = `${SANDBOX_HEADER}\n`;
  const slow = Array.from({ length: 3 }, () => slowUpload(port, m.secretKey));
  try {
    await copiesUnderWay(tg, 3, "three of one merchant's uploads being received");
    // A merchant's fourth waits a moment for one of its own, then is turned away: others have room.
    const mine = await upload(m.secretKey, header);
    assert.equal(mine.status, 429, JSON.stringify(mine.body));
    assert.equal(mine.body.error.code, 'imports_busy');
    assert.match(mine.body.error.message, /3 of your settlement files/);
    slow.push(slowUpload(port, other.secretKey));
    await copiesUnderWay(tg, 4, 'four uploads being received');
    const fifth = await upload(third.secretKey, header);
    assert.equal(fifth.status, 429, JSON.stringify(fifth.body));
    assert.equal(fifth.body.error.code, 'imports_busy');
    assert.equal(fifth.headers['retry-after'], '5');
    const sale = await createPayment(tg, m.terminalKey, scanPayment(1000));
    assert.equal(sale.status, 201);
    // One that waits while a place frees up takes it.
    const waiting = upload(third.secretKey, header);
    await new Promise((resolve) => setTimeout(resolve, 500));
    slow.shift()?.destroy();
    assert.equal((await waiting).status, 202);
  } finally {
    for (const socket of slow) socket.destroy();
  }
  // Gone, they free their places.
  await eventually(async () => (await upload(m.secretKey, header)).status === 202, 10_000, 'a free place');
});

test('an upload that stops sending is dropped after UPLOAD_IDLE_TIMEOUT_MS, its connection and place freed', async () => {
  const idle = await startTestGateway({ UPLOAD_IDLE_TIMEOUT_MS: '1500' });
  try {
    const m = await setupMerchant(idle);
    const socket = slowUpload(Number(new URL(idle.url).port), m.secretKey);
    const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
    const started = Date.now();
    await copiesUnderWay(idle, 1, 'the upload being received');
    const closedAt = await closed;
    assert.ok(closedAt - started < 10_000, `closed after ${closedAt - started} ms`);
    await copiesUnderWay(idle, 0, 'its COPY to end');
    const { rows } = await idle.gateway.ctx.db.query(
      'SELECT count(*)::int AS n FROM settlement_lines l JOIN settlement_imports i ON i.id = l.import_id WHERE i.merchant_id = $1',
      [m.id],
    );
    assert.equal(rows[0].n, 0);
  } finally {
    await idle.stop();
  }
});

test('a gzip or deflate upload is inflated as it arrives; another encoding, or a body that is not what it says, is 400', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 1400);
  const file = sandboxCsv([lineFor(p)], 'GZIP-1');
  const send = (encoding: string, body: Buffer) =>
    tg.http
      .post('/v1/settlements/imports?provider=sandbox')
      .set('Authorization', `Bearer ${m.secretKey}`)
      .set('Content-Type', 'text/csv')
      .set('Content-Encoding', encoding)
      .send(body);
  const gzipped = await send('gzip', gzipSync(file));
  assert.equal(gzipped.status, 202, JSON.stringify(gzipped.body));
  const job = await waitJob(tg, m.secretKey, gzipped.body.id);
  assert.deepEqual([job.status, job.counts.matched], ['completed', 1], JSON.stringify(job));
  const again = await send('deflate', deflateSync(file));
  assert.equal(again.status, 202, JSON.stringify(again.body));
  assert.equal((await waitJob(tg, m.secretKey, again.body.id)).counts.batches_unchanged, 1);
  const brotli = await send('br', Buffer.from(file));
  assert.equal(brotli.status, 400);
  assert.equal(brotli.body.error.code, 'content_encoding_unsupported');
  const notGzip = await send('gzip', Buffer.from(file));
  assert.equal(notGzip.status, 400);
  assert.equal(notGzip.body.error.code, 'settlement_file_invalid');
  assert.match(notGzip.body.error.message, /not gzip data/);
  const cutShort = await send('gzip', gzipSync(file).subarray(0, 40));
  assert.equal(cutShort.status, 400);
  assert.equal(cutShort.body.error.code, 'settlement_file_invalid');
});

async function alipayMerchant() {
  const merchant = await tg.http
    .post('/v1/admin/merchants')
    .set('Authorization', `Bearer ${tg.adminKey}`)
    .send({ name: 'Alipay shop', settlement_currency: 'EUR', country: 'DE' })
    .expect(201);
  const key = merchant.body.secret_key as string;
  const account = await tg.http
    .put('/v1/providers/alipay')
    .set('Authorization', `Bearer ${key}`)
    .send({ sandbox: true, wallets: ['alipay', 'alipayplus'] });
  assert.ok([200, 201].includes(account.status), JSON.stringify(account.body));
  return { id: merchant.body.id as string, key, account: account.body };
}

async function alipayPayments(key: string, amounts: number[]) {
  const ids: string[] = [];
  for (const value of amounts) {
    const res = await createPayment(tg, key, scanPayment(value, { payment_code: ALIPAY_CODE }));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.provider, 'alipay');
    ids.push(res.body.id);
  }
  for (const id of ids) await waitForStatus(tg, key, id, ['succeeded']);
  return ids;
}

/** The provider's settlement data of today, fetched now (POST /v1/settlements/fetches): the completed job. */
async function fetchToday(key: string, provider: string) {
  const fetched = await tg.http
    .post('/v1/settlements/fetches')
    .set('Authorization', `Bearer ${key}`)
    .send({ provider, date: today() });
  assert.equal(fetched.status, 202, JSON.stringify(fetched.body));
  const job = await waitJob(tg, key, fetched.body.id);
  assert.equal(job.status, 'completed', JSON.stringify(job));
  return job;
}

test('the sandbox simulator settles the payments and refunds of the day: fetched, all matched', async () => {
  const m = await setupMerchant(tg);
  const [a, b] = await Promise.all([5000, 5100].map((v) => pay(tg, m, v)));
  await refundPart(tg, m, b, 600);
  const job = await fetchToday(m.secretKey, 'sandbox');
  assert.equal(job.counts.matched, 3, JSON.stringify(job.counts));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.gross, a.amount + b.amount - 600);
});

test('Alipay (Antom) settlement files: fetched on demand, and uploaded with planted faults', async () => {
  const shop = await alipayMerchant();
  await alipayPayments(shop.key, [2000, 2100, 2200]);
  const job = await fetchToday(shop.key, 'alipay');
  assert.equal(job.source, 'fetch');
  assert.equal(job.counts.matched, 3, JSON.stringify(job.counts));
  assert.deepEqual(await discrepancies(tg, shop.key), []);
  const [batch] = await settlements(tg, shop.key);
  assert.equal(batch.provider, 'alipay');
  assert.equal(batch.count, 3);
  assert.equal(batch.status, 'reconciled');

  // The simulator's file with faults, uploaded as a merchant would: the discrepancies are the planted ones.
  const sim = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
  const clientId = shop.account.settings?.client_id ?? shop.account.client_id;
  const url = `${sim}/_sim/settlements/${today()}?faults=amount_mismatch,duplicate_row,extra_column${
    clientId ? `&client_id=${encodeURIComponent(clientId)}` : ''
  }`;
  const file = Buffer.from(await (await fetch(url)).arrayBuffer());
  const uploaded = await importAndWait(tg, shop.key, file, 'alipay');
  assert.equal(uploaded.status, 'completed', JSON.stringify(uploaded));
  assert.equal(uploaded.counts.batches_superseded, 1);
  // A column unknown to us is read past and reported (alipay.md §12), not fatal.
  assert.deepEqual(uploaded.warnings, ['columns not read (unknown to this version): riskLevel']);
  assert.equal(job.warnings, undefined, 'the simulator’s own file has none');
  assert.deepEqual((await discrepancies(tg, shop.key)).map((d) => d.kind).sort(), [
    'amount_mismatch',
    'duplicate_in_settlement',
  ]);

  // Truncated (no <END>) and missing columns are refused at the POST; the current version stays.
  const truncated = file.toString('utf8').replace(/<END>\s*$/, '');
  assertRefused(await upload(shop.key, truncated, 'alipay'), /<END>/, 'alipay truncated');
  const noColumn = file.toString('utf8').replace('settlementCurrency', 'settleCcy');
  assertRefused(await upload(shop.key, noColumn, 'alipay'), /settlementCurrency/, 'alipay column');
  const longBatch = file.toString('utf8').replace(/\n([^,\n]*),/, (_, id) => `\n${id}${'9'.repeat(3000)},`);
  assertRefused(await upload(shop.key, longBatch, 'alipay'), /longer than 256/, 'alipay long batch id');
  // A fee in another currency than the settlement's cannot be netted against it.
  const [head, ...rows] = file.toString('utf8').split('\n');
  const feeCurrency = head.split(',').indexOf('feeCurrency');
  assert.ok(feeCurrency >= 0, head);
  const usdFee = [head, ...rows];
  usdFee[1] = rows[0]
    .split(',')
    .map((cell, column) => (column === feeCurrency ? 'USD' : cell))
    .join(',');
  assertRefused(
    await upload(shop.key, usdFee.join('\n'), 'alipay'),
    /line 2: the fee is in USD, not in the settlement currency EUR/,
    'alipay fee currency',
  );
  const [still] = await settlements(tg, shop.key);
  assert.equal(still.version, 2);
});

test("Antom's file as its Chinese page describes it: refunds named by the sale's id, and a fee line, all reconciled", async () => {
  const shop = await alipayMerchant();
  const [sale] = await alipayPayments(shop.key, [2000]);
  for (const value of [500, 400]) {
    const refund = await createRefund(tg, shop.key, sale, { amount: { value, currency: 'EUR' } });
    assert.equal(refund.status, 201, JSON.stringify(refund.body));
    await eventually(
      async () =>
        (await tg.http.get(`/v1/refunds/${refund.body.id}`).set('Authorization', `Bearer ${shop.key}`)).body
          .status === 'succeeded',
      15_000,
      `refund of ${value} succeeded`,
    );
  }
  const sim = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
  const clientId = shop.account.settings?.client_id ?? shop.account.client_id;
  const url = `${sim}/_sim/settlements/${today()}${clientId ? `?client_id=${encodeURIComponent(clientId)}` : ''}`;
  const [head, ...rows] = (await (await fetch(url)).text()).trim().split('\n');
  const column = (name: string) => head.split(',').indexOf(name);
  const [id, original, type] = ['transactionId', 'originalTransactionId', 'transactionType'].map(column);
  const cells = rows.filter((row) => row !== '<END>').map((row) => row.split(','));
  assert.deepEqual(cells.map((c) => c[type]).sort(), ['PAYMENT', 'REFUND', 'REFUND']);
  for (const c of cells) if (c[type] === 'REFUND') c[id] = c[original];
  const fee = [...cells.find((c) => c[type] === 'PAYMENT')!];
  fee[type] = 'SETTLEMENT_FEE';
  const file = [head, ...cells.map((c) => c.join(',')), fee.join(','), '<END>', ''].join('\n');
  const job = await importAndWait(tg, shop.key, file, 'alipay');
  assert.equal(job.status, 'completed', JSON.stringify(job));
  assert.equal(job.counts.matched, 3, JSON.stringify(job.counts));
  assert.deepEqual(await discrepancies(tg, shop.key), []);
  assert.equal(job.warnings.length, 1, JSON.stringify(job.warnings));
  assert.match(
    job.warnings[0],
    /^1 line of transactionType SETTLEMENT_FEE \(the first on line 5; settled: \d+ minor units of EUR\) passed over: not a payment, refund or cancel, so not reconciled and not in the batch totals$/,
  );
});

test('the scheduled fetch queues recent dates per account, and a failing fetch is visible', async () => {
  const m = await setupMerchant(tg);
  const { scheduleFetches, queueFetch } = await import('../src/settlements/fetch.ts');
  const queued = await scheduleFetches(tg.gateway.ctx);
  assert.ok(queued >= 2, `queued ${queued}`);
  const { rows } = await tg.gateway.ctx.db.query(
    "SELECT id FROM settlement_imports WHERE merchant_id = $1 AND source = 'fetch'",
    [m.id],
  );
  assert.equal(rows.length, 2);
  for (const row of rows) {
    const job = await waitJob(tg, m.secretKey, row.id);
    assert.equal(job.status, 'completed', JSON.stringify(job));
  }
  assert.equal(await scheduleFetches(tg.gateway.ctx), 0, 'a date is fetched once');
  // An account that cannot be loaded any more: retried, then failed with the reason.
  await tg.gateway.ctx.db.query(
    `INSERT INTO provider_accounts (id, merchant_id, provider, wallets, credentials, deleted_at)
     VALUES ('pva_missing', $1, 'retired', '{alipay}', '\\x00', now())`,
    [m.id],
  );
  const id = await queueFetch(
    tg.gateway.ctx,
    { id: 'pva_missing', merchant_id: m.id, provider: 'sandbox' },
    today(),
    { attempts: 2, backoffMs: 50 },
  );
  const failed = await waitJob(tg, m.secretKey, id);
  assert.equal(failed.status, 'failed');
  assert.equal(failed.error.code, 'fetch_failed');
  assert.match(failed.error.message, /pva_missing/);
  assert.equal(failed.attempts, 2);
  const list = await tg.http.get('/v1/settlements/imports').set('Authorization', `Bearer ${m.secretKey}`);
  assert.ok(list.body.data.some((j: { id: string; status: string }) => j.id === id && j.status === 'failed'));
});

test('an Antom account on real credentials is not fetched (Antom gives its files over SFTP): 400 on demand, none scheduled', async () => {
  const m = await setupMerchant(tg, 'Live Antom shop');
  const pem = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ours = pem();
  const antom = pem();
  await tg.http
    .put('/v1/providers/alipay')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .send({
      wallets: ['alipay'],
      client_id: 'LIVE_FETCH_1',
      private_key: ours.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      alipay_public_key: antom.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    })
    .expect(201);
  const asked = await tg.http
    .post('/v1/settlements/fetches')
    .set('Authorization', `Bearer ${m.secretKey}`)
    .send({ provider: 'alipay', date: today() })
    .expect(400);
  assert.equal(asked.body.error.code, 'fetch_unsupported');
  const { scheduleFetches } = await import('../src/settlements/fetch.ts');
  await scheduleFetches(tg.gateway.ctx);
  const { rows } = await tg.gateway.ctx.db.query(
    "SELECT provider FROM settlement_imports WHERE merchant_id = $1 AND source = 'fetch'",
    [m.id],
  );
  // Its sandbox account's dates only.
  assert.ok(rows.length > 0);
  assert.deepEqual(
    rows.filter((row) => row.provider === 'alipay'),
    [],
    'no import made for it',
  );
});

test('a scheduled fetch that failed is tried again on the next tick', async () => {
  const m = await setupMerchant(tg);
  const { scheduleFetches, queueFetch } = await import('../src/settlements/fetch.ts');
  const { providerModule } = await import('../adapters/index.ts');
  const adapter = providerModule('sandbox')?.adapter;
  assert.ok(adapter?.fetchSettlement);
  const ctx = tg.gateway.ctx;
  await scheduleFetches(ctx);
  const { rows } = await ctx.db.query<{ id: string; account: string; date: string }>(
    `SELECT id, provider_account_id AS account, to_char(fetch_date, 'YYYY-MM-DD') AS date
       FROM settlement_imports WHERE merchant_id = $1 AND source = 'fetch' ORDER BY fetch_date LIMIT 1`,
    [m.id],
  );
  const [scheduled] = rows;
  await waitJob(tg, m.secretKey, scheduled.id);
  // Replay that date's fetch as one the provider failed, leaving bull's failed job behind.
  await ctx.db.query('DELETE FROM settlement_imports WHERE id = $1', [scheduled.id]);
  await (await ctx.queues.settlement.getJob(scheduled.id))?.remove();
  const original = adapter.fetchSettlement;
  adapter.fetchSettlement = async () => {
    throw new Error('provider down');
  };
  try {
    await queueFetch(ctx, { id: scheduled.account, merchant_id: m.id, provider: 'sandbox' }, scheduled.date, {
      importId: scheduled.id,
      attempts: 1,
    });
    assert.equal((await waitJob(tg, m.secretKey, scheduled.id)).status, 'failed');
  } finally {
    adapter.fetchSettlement = original;
  }
  assert.ok((await scheduleFetches(ctx)) >= 1);
  const retried = await waitJob(tg, m.secretKey, scheduled.id);
  assert.equal(retried.status, 'completed', JSON.stringify(retried));
});

test('a tick that meets a fetch still running leaves it for the next tick, which then retries it', async () => {
  const m = await setupMerchant(tg);
  const { scheduleFetches } = await import('../src/settlements/fetch.ts');
  const { providerModule } = await import('../adapters/index.ts');
  const adapter = providerModule('sandbox')?.adapter;
  assert.ok(adapter?.fetchSettlement);
  const ctx = tg.gateway.ctx;
  const imports = async () =>
    (
      await ctx.db.query<{ id: string; status: string }>(
        "SELECT id, status FROM settlement_imports WHERE merchant_id = $1 AND source = 'fetch' ORDER BY id",
        [m.id],
      )
    ).rows;
  const original = adapter.fetchSettlement;
  const gate = signal();
  let started = 0;
  adapter.fetchSettlement = async () => {
    started += 1;
    await gate.settled;
    throw new Error('provider down');
  };
  try {
    assert.equal(await scheduleFetches(ctx), 2);
    await eventually(async () => started === 2, 10_000, 'both fetches to start');
    // Failed from inside their still-running jobs, as a last attempt does.
    await ctx.db.query("UPDATE settlement_imports SET status = 'failed' WHERE merchant_id = $1", [m.id]);
    assert.equal(await scheduleFetches(ctx), 0);
    assert.deepEqual(
      (await imports()).map((i) => i.status),
      ['failed', 'failed'],
    );
  } finally {
    gate.settle();
    adapter.fetchSettlement = original;
  }
  await eventually(
    async () => {
      const states = await Promise.all(
        (await imports()).map(async (i) => (await ctx.queues.settlement.getJob(i.id))?.getState()),
      );
      return states.every((state) => state !== 'active' && state !== 'waiting');
    },
    10_000,
    'the blocked fetches to end',
  );
  assert.equal(await scheduleFetches(ctx), 2);
  for (const { id } of await imports())
    assert.equal((await waitJob(tg, m.secretKey, id)).status, 'completed');
});

test('a malformed fetched file fails its import at once (no retry), and nothing is stored', async () => {
  const m = await setupMerchant(tg);
  const { queueFetch } = await import('../src/settlements/fetch.ts');
  const { providerModule } = await import('../adapters/index.ts');
  const adapter = providerModule('sandbox')?.adapter;
  assert.ok(adapter?.fetchSettlement);
  const original = adapter.fetchSettlement;
  const { rows } = await tg.gateway.ctx.db.query<{ id: string }>(
    "SELECT id FROM provider_accounts WHERE merchant_id = $1 AND provider = 'sandbox' AND deleted_at IS NULL",
    [m.id],
  );
  adapter.fetchSettlement = async () =>
    Readable.from([
      Buffer.from(
        `${SANDBOX_HEADER}\nF-1,payment,sbx_f1,,,10.50,EUR,1050,EUR,19,1,${today()}T12:00:00Z,,W\n`,
      ),
    ]);
  try {
    const id = await queueFetch(
      tg.gateway.ctx,
      { id: rows[0].id, merchant_id: m.id, provider: 'sandbox' },
      today(),
      { attempts: 3, backoffMs: 50 },
    );
    const job = await waitJob(tg, m.secretKey, id);
    assert.equal(job.status, 'failed', JSON.stringify(job));
    assert.equal(job.error.code, 'settlement_file_invalid');
    assert.match(job.error.message, /line 2: amount "10.50"/);
    assert.equal(job.error.line, 2);
    assert.equal(job.attempts, 1);
    await nothingImported(m.id, 1);
  } finally {
    adapter.fetchSettlement = original;
  }
});

test('lines are stored once: a re-imported file adds none, a corrected one keeps both versions', async () => {
  const m = await setupMerchant(tg);
  const p = await Promise.all([7000, 7100].map((v) => pay(tg, m, v)));
  const file = sandboxCsv(
    p.map((x) => lineFor(x)),
    'ONCE-1',
  );
  await importAndWait(tg, m.secretKey, file);
  assert.equal(await storedLines(m.id), 2);
  const again = await importAndWait(tg, m.secretKey, file);
  assert.equal(again.counts.batches_unchanged, 1);
  assert.equal(await storedLines(m.id), 2, 'the unchanged batch keeps its own lines');
  const corrected = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p[0])], 'ONCE-1'));
  assert.equal(corrected.counts.batches_superseded, 1);
  assert.equal(await storedLines(m.id), 3, 'the superseded version keeps its lines for the audit trail');
  const [batch] = await settlements(tg, m.secretKey);
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, batch.id)).map((l) => [l.payment_id, l.result]),
    [[p[0].id, 'matched']],
  );
});

test('the same lines in another order change nothing; a correction with the same totals still supersedes', async () => {
  const m = await setupMerchant(tg);
  const p = await Promise.all([7200, 7300, 7400].map((v) => pay(tg, m, v)));
  // An amount mismatch on the last line, so a new version would close and open its discrepancy.
  const lines = [lineFor(p[0]), lineFor(p[1]), lineFor(p[2], { amount: 7401, settlement_amount: 7401 })];
  const first = await importAndWait(tg, m.secretKey, sandboxCsv(lines, 'ORDER-1'));
  assert.equal(first.counts.batches_created, 1);
  const [before] = await discrepancies(tg, m.secretKey);
  const reordered = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lines[2], lines[0], lines[1]], 'ORDER-1'),
  );
  assert.equal(reordered.counts.batches_unchanged, 1, JSON.stringify(reordered.counts));
  assert.equal(reordered.counts.batches_superseded, 0);
  // The header names capitalised, as a spreadsheet may save them: the same file.
  const file = sandboxCsv(lines, 'ORDER-1');
  const newline = file.indexOf('\n');
  const shouting = `${file.slice(0, newline).toUpperCase()}${file.slice(newline)}`;
  const capitalised = await importAndWait(tg, m.secretKey, shouting);
  assert.equal(capitalised.counts.batches_unchanged, 1, JSON.stringify(capitalised));
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.version, 1);
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => d.id),
    [before.id],
    'the discrepancy stays as it was',
  );
  // The same count, gross and fees, but 100 moved from one payment to another: a correction.
  const moved = [
    lineFor(p[0], { amount: 7300, settlement_amount: 7300 }),
    lineFor(p[1], { amount: 7200, settlement_amount: 7200 }),
    lines[2],
  ];
  const corrected = await importAndWait(tg, m.secretKey, sandboxCsv(moved, 'ORDER-1'));
  assert.equal(corrected.counts.batches_superseded, 1, JSON.stringify(corrected.counts));
  assert.deepEqual((await discrepancies(tg, m.secretKey)).map((d) => d.kind).sort(), [
    'amount_mismatch',
    'amount_mismatch',
    'amount_mismatch',
  ]);
});
