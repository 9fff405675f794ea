/** Reconciliation through the API: every discrepancy kind planted, clean files, re-imports, corrections, tenancy. */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { receiveFile } from '../src/settlements/receive.ts';
import { reconcileImport } from '../src/settlements/reconcile.ts';
import {
  createPayment,
  eventually,
  qrPayment,
  scanPayment,
  setupMerchant,
  startTestGateway,
  type TestGateway,
  waitForStatus,
} from './helpers.ts';
import {
  batchLines,
  discrepancies,
  importAndWait,
  importFile,
  lineFor,
  type PaidPayment,
  pay,
  refundLineFor,
  refundPart,
  reversedSale,
  SANDBOX_HEADER,
  type SandboxLine,
  sandboxCsv,
  settlements,
  undecidedSale,
  waitAwaiting,
  waitJob,
} from './settlement-helpers.ts';

let tg: TestGateway;
before(async () => {
  tg = await startTestGateway();
});
after(async () => {
  await tg.stop();
});

const kinds = (list: Record<string, unknown>[]) => list.map((d) => d.kind as string).sort();

test('a clean file reconciles: batch totals, lines matched, payments marked settled, event emitted', async () => {
  const m = await setupMerchant(tg);
  const a = await pay(tg, m, 1000);
  const b = await pay(tg, m, 2500);
  const job = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(a), lineFor(b, { fee: 50 })], 'CLEAN-1'),
  );
  assert.equal(job.status, 'completed');
  assert.equal(job.counts.lines, 2);
  assert.equal(job.counts.matched, 2);
  assert.equal(job.counts.discrepancies, 0);
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.status, 'reconciled');
  assert.equal(batch.provider, 'sandbox');
  assert.equal(batch.count, 2);
  assert.equal(batch.currency, 'EUR');
  assert.equal(batch.gross, 3500);
  assert.equal(batch.fees, 18 + 50);
  assert.equal(batch.net, 3500 - 68);
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const lines = await tg.http
    .get(`/v1/settlements/${batch.id}/lines`)
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(lines.status, 200);
  assert.deepEqual(
    lines.body.data.map((l: { payment_id: string; result: string }) => [l.payment_id, l.result]),
    [
      [a.id, 'matched'],
      [b.id, 'matched'],
    ],
  );
  const marked = await tg.gateway.ctx.db.query(
    'SELECT payment_id, settlement_id, fee_value FROM payment_settlements WHERE payment_id = ANY($1) ORDER BY fee_value',
    [[a.id, b.id]],
  );
  assert.deepEqual(
    marked.rows.map((r) => [r.settlement_id, r.fee_value]),
    [
      [batch.id, 18],
      [batch.id, 50],
    ],
  );
  const events = await tg.gateway.ctx.db.query(
    "SELECT payload FROM outbox WHERE merchant_id = $1 AND type = 'settlement.reconciled'",
    [m.id],
  );
  assert.equal(events.rowCount, 1);
  assert.equal(events.rows[0].payload.data.object.id, batch.id);
});

test("a batch's lines page with limit and starting_after; a line of another batch is no cursor", async () => {
  const m = await setupMerchant(tg);
  const [a, b, c] = await Promise.all([1100, 1200, 1300].map((v) => pay(tg, m, v)));
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(a), lineFor(b)], 'PAGE-1'));
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(c)], 'PAGE-2'));
  const batches = await settlements(tg, m.secretKey);
  const batchOf = (ref: string) => batches.find((s) => s.provider_batch_id === ref) as { id: string };
  const page = (batch: string, query: string) =>
    tg.http.get(`/v1/settlements/${batch}/lines?${query}`).set('Authorization', `Bearer ${m.secretKey}`);
  const first = await page(batchOf('PAGE-1').id, 'limit=1');
  assert.equal(first.body.has_more, true);
  const second = await page(batchOf('PAGE-1').id, `limit=1&starting_after=${first.body.data[0].id}`);
  assert.equal(second.body.has_more, false);
  assert.deepEqual([first.body.data[0].payment_id, second.body.data[0].payment_id], [a.id, b.id]);
  const other = await page(batchOf('PAGE-2').id, 'limit=1');
  const foreign = await page(batchOf('PAGE-1').id, `starting_after=${other.body.data[0].id}`);
  assert.equal(foreign.status, 400);
  assert.equal(foreign.body.error.param, 'starting_after');
  // A corrected file replaces the batch's lines while a back office walks them: it is told so.
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(a), lineFor(b, { fee: 1 })], 'PAGE-1'));
  const overtaken = await page(batchOf('PAGE-1').id, `limit=1&starting_after=${first.body.data[0].id}`);
  assert.deepEqual(
    [overtaken.status, overtaken.body.error?.type, overtaken.body.error?.code],
    [409, 'conflict', 'settlement_superseded'],
  );
});

test('a job plans its joins with the ledger counted as it is now, also where PostgreSQL runs no autovacuum', async () => {
  // This machine's PostgreSQL runs without autovacuum: what the planner knew of the ledger is what
  // the last ANALYZE saw. Taken for a handful, thousands of new payments were joined by nested
  // loops, and a 10,000-line file took a minute, holding the merchant's other files behind it.
  const fresh = await startTestGateway(); // a ledger never analyzed
  try {
    const m = await setupMerchant(fresh);
    const paid: PaidPayment[] = [];
    for (let i = 0; i < 4; i++)
      paid.push(
        ...(await Promise.all([...Array(20)].map((_, j) => pay(fresh, m, 100_000 + (i * 20 + j) * 100)))),
      );
    await importAndWait(
      fresh,
      m.secretKey,
      sandboxCsv(
        paid.map((p) => lineFor(p)),
        'STATS-1',
      ),
    );
    const { rows } = await fresh.gateway.ctx.db.query<{ known: number; counted: number }>(
      `SELECT (SELECT reltuples::int FROM pg_class WHERE relname = 'payments' AND relkind = 'r') AS known,
              (SELECT count(*)::int FROM payments) AS counted`,
    );
    assert.equal(rows[0].known, rows[0].counted, 'the planner counts every payment');
  } finally {
    await fresh.stop();
  }
});

test('each discrepancy kind, planted, is reported exactly once, and nothing else', async () => {
  const m = await setupMerchant(tg);
  const ok = await pay(tg, m, 1000);
  const amount = await pay(tg, m, 1100);
  const currency = await pay(tg, m, 1200);
  const dup = await pay(tg, m, 1300);
  const missing = await pay(tg, m, 1400);
  const failed = await createPayment(tg, m.secretKey, scanPayment(1551));
  assert.equal(failed.body.status, 'failed');
  const file = sandboxCsv(
    [
      lineFor(ok),
      lineFor(amount, { amount: 1101 }),
      lineFor(currency, { currency: 'USD' }),
      lineFor(dup),
      lineFor(dup),
      { transaction_id: 'sbx_never_seen', request_id: 'pay_unknown', amount: 777 },
      {
        transaction_id: failed.body.provider_reference ?? 'sbx_failed',
        request_id: failed.body.id,
        amount: 1551,
      },
    ],
    'PLANTED-1',
  );
  const job = await importAndWait(tg, m.secretKey, file);
  assert.equal(job.status, 'completed', JSON.stringify(job));
  // The job's times span its work: finished when it committed, not when its transaction began.
  const took = Date.parse(job.finished_at) - Date.parse(job.started_at);
  assert.ok(took >= job.counts.timings_ms.apply, `${took} ms for ${JSON.stringify(job.counts.timings_ms)}`);
  const found = await discrepancies(tg, m.secretKey);
  assert.deepEqual(kinds(found), [
    'amount_mismatch',
    'currency_mismatch',
    'duplicate_in_settlement',
    'missing_in_ledger',
    'missing_in_settlement',
    'status_mismatch',
  ]);
  const by = Object.fromEntries(found.map((d) => [d.kind as string, d]));
  assert.equal(by.amount_mismatch.payment_id, amount.id);
  assert.deepEqual(by.amount_mismatch.expected, { value: 1100, currency: 'EUR' });
  assert.deepEqual(by.amount_mismatch.actual, { value: 1101, currency: 'EUR' });
  // Not "1101 EUR", which a merchant reads as a hundred times the amount.
  assert.match(
    by.amount_mismatch.detail as string,
    /: the provider reports 1101, the ledger has 1100 \(minor units of EUR\)$/,
  );
  assert.equal(by.currency_mismatch.payment_id, currency.id);
  assert.equal(by.duplicate_in_settlement.payment_id, dup.id);
  assert.equal(by.missing_in_ledger.provider_reference, 'sbx_never_seen');
  assert.equal(by.missing_in_settlement.payment_id, missing.id);
  assert.equal(by.missing_in_settlement.provider_reference, missing.provider_reference);
  // Found the same day: not by the settlement delay, which has not passed, and it says so.
  assert.match(
    by.missing_in_settlement.detail as string,
    /the provider has settled other payments in EUR of that day/,
  );
  assert.equal(by.status_mismatch.payment_id, failed.body.id);
  for (const d of found) {
    assert.match(d.id as string, /^dsc_/);
    assert.equal(d.provider, 'sandbox');
    assert.match(d.settlement_id as string, /^stl_/);
    assert.equal(typeof d.detail, 'string');
  }
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.status, 'discrepancies');
  // The batch's lines (line 1 is the file's header) by result, a page at a time.
  const linesWith = async (query: string) => {
    const res = await tg.http
      .get(`/v1/settlements/${batch.id}/lines?${query}`)
      .set('Authorization', `Bearer ${m.secretKey}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body as { data: { id: string; line_no: number; result: string }[]; has_more: boolean };
  };
  const matched = await linesWith('result=matched');
  assert.deepEqual(
    matched.data.map((l) => [l.line_no, l.result]),
    [
      [2, 'matched'],
      [5, 'matched'],
    ],
  );
  const firstMismatch = await linesWith('result=amount_mismatch&limit=1');
  assert.deepEqual([firstMismatch.data.map((l) => l.line_no), firstMismatch.has_more], [[3], false]);
  const duplicates = await linesWith('result=duplicate_in_settlement&limit=1');
  assert.deepEqual([duplicates.data.map((l) => l.line_no), duplicates.has_more], [[6], false]);
  const all = await linesWith('limit=3');
  assert.deepEqual([all.data.map((l) => l.line_no), all.has_more], [[2, 3, 4], true]);
  const rest = await linesWith(`limit=3&starting_after=${all.data[2].id}`);
  assert.deepEqual([rest.data.map((l) => l.line_no), rest.has_more], [[5, 6, 7], true]);
  // Opaque: a line's id does not count the lines every merchant has imported.
  for (const line of [...all.data, ...rest.data]) assert.match(line.id, /^ln_[\w-]{22}$/);
  const madeUp = await tg.http
    .get(`/v1/settlements/${batch.id}/lines?starting_after=ln_1`)
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(madeUp.status, 400);
  // Filters.
  const onlyAmount = await discrepancies(tg, m.secretKey, '&kind=amount_mismatch');
  assert.deepEqual(kinds(onlyAmount), ['amount_mismatch']);
  assert.equal((await discrepancies(tg, m.secretKey, `&settlement_id=${batch.id}`)).length, 6);
  assert.equal((await discrepancies(tg, m.secretKey, '&provider=alipay')).length, 0);
  const bad = await tg.http
    .get('/v1/reconciliation/discrepancies?kind=bogus')
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.type, 'invalid_request');
  const events = await tg.gateway.ctx.db.query(
    "SELECT count(*)::int AS n FROM outbox WHERE merchant_id = $1 AND type = 'reconciliation.discrepancy'",
    [m.id],
  );
  assert.equal(events.rows[0].n, 6);

  // The same file again changes nothing.
  const again = await importAndWait(tg, m.secretKey, file);
  assert.equal(again.status, 'completed');
  assert.equal(again.counts.batches_unchanged, 1);
  assert.equal(again.counts.discrepancies, 0);
  // Every line is accounted for: matched by the first import.
  assert.equal(again.counts.lines_unchanged, again.counts.lines);
  assert.ok(again.counts.lines > 0);
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => d.id).sort(),
    found.map((d) => d.id).sort(),
  );
  const [same] = await settlements(tg, m.secretKey);
  assert.deepEqual(same, batch);

  // A corrected file for the same batch supersedes it, with an audit trail.
  const corrected = sandboxCsv(
    [lineFor(ok), lineFor(amount), lineFor(currency), lineFor(dup), lineFor(missing)],
    'PLANTED-1',
  );
  const fixed = await importAndWait(tg, m.secretKey, corrected);
  assert.equal(fixed.status, 'completed');
  assert.equal(fixed.counts.batches_superseded, 1);
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const [v2] = await settlements(tg, m.secretKey);
  assert.equal(v2.id, batch.id);
  assert.equal(v2.version, 2);
  assert.equal(v2.status, 'reconciled');
  assert.equal(v2.count, 5);
  const detail = await tg.http
    .get(`/v1/settlements/${batch.id}`)
    .set('Authorization', `Bearer ${m.secretKey}`);
  assert.equal(detail.body.versions.length, 2);
  assert.equal(detail.body.versions[0].superseded_by, fixed.id);
  assert.equal(detail.body.versions[0].discrepancies, 6);
  assert.equal(detail.body.versions[1].discrepancies, 0);
  const closed = await tg.gateway.ctx.db.query(
    "SELECT count(*)::int AS n FROM reconciliation_discrepancies WHERE merchant_id = $1 AND closed_reason = 'superseded'",
    [m.id],
  );
  assert.equal(closed.rows[0].n, 6);

  // The first file sent again after the correction changes nothing either: it does not undo it.
  const old = await importAndWait(tg, m.secretKey, file);
  assert.equal(old.counts.batches_unchanged, 1);
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  assert.deepEqual(await settlements(tg, m.secretKey), [v2]);
});

test('a file imported again, or one with no lines, changes nothing, though payments were made since', async () => {
  const m = await setupMerchant(tg);
  const a = await pay(tg, m, 1700);
  const file = sandboxCsv([lineFor(a)], 'AGAIN-1');
  const first = await importAndWait(tg, m.secretKey, file);
  assert.equal(first.counts.discrepancies, 0, JSON.stringify(first));
  const [batch] = await settlements(tg, m.secretKey);
  // Paid today and in no file yet: not for these imports to report.
  await pay(tg, m, 1800);
  const again = await importAndWait(tg, m.secretKey, file);
  assert.equal(again.status, 'completed');
  assert.equal(again.counts.batches_unchanged, 1);
  assert.equal(again.counts.discrepancies, 0, JSON.stringify(again));
  const empty = await importAndWait(tg, m.secretKey, `${SANDBOX_HEADER}\n`);
  assert.equal(empty.status, 'completed');
  assert.equal(empty.counts.discrepancies, 0, JSON.stringify(empty));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  assert.deepEqual(await settlements(tg, m.secretKey), [batch]);
});

test('a correction that takes a payment out of its batch leaves it settled by the batch that repeated it', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 1900);
  const q = await pay(tg, m, 2000);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p), lineFor(q)], 'MOVE-A'));
  // B names p by our request id only: what the job decides of that line is recorded.
  const b = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(p, { transaction_id: 'sbx_moved' })], 'MOVE-B', tomorrow),
  );
  assert.deepEqual(b.counts.by_kind, { duplicate_in_settlement: 1 });
  // The provider corrects batch A: p was never in it, it belongs to B alone.
  const fixed = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(q)], 'MOVE-A'));
  assert.equal(fixed.status, 'completed', JSON.stringify(fixed));
  assert.equal(fixed.counts.batches_superseded, 1);
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const batches = Object.fromEntries(
    (await settlements(tg, m.secretKey)).map((s) => [s.provider_batch_id, s]),
  );
  assert.equal(batches['MOVE-B'].status, 'reconciled');
  assert.equal(batches['MOVE-A'].status, 'reconciled');
  const lines = await batchLines(tg, m.secretKey, batches['MOVE-B'].id);
  assert.deepEqual(
    lines.map((l) => [l.payment_id, l.result]),
    [[p.id, 'matched']],
  );
  const marked = await tg.gateway.ctx.db.query(
    'SELECT settlement_id FROM payment_settlements WHERE payment_id = $1',
    [p.id],
  );
  assert.deepEqual(marked.rows, [{ settlement_id: batches['MOVE-B'].id }]);
  // What is recorded of B's line stays B's: with the import its lines came with.
  const results = await tg.gateway.ctx.db.query(
    `SELECT x.result, x.import_id = l.import_id AS own_import
       FROM settlement_line_results x JOIN settlement_lines l ON l.id = x.line_id WHERE x.settlement_id = $1`,
    [batches['MOVE-B'].id],
  );
  assert.deepEqual(results.rows, [{ result: 'matched', own_import: true }]);
});

test('a correction that takes a refund or a cancel out of its batch leaves it settled by the batch that repeated it', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 2100);
  const refundLine = await refundLineFor(tg, p, await refundPart(tg, m, p, 400), 400);
  const { cancel: cancelLine } = await reversedSale(tg, m, 2157);
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p), refundLine, cancelLine], 'RC-A'));
  const repeated = await importAndWait(tg, m.secretKey, sandboxCsv([refundLine, cancelLine], 'RC-B'));
  assert.deepEqual(repeated.counts.by_kind, { duplicate_in_settlement: 2 }, JSON.stringify(repeated.counts));
  // The provider corrects A: the refund and the cancel belong to B alone.
  const fixed = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p)], 'RC-A'));
  assert.equal(fixed.counts.batches_superseded, 1, JSON.stringify(fixed.counts));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const batches = Object.fromEntries(
    (await settlements(tg, m.secretKey)).map((b) => [b.provider_batch_id, b]),
  );
  assert.equal(batches['RC-B'].status, 'reconciled');
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, batches['RC-B'].id)).map((l) => [l.type, l.result]),
    [
      ['refund', 'matched'],
      ['cancel', 'matched'],
    ],
  );
  const closed = await discrepancies(tg, m.secretKey, '&status=closed');
  assert.deepEqual(
    closed.map((d) => [d.kind, d.closed_reason]),
    [
      ['duplicate_in_settlement', 'resolved'],
      ['duplicate_in_settlement', 'resolved'],
    ],
  );
});

test('two refunds of one sale, each line naming the sale and its own refund request id, are two refunds settled, not one twice', async () => {
  const m = await setupMerchant(tg);
  // As Antom's Chinese page has a refund: its transaction id the sale's, our refund id beside it.
  const named = (p: PaidPayment, refund: { id: string }, amount: number, original: string): SandboxLine => ({
    type: 'refund',
    transaction_id: p.provider_reference,
    original_transaction_id: original,
    request_id: refund.id,
    amount,
    fee: 0,
  });
  for (const [n, withOriginal] of [false, true].entries()) {
    const p = await pay(tg, m, 6000 + n * 100);
    const first = await refundPart(tg, m, p, 1000);
    const second = await refundPart(tg, m, p, 2000);
    const original = withOriginal ? p.provider_reference : '';
    const job = await importAndWait(
      tg,
      m.secretKey,
      sandboxCsv([lineFor(p), named(p, first, 1000, original), named(p, second, 2000, original)], `TWO-${n}`),
    );
    assert.deepEqual([job.counts.by_kind, job.counts.matched], [{}, 3], JSON.stringify(job.counts));
  }
  // The same refund's line twice is still one refund settled twice.
  const p = await pay(tg, m, 6200);
  const refund = await refundPart(tg, m, p, 1000);
  const twice = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(p), named(p, refund, 1000, ''), named(p, refund, 1000, '')], 'TWO-TWICE'),
  );
  assert.deepEqual(twice.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(twice.counts));
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => [d.kind, d.refund_id]),
    [['duplicate_in_settlement', refund.id]],
  );
});

test('a correction that takes away the cancel of a reversed sale leaves its payment line, in another batch, a status_mismatch', async () => {
  const m = await setupMerchant(tg);
  for (const [n, order] of ['one file', 'payment first', 'cancel first'].entries()) {
    const { p, payment, cancel } = await reversedSale(tg, m, 8057 + n * 100);
    const paid = { ...payment, batch_id: `UNREV-${n}-PAID` };
    const reversal = [
      { ...cancel, batch_id: `UNREV-${n}-REV` },
      { transaction_id: `sbx_unknown_${p.id}`, amount: 100, batch_id: `UNREV-${n}-REV` },
    ];
    if (order === 'one file') await importAndWait(tg, m.secretKey, sandboxCsv([paid, ...reversal]));
    else
      for (const lines of order === 'payment first' ? [[paid], reversal] : [reversal, [paid]])
        await importAndWait(tg, m.secretKey, sandboxCsv(lines));
    assert.deepEqual(
      (await discrepancies(tg, m.secretKey)).filter((d) => d.payment_id === p.id),
      [],
      `${order}: paid and reversed`,
    );
    // The provider corrects the batch of the cancel: the sale was not reversed after all.
    const fixed = await importAndWait(tg, m.secretKey, sandboxCsv(reversal.slice(1)));
    assert.equal(fixed.counts.batches_superseded, 1, JSON.stringify(fixed.counts));
    assert.deepEqual(
      fixed.counts.by_kind,
      { missing_in_ledger: 1, status_mismatch: 1 },
      `${order}: ${JSON.stringify(fixed.counts)}`,
    );
    assert.deepEqual(
      (await discrepancies(tg, m.secretKey))
        .filter((d) => d.payment_id === p.id)
        .map((d) => [d.kind, d.provider_reference]),
      [['status_mismatch', p.provider_reference]],
      order,
    );
    const marks = await tg.gateway.ctx.db.query('SELECT 1 FROM payment_settlements WHERE payment_id = $1', [
      p.id,
    ]);
    assert.equal(marks.rowCount, 0, `${order}: a canceled sale with no reversal is not settled`);
    const batch = (await settlements(tg, m.secretKey)).find((b) => b.provider_batch_id === paid.batch_id);
    assert.equal(batch?.status, 'discrepancies', order);
  }
});

test('a late settlement resolves missing_in_settlement; refunds are matched by their own ids', async () => {
  const m = await setupMerchant(tg);
  const a = await pay(tg, m, 3000);
  const b = await pay(tg, m, 3100);
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(b)], 'DAY-1'));
  assert.deepEqual(kinds(await discrepancies(tg, m.secretKey)), ['missing_in_settlement']);
  const refund = await refundPart(tg, m, b, 500);
  const stored = await tg.gateway.ctx.db.query('SELECT provider_reference FROM refunds WHERE id = $1', [
    refund.id,
  ]);
  // A refund made before refunds were looked for in settlement files (migration 109) is not reported.
  const before = await refundPart(tg, m, a, 300);
  await tg.gateway.ctx.db.query('UPDATE refunds SET settlement_expected = false WHERE id = $1', [before.id]);
  // A file settling a payment of the day and not the refund made that day: the refund is missing.
  const c = await pay(tg, m, 3200);
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(c)], 'DAY-0'));
  const missingRefunds = (await discrepancies(tg, m.secretKey, '&kind=missing_in_settlement')).filter(
    (d) => d.refund_id,
  );
  assert.equal(missingRefunds.length, 1, JSON.stringify(missingRefunds));
  const [missingRefund] = missingRefunds;
  assert.ok(missingRefund, 'the refund is reported missing');
  assert.equal(missingRefund.refund_id, refund.id);
  assert.equal(missingRefund.payment_id, undefined);
  assert.equal(missingRefund.provider_reference, stored.rows[0].provider_reference);
  assert.deepEqual(missingRefund.expected, { value: 500, currency: 'EUR' });
  const job = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv(
      [
        lineFor(a),
        {
          type: 'refund',
          transaction_id: stored.rows[0].provider_reference ?? 'sbx_refund',
          original_transaction_id: b.provider_reference,
          request_id: refund.id,
          amount: 500,
          fee: 0,
        },
      ],
      'DAY-2',
    ),
  );
  assert.equal(job.status, 'completed');
  assert.equal(job.counts.matched, 2, JSON.stringify(job.counts));
  // Its line closes the refund's missing_in_settlement, as a's closes a's.
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  // Closed ones stay listable, with when and why.
  const closed = await discrepancies(tg, m.secretKey, '&status=closed');
  assert.deepEqual(
    closed.map((d) => [d.payment_id ?? d.refund_id, d.closed_reason]).sort(),
    [
      [a.id, 'resolved'],
      [refund.id, 'resolved'],
    ].sort(),
  );
  assert.ok(closed.every((d) => typeof d.closed_at === 'string'));
  assert.equal((await discrepancies(tg, m.secretKey, '&status=all')).length, closed.length);
  const batches = await settlements(tg, m.secretKey);
  const day2 = batches.find((s) => s.provider_batch_id === 'DAY-2');
  assert.equal(day2?.gross, 3000 - 500);
  // The earlier batches' discrepancies are all closed: they are reconciled now, and the merchant
  // is told so, though DAY-2's file did not change them.
  assert.deepEqual(batches.map((s) => [s.provider_batch_id, s.status]).sort(), [
    ['DAY-0', 'reconciled'],
    ['DAY-1', 'reconciled'],
    ['DAY-2', 'reconciled'],
  ]);
  const events = await tg.gateway.ctx.db.query<{ batch: string; status: string }>(
    `SELECT payload->'data'->'object'->>'provider_batch_id' AS batch, payload->'data'->'object'->>'status' AS status
       FROM outbox WHERE merchant_id = $1 AND type = 'settlement.reconciled' ORDER BY id`,
    [m.id],
  );
  assert.deepEqual(
    events.rows.map((e) => [e.batch, e.status]),
    [
      ['DAY-1', 'discrepancies'],
      ['DAY-0', 'discrepancies'],
      ['DAY-0', 'reconciled'],
      ['DAY-1', 'reconciled'],
      ['DAY-2', 'reconciled'],
    ],
  );
});

test("one currency's batch of a day says nothing of another's, which may come in a file of its own", async () => {
  const m = await setupMerchant(tg);
  const usd = { amount: { value: 0, currency: 'USD' } };
  const euro = await pay(tg, m, 1500);
  const dollars = await Promise.all(
    [1600, 1700, 1800].map((v) => pay(tg, m, v, { amount: { ...usd.amount, value: v } })),
  );
  const euroJob = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(euro)], 'DAY-EUR'));
  assert.equal(euroJob.counts.discrepancies, 0, JSON.stringify(euroJob.counts));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  // The dollars' own file, one of them left out: that one is missing, found by the other two.
  const asUsd = (p: (typeof dollars)[number]) => lineFor(p, { currency: 'USD', settlement_currency: 'USD' });
  await importAndWait(tg, m.secretKey, sandboxCsv([asUsd(dollars[0]), asUsd(dollars[1])], 'DAY-USD'));
  const found = await discrepancies(tg, m.secretKey);
  assert.deepEqual(
    found.map((d) => [d.kind, d.payment_id]),
    [['missing_in_settlement', dollars[2].id]],
  );
  assert.match(found[0].detail as string, /other payments in USD of that day/);
  const usdBatch = (await settlements(tg, m.secretKey)).find((b) => b.provider_batch_id === 'DAY-USD');
  assert.equal(found[0].settlement_id, usdBatch?.id);
  // Sold in pounds, settled in euros: the sale currency is what the rule compares.
  const pounds = await Promise.all(
    [1610, 1710, 1810].map((v) => pay(tg, m, v, { amount: { value: v, currency: 'GBP' } })),
  );
  const inEuros = (p: (typeof pounds)[number]) =>
    lineFor(p, { currency: 'GBP', settlement_currency: 'EUR', settlement_amount: p.amount + 200 });
  await importAndWait(tg, m.secretKey, sandboxCsv([inEuros(pounds[0]), inEuros(pounds[1])], 'DAY-GBP'));
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => [d.kind, d.payment_id]).sort(),
    [
      ['missing_in_settlement', dollars[2].id],
      ['missing_in_settlement', pounds[2].id],
    ].sort(),
  );
});

test('a sale paid and then reversed, its payment and cancel lines in two files in either order, is matched', async () => {
  const m = await setupMerchant(tg);
  const first = await reversedSale(tg, m, 7057);
  const second = await reversedSale(tg, m, 7157);
  // The payment's line first: the ledger's canceled sale was settled, until its cancel comes.
  const day1 = await importAndWait(tg, m.secretKey, sandboxCsv([first.payment, second.cancel], 'REV-1'));
  assert.deepEqual(day1.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(day1.counts));
  const day2 = await importAndWait(tg, m.secretKey, sandboxCsv([first.cancel, second.payment], 'REV-2'));
  assert.deepEqual(day2.counts.by_kind, {}, JSON.stringify(day2.counts));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const batches = await settlements(tg, m.secretKey);
  assert.deepEqual(
    batches.map((b) => b.status),
    ['reconciled', 'reconciled'],
  );
  for (const batch of batches)
    for (const line of await batchLines(tg, m.secretKey, batch.id))
      assert.equal(line.result, 'matched', JSON.stringify(line));
  const marked = await tg.gateway.ctx.db.query(
    'SELECT payment_id FROM payment_settlements WHERE payment_id = ANY($1) ORDER BY payment_id',
    [[first.p.id, second.p.id]],
  );
  assert.deepEqual(
    marked.rows.map((r) => r.payment_id),
    [first.p.id, second.p.id].sort(),
  );
  // Its payment line settled twice, before its cancel came: a duplicate, and one mark only.
  const third = await reversedSale(tg, m, 7257);
  const x1 = await importAndWait(tg, m.secretKey, sandboxCsv([third.payment], 'REV-X1'));
  assert.deepEqual(x1.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(x1.counts));
  const x2 = await importAndWait(tg, m.secretKey, sandboxCsv([third.payment, third.cancel], 'REV-X2'));
  assert.deepEqual(x2.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(x2.counts));
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => [d.kind, d.payment_id]),
    [['duplicate_in_settlement', third.p.id]],
  );
  const thirdMarks = await tg.gateway.ctx.db.query(
    'SELECT 1 FROM payment_settlements WHERE payment_id = $1',
    [third.p.id],
  );
  assert.equal(thirdMarks.rowCount, 1);
});

test('a sale not decided when its line came is a status_mismatch at once, closed when it succeeds, with no other file to wait for', async () => {
  const m = await setupMerchant(tg);
  // A QR shown and not scanned yet: the provider's file (a quick one) already has it paid.
  const shown = await createPayment(tg, m.secretKey, qrPayment(7300)).expect(201);
  assert.equal(shown.body.status, 'requires_customer');
  const line = { transaction_id: `SBX-QR-${shown.body.id}`, request_id: shown.body.id, amount: 7300 };
  // PROVIDERS.md: a line whose ledger payment is not succeeded is a status_mismatch.
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([line], 'UNDECIDED-1'));
  assert.equal(job.status, 'completed');
  assert.deepEqual(job.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(job.counts));
  const [found] = await discrepancies(tg, m.secretKey);
  assert.deepEqual([found.kind, found.payment_id], ['status_mismatch', shown.body.id]);
  assert.match(found.detail as string, /is requires_customer$/);
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.status, 'discrepancies');
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, batch.id)).map((l) => l.result),
    ['status_mismatch'],
  );
  await fetch(shown.body.qr_code.data, { method: 'POST' });
  await waitForStatus(tg, m.secretKey, shown.body.id, ['succeeded']);
  // Checked again by the sweeper, without another file: the line matched, the sale marked settled
  // by it, its discrepancy closed and the batch reconciled.
  await eventually(
    async () => (await batchLines(tg, m.secretKey, batch.id))[0].result === 'matched',
    10_000,
    'the line matched again',
  );
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey, '&status=closed')).map((d) => [d.id, d.closed_reason]),
    [[found.id, 'resolved']],
  );
  const marked = await tg.gateway.ctx.db.query(
    'SELECT line_id FROM payment_settlements WHERE payment_id = $1',
    [shown.body.id],
  );
  assert.equal(marked.rowCount, 1);
  assert.equal((await settlements(tg, m.secretKey))[0].status, 'reconciled');
  // So a later file does not find it missing from every settlement.
  const next = await pay(tg, m, 7400);
  const later = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(next)], 'UNDECIDED-2'));
  assert.deepEqual(later.counts.by_kind, {}, JSON.stringify(later.counts));
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  assert.deepEqual(
    (await settlements(tg, m.secretKey)).map((b) => b.status),
    ['reconciled', 'reconciled'],
  );
});

test('a sale settled once it is decided shows the others of its day missing, with no other file to wait for', async () => {
  const m = await setupMerchant(tg);
  const unsettled = await pay(tg, m, 7510);
  const shown = await createPayment(tg, m.secretKey, qrPayment(7320)).expect(201);
  const line = { transaction_id: `SBX-QR-${shown.body.id}`, request_id: shown.body.id, amount: 7320 };
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([line], 'UNDECIDED-DAY'));
  // Nothing of that day was settled yet: no word that the first sale is missing.
  assert.deepEqual(job.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(job.counts));
  await fetch(shown.body.qr_code.data, { method: 'POST' });
  await waitForStatus(tg, m.secretKey, shown.body.id, ['succeeded']);
  const open = await eventually(async () => {
    const found = await discrepancies(tg, m.secretKey);
    return found.some((d) => d.kind === 'missing_in_settlement') ? found : undefined;
  }, 10_000);
  assert.deepEqual(
    open.map((d) => [d.kind, d.payment_id]),
    [['missing_in_settlement', unsettled.id]],
  );
  assert.equal((await settlements(tg, m.secretKey))[0].status, 'discrepancies');
});

test('a sale not decided when its line came and cancelled since stays a status_mismatch, its detail brought up to date', async () => {
  const m = await setupMerchant(tg);
  const { p: stuck, payment } = await undecidedSale(tg, m, 7557);
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([payment], 'UNDECIDED-3'));
  assert.deepEqual(job.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(job.counts));
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.status, 'discrepancies');
  const [found] = await discrepancies(tg, m.secretKey);
  assert.deepEqual(
    [found.kind, found.payment_id, found.settlement_id],
    ['status_mismatch', stuck.id, batch.id],
  );
  assert.match(found.detail as string, /is processing$/);
  await tg.http
    .post(`/v1/payments/${stuck.id}/cancel`)
    .set('Authorization', `Bearer ${m.secretKey}`)
    .expect(200);
  const updated = await eventually(
    async () => {
      const list = await discrepancies(tg, m.secretKey);
      return list.length === 1 && /is canceled$/.test(list[0].detail as string) ? list : undefined;
    },
    10_000,
    'the discrepancy checked again',
  );
  assert.equal(updated[0].id, found.id, 'the same discrepancy, not a second one');
  assert.equal((await settlements(tg, m.secretKey))[0].status, 'discrepancies');
});

test('a cancel line that came while its sale was undecided counts for the sale’s payment line that comes later', async () => {
  // No sweeper: the second file comes before anything checks the cancel line again.
  const quiet = await startTestGateway({ SWEEP_INTERVAL_MS: '3600000' });
  try {
    const m = await setupMerchant(quiet);
    const { p, payment, cancel } = await undecidedSale(quiet, m, 7657);
    const first = await importAndWait(quiet, m.secretKey, sandboxCsv([cancel], 'PENDING-C1'));
    assert.deepEqual(first.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(first.counts));
    await quiet.http
      .post(`/v1/payments/${p.id}/cancel`)
      .set('Authorization', `Bearer ${m.secretKey}`)
      .expect(200);
    const second = await importAndWait(quiet, m.secretKey, sandboxCsv([payment], 'PENDING-C2'));
    assert.deepEqual(second.counts.by_kind, {}, JSON.stringify(second.counts));
    // The cancel line, checked again by the second file's job, is matched: its discrepancy closed.
    assert.deepEqual(await discrepancies(quiet, m.secretKey), []);
    for (const batch of await settlements(quiet, m.secretKey)) {
      assert.deepEqual(
        (await batchLines(quiet, m.secretKey, batch.id)).map((l) => l.result),
        ['matched'],
        batch.provider_batch_id,
      );
      assert.equal(batch.status, 'reconciled', batch.provider_batch_id);
    }
  } finally {
    await quiet.stop();
  }
});

test('a correction that takes an undecided sale’s line out of its batch leaves the repeated line a status_mismatch', async () => {
  const m = await setupMerchant(tg);
  const { p, payment } = await undecidedSale(tg, m, 7757);
  const other = await pay(tg, m, 7800);
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p, { amount: 7758 }), lineFor(other)], 'ORPH-A'));
  const repeated = await importAndWait(tg, m.secretKey, sandboxCsv([payment], 'ORPH-B'));
  assert.deepEqual(repeated.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(repeated.counts));
  // The correction of A no longer has the sale: B's line settles it, and the sale is still undecided.
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(other)], 'ORPH-A'));
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => [d.kind, d.payment_id]),
    [['status_mismatch', p.id]],
  );
  const b = (await settlements(tg, m.secretKey)).find((x) => x.provider_batch_id === 'ORPH-B');
  assert.ok(b);
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, b.id)).map((l) => l.result),
    ['status_mismatch'],
  );
});

test('a sale decided since an earlier file had its line is settled by that line when a later file repeats it', async () => {
  // No sweeper: the later file's job is the first to look at the earlier line again.
  const quiet = await startTestGateway({ SWEEP_INTERVAL_MS: '3600000' });
  try {
    const m = await setupMerchant(quiet);
    const shown = await createPayment(quiet, m.secretKey, qrPayment(7350)).expect(201);
    const line = { transaction_id: `SBX-QR-${shown.body.id}`, request_id: shown.body.id, amount: 7350 };
    const first = await importAndWait(quiet, m.secretKey, sandboxCsv([line], 'EARLY-A'));
    assert.deepEqual(first.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(first.counts));
    await fetch(shown.body.qr_code.data, { method: 'POST' });
    await waitForStatus(quiet, m.secretKey, shown.body.id, ['succeeded']);
    const later = await importAndWait(quiet, m.secretKey, sandboxCsv([line], 'EARLY-B'));
    assert.deepEqual(later.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(later.counts));
    const batches = await settlements(quiet, m.secretKey);
    const a = batches.find((b) => b.provider_batch_id === 'EARLY-A');
    const b = batches.find((x) => x.provider_batch_id === 'EARLY-B');
    assert.ok(a && b);
    assert.deepEqual(
      (await discrepancies(quiet, m.secretKey)).map((d) => [d.kind, d.payment_id, d.settlement_id]),
      [['duplicate_in_settlement', shown.body.id, b.id]],
    );
    assert.deepEqual(
      (await batchLines(quiet, m.secretKey, a.id)).map((l) => l.result),
      ['matched'],
    );
    assert.equal((await settlements(quiet, m.secretKey)).find((x) => x.id === a.id)?.status, 'reconciled');
  } finally {
    await quiet.stop();
  }
});

test('a correction that takes out an undecided sale’s line hands the sale to the line that repeated it', async () => {
  const m = await setupMerchant(tg);
  const shown = await createPayment(tg, m.secretKey, qrPayment(7450)).expect(201);
  const line = { transaction_id: `SBX-QR-${shown.body.id}`, request_id: shown.body.id, amount: 7450 };
  const other = await pay(tg, m, 7500);
  await importAndWait(tg, m.secretKey, sandboxCsv([line, lineFor(other)], 'HAND-A'));
  const repeated = await importAndWait(tg, m.secretKey, sandboxCsv([line], 'HAND-B'));
  assert.deepEqual(repeated.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(repeated.counts));
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(other)], 'HAND-A'));
  const b = (await settlements(tg, m.secretKey)).find((x) => x.provider_batch_id === 'HAND-B');
  assert.ok(b);
  // B's line settles the sale now: no longer a duplicate, a status_mismatch while it is undecided.
  assert.deepEqual(
    (await discrepancies(tg, m.secretKey)).map((d) => [d.kind, d.settlement_id]),
    [['status_mismatch', b.id]],
  );
  await fetch(shown.body.qr_code.data, { method: 'POST' });
  await waitForStatus(tg, m.secretKey, shown.body.id, ['succeeded']);
  await eventually(
    async () => (await batchLines(tg, m.secretKey, b.id))[0].result === 'matched',
    10_000,
    'B’s line matched',
  );
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const marked = await tg.gateway.ctx.db.query(
    'SELECT settlement_id FROM payment_settlements WHERE payment_id = $1',
    [shown.body.id],
  );
  assert.deepEqual(
    marked.rows.map((r) => r.settlement_id),
    [b.id],
  );
});

/** A refund the provider has settled and not yet told us succeeded (asynchronous): pending, its next inquiry an hour away. */
async function pendingRefund(m: Awaited<ReturnType<typeof setupMerchant>>, value: number, refunded: number) {
  const p = await pay(tg, m, value);
  const refund = await refundPart(tg, m, p, refunded);
  await tg.gateway.ctx.db.query(
    "UPDATE refunds SET status = 'pending', next_check_at = now() + interval '1 hour' WHERE id = $1",
    [refund.id],
  );
  return { p, refund, line: await refundLineFor(tg, p, refund, refunded) };
}

test('a file waiting for a pending refund completes once a corrected file takes that line out', async () => {
  const m = await setupMerchant(tg);
  const { p, line } = await pendingRefund(m, 7900, 900);
  const first = await waitAwaiting(tg, m.secretKey, sandboxCsv([lineFor(p), line], 'WAIT-SUPERSEDED'));
  const correction = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p)], 'WAIT-SUPERSEDED'));
  assert.equal(correction.counts.batches_superseded, 1, JSON.stringify(correction.counts));
  const done = await waitJob(tg, m.secretKey, first.id, 1000);
  assert.deepEqual([done.status, done.counts.pending], ['completed', 0], JSON.stringify(done));
});

test('a refund not final when its line came is matched once it is, with no other file to wait for', async () => {
  const m = await setupMerchant(tg);
  const { p, refund, line } = await pendingRefund(m, 7600, 600);
  // Not completed while the line may still become a discrepancy (API.md: completed means final).
  const job = await waitAwaiting(tg, m.secretKey, sandboxCsv([lineFor(p), line], 'UNDECIDED-R'));
  assert.equal(job.status, 'running');
  assert.equal(job.counts.pending, 1, JSON.stringify(job.counts));
  const [batch] = await settlements(tg, m.secretKey);
  // Its inquiry is due now: the sweeper asks the provider, which says succeeded.
  await tg.gateway.ctx.db.query(
    "UPDATE refunds SET next_check_at = now() - interval '1 minute' WHERE id = $1",
    [refund.id],
  );
  await eventually(
    async () => (await batchLines(tg, m.secretKey, batch.id)).every((l) => l.result === 'matched'),
    15_000,
    'the refund line matched again',
  );
  assert.deepEqual(await discrepancies(tg, m.secretKey), []);
  const done = await waitJob(tg, m.secretKey, job.id);
  assert.deepEqual([done.status, done.counts.matched, done.counts.pending], ['completed', 2, 0]);
});

test('a refund on two lines, one naming it by its own id and one found by our request id, is a duplicate', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 4000);
  const refund = await refundPart(tg, m, p, 700);
  const byId = await refundLineFor(tg, p, refund, 700);
  const byRequestId = await refundLineFor(tg, p, refund, 700, 'sbx_refund_unknown');
  // The line found only by our request id comes first: the one naming the refund still wins.
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p), byRequestId, byId], 'REF-TWICE'));
  assert.deepEqual(job.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(job.counts));
  const [found] = await discrepancies(tg, m.secretKey);
  assert.equal(found.refund_id, refund.id);
  assert.match(
    found.detail as string,
    /^line 3: refund sbx_refund_unknown is settled more than once \(also on line 4\)/,
  );
});

test('tenancy: another merchant sees none of it (404, empty lists)', async () => {
  const m = await setupMerchant(tg, 'Owner');
  const other = await setupMerchant(tg, 'Other');
  const p = await pay(tg, m, 4000);
  const jobId = await importFile(tg, m.secretKey, sandboxCsv([lineFor(p)], 'TEN-1'));
  await waitJob(tg, m.secretKey, jobId);
  const [batch] = await settlements(tg, m.secretKey);
  const as = (path: string) => tg.http.get(path).set('Authorization', `Bearer ${other.secretKey}`);
  assert.equal((await as(`/v1/jobs/${jobId}`)).status, 404);
  assert.equal((await as(`/v1/settlements/${batch.id}`)).status, 404);
  assert.equal((await as(`/v1/settlements/${batch.id}/lines`)).status, 404);
  assert.deepEqual((await as('/v1/settlements')).body.data, []);
  assert.deepEqual((await as(`/v1/reconciliation/discrepancies?settlement_id=${batch.id}`)).body.data, []);
  // The other merchant's import of the same file finds none of the owner's payments.
  const theirs = await importAndWait(tg, other.secretKey, sandboxCsv([lineFor(p)], 'TEN-1'));
  assert.equal(theirs.counts.by_kind.missing_in_ledger, 1);
  const terminal = await tg.http.get('/v1/settlements').set('Authorization', `Bearer ${m.terminalKey}`);
  assert.equal(terminal.status, 403);
});

test('imports of different batches run in parallel; the same batch twice at once yields one version', async () => {
  const m = await setupMerchant(tg);
  const p = await Promise.all([5000, 5100, 5200].map((v) => pay(tg, m, v)));
  const files = [
    sandboxCsv([lineFor(p[0])], 'PAR-A'),
    sandboxCsv([lineFor(p[1])], 'PAR-B'),
    sandboxCsv([lineFor(p[2])], 'PAR-C'),
    sandboxCsv([lineFor(p[2])], 'PAR-C'),
  ];
  const ids = await Promise.all(files.map((f) => importFile(tg, m.secretKey, f)));
  const jobs = await Promise.all(ids.map((id) => waitJob(tg, m.secretKey, id)));
  assert.ok(jobs.every((j) => j.status === 'completed'));
  const list = await settlements(tg, m.secretKey);
  assert.deepEqual(list.map((s) => s.provider_batch_id).sort(), ['PAR-A', 'PAR-B', 'PAR-C']);
  assert.ok(list.every((s) => s.version === 1 && s.status === 'reconciled'));
  assert.equal(jobs[2].counts.batches_unchanged + jobs[3].counts.batches_unchanged, 1);
});

test('a payment on lines of two batches of one file is marked settled once', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 6000);
  const job = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(p), lineFor(p, { batch_id: 'TWO-B' })], 'TWO-A'),
  );
  assert.equal(job.status, 'completed', JSON.stringify(job));
  assert.equal(job.counts.batches_created, 2);
  const marked = await tg.gateway.ctx.db.query(
    'SELECT settlement_id FROM payment_settlements WHERE payment_id = $1',
    [p.id],
  );
  assert.equal(marked.rowCount, 1);
  const first = (await settlements(tg, m.secretKey)).find((s) => s.provider_batch_id === 'TWO-A');
  assert.equal(marked.rows[0].settlement_id, first?.id, 'the first line in the file wins');
});

test('a payment named by the provider on one line and found by our request id on another is settled once', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 6100);
  const job = await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(p, { transaction_id: 'sbx_renamed' }), lineFor(p)], 'REQ-1'),
  );
  assert.equal(job.status, 'completed', JSON.stringify(job));
  assert.deepEqual(job.counts.by_kind, { duplicate_in_settlement: 1 });
  const [dup] = await discrepancies(tg, m.secretKey);
  assert.equal(dup.payment_id, p.id);
  assert.match(
    dup.detail as string,
    /line 2: payment sbx_renamed is settled more than once \(also on line 3\)/,
  );
  const marked = await tg.gateway.ctx.db.query(
    'SELECT line_id FROM payment_settlements WHERE payment_id = $1',
    [p.id],
  );
  assert.equal(marked.rowCount, 1);
});

test('a reconcile job run twice at once applies the file once and keeps its lines', async () => {
  const m = await setupMerchant(tg);
  const p = await Promise.all([6200, 6300].map((v) => pay(tg, m, v)));
  const { receiveFile } = await import('../src/settlements/receive.ts');
  const { reconcileImport } = await import('../src/settlements/reconcile.ts');
  const { Readable } = await import('node:stream');
  const ctx = tg.gateway.ctx;
  // Received but not queued, so only this test's two runs apply it.
  const { id } = await receiveFile(
    ctx,
    { merchant_id: m.id, provider: 'sandbox', provider_account_id: m.accountId, source: 'upload' },
    Readable.from([
      sandboxCsv(
        p.map((x) => lineFor(x)),
        'TWICE-1',
      ),
    ]),
  );
  await Promise.all([reconcileImport(ctx, id), reconcileImport(ctx, id)]);
  const job = await waitJob(tg, m.secretKey, id);
  assert.equal(job.status, 'completed');
  const [batch] = await settlements(tg, m.secretKey);
  assert.equal(batch.version, 1);
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, batch.id)).map((l) => [l.payment_id, l.result]),
    p.map((x) => [x.id, 'matched']),
  );
});

test('a cancel of a paid order gives its fee back: the pair nets to zero in the batch and its lines', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 6400);
  const cancel = lineFor(p, {
    type: 'cancel',
    transaction_id: `${p.provider_reference}C`,
    original_transaction_id: p.provider_reference,
  });
  await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p), cancel], 'FEE-BACK'));
  const [batch] = await settlements(tg, m.secretKey);
  assert.deepEqual([batch.gross, batch.fees, batch.net], [0, 0, 0]);
  const fee = Math.floor((6400 * 18 + 500) / 1000);
  assert.deepEqual(
    (await batchLines(tg, m.secretKey, batch.id)).map((l) => [l.type, l.fee.value, l.net.value]),
    [
      ['payment', fee, 6400 - fee],
      ['cancel', -fee, -6400 + fee],
    ],
  );
});

test('an uploaded file whose reconcile job was lost (Redis flushed) is queued again by the sweeper, even while a step before it keeps failing', async () => {
  const m = await setupMerchant(tg);
  const a = await pay(tg, m, 1900);
  const queue = tg.gateway.ctx.queues.settlement;
  // This process takes no settlement job until the job is gone, as if Redis had lost it.
  await queue.pause(true);
  // The sweeper's step for lost deliveries, which runs before the one for imports, fails every time.
  const breakDeliveries = 'ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_away';
  const mendDeliveries = 'ALTER TABLE IF EXISTS webhook_deliveries_away RENAME TO webhook_deliveries';
  try {
    const id = await importFile(tg, m.secretKey, sandboxCsv([lineFor(a)], 'LOST-JOB-1'));
    await (await queue.getJob(id))?.remove();
    await tg.gateway.ctx.db.query(
      "UPDATE settlement_imports SET created_at = created_at - interval '1 minute' WHERE id = $1",
      [id],
    );
    await tg.gateway.ctx.db.query(breakDeliveries);
    await queue.resume(true);
    const job = await waitJob(tg, m.secretKey, id);
    assert.equal(job.status, 'completed');
    assert.equal(job.counts.matched, 1);
  } finally {
    await tg.gateway.ctx.db.query(mendDeliveries);
    await queue.resume(true);
  }
});

test('repeated lines are found as duplicates whether the receiving parser listed the repeats or not', async () => {
  const { ctx } = tg.gateway;
  for (const listed of [true, false]) {
    const m = await setupMerchant(tg);
    const a = await pay(tg, m, 6200);
    const b = await pay(tg, m, 6300);
    const account = await ctx.db.query<{ id: string }>(
      "SELECT id FROM provider_accounts WHERE merchant_id = $1 AND provider = 'sandbox'",
      [m.id],
    );
    // Received without queueing the job, so that the list can be taken away before it runs.
    const received = await receiveFile(
      ctx,
      { merchant_id: m.id, provider: 'sandbox', provider_account_id: account.rows[0].id, source: 'upload' },
      Readable.from([sandboxCsv([lineFor(a), lineFor(b), lineFor(a), lineFor(b)], 'REP-1')]),
    );
    assert.equal(received.repeats_listed, true);
    const candidates = await ctx.db.query<{ provider_reference: string; type: string }>(
      'SELECT type, provider_reference FROM settlement_import_repeats WHERE import_id = $1 ORDER BY 2',
      [received.id],
    );
    assert.deepEqual(
      candidates.rows.map((r) => [r.type, r.provider_reference]).sort(),
      [
        ['payment', a.provider_reference],
        ['payment', b.provider_reference],
      ].sort(),
    );
    if (!listed)
      await ctx.db.query('UPDATE settlement_imports SET repeats_listed = false WHERE id = $1', [received.id]);
    await reconcileImport(ctx, received.id);
    const job = await waitJob(tg, m.secretKey, received.id);
    assert.equal(job.status, 'completed', JSON.stringify(job));
    const found = await discrepancies(tg, m.secretKey);
    assert.deepEqual(
      found.map((d) => [d.kind, d.payment_id, d.detail]).sort(),
      [
        [
          'duplicate_in_settlement',
          a.id,
          `line 4: payment ${a.provider_reference} is settled more than once (first on line 2)`,
        ],
        [
          'duplicate_in_settlement',
          b.id,
          `line 5: payment ${b.provider_reference} is settled more than once (first on line 3)`,
        ],
      ].sort(),
      listed ? 'with the list' : 'without it',
    );
    const left = await ctx.db.query('SELECT 1 FROM settlement_import_repeats WHERE import_id = $1', [
      received.id,
    ]);
    assert.equal(left.rowCount, 0, 'the job deletes the list it used');
  }
});

test('a cancel settled in a second batch is a duplicate; discrepancies name the payment’s own provider reference', async () => {
  const m = await setupMerchant(tg);
  const { p, cancel } = await reversedSale(tg, m, 6557);
  assert.ok(p.provider_reference, JSON.stringify(p));
  const first = await importAndWait(tg, m.secretKey, sandboxCsv([cancel], 'CANCEL-A'));
  assert.deepEqual(first.counts.by_kind, {}, JSON.stringify(first.counts));
  const second = await importAndWait(tg, m.secretKey, sandboxCsv([cancel], 'CANCEL-B'));
  assert.deepEqual(second.counts.by_kind, { duplicate_in_settlement: 1 }, JSON.stringify(second.counts));
  // A line found by our request id only, under a reference the ledger does not know.
  const q = await pay(tg, m, 6600);
  await importAndWait(
    tg,
    m.secretKey,
    sandboxCsv([lineFor(q, { transaction_id: 'sbx_unknown_id', amount: 6601 })], 'BY-REQ'),
  );
  const found = await discrepancies(tg, m.secretKey);
  assert.deepEqual(
    found.map((d) => [d.kind, d.payment_id, d.provider_reference]).sort(),
    [
      ['amount_mismatch', q.id, q.provider_reference],
      ['duplicate_in_settlement', p.id, p.provider_reference],
    ].sort(),
  );
});

test('a cancel line for a sale the ledger holds as paid, with no payment line, is one status_mismatch, not also missing', async () => {
  const m = await setupMerchant(tg);
  const paid = await pay(tg, m, 6700);
  const other = await pay(tg, m, 6800);
  const cancel = lineFor(paid, {
    type: 'cancel',
    transaction_id: `${paid.provider_reference}C`,
    original_transaction_id: paid.provider_reference,
  });
  // The other sale of the day settles, so this one is due too: its settlement did not go missing,
  // the provider says it was reversed.
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(other), cancel], 'REVERSED-PAID'));
  assert.deepEqual(job.counts.by_kind, { status_mismatch: 1 }, JSON.stringify(job.counts));
  const found = await discrepancies(tg, m.secretKey);
  assert.deepEqual(
    found.map((d) => [d.kind, d.payment_id]),
    [['status_mismatch', paid.id]],
  );
});

test('settlements and discrepancies are the objects /openapi.json documents', async () => {
  const m = await setupMerchant(tg);
  const p = await pay(tg, m, 6700);
  const job = await importAndWait(tg, m.secretKey, sandboxCsv([lineFor(p, { amount: 6701 })], 'DOC-1'));
  const { schemas } = (await tg.http.get('/openapi.json').expect(200)).body.components;
  const conforms = (object: Record<string, unknown>, name: string) => {
    for (const field of schemas[name].required) assert.ok(field in object, `${name} lacks ${field}`);
    for (const field of Object.keys(object))
      assert.ok(field in schemas[name].properties, `${name}.${field} is undocumented`);
  };
  const [batch] = await settlements(tg, m.secretKey);
  conforms(batch as unknown as Record<string, unknown>, 'Settlement');
  const [found] = await discrepancies(tg, m.secretKey);
  conforms(found, 'Discrepancy');
  const lines = await tg.http
    .get(`/v1/settlements/${batch.id}/lines`)
    .set('Authorization', `Bearer ${m.secretKey}`);
  conforms(lines.body.data[0], 'SettlementLine');
  conforms(lines.body, 'List');
  conforms(job, 'Job');
  const day = new Date().toISOString().slice(0, 10);
  const report = await tg.http
    .get(`/v1/reports/settlements?from=${day}&to=${day}&group_by=store`)
    .set('Authorization', `Bearer ${m.secretKey}`)
    .expect(200);
  conforms(report.body, 'SettlementReport');
  conforms(report.body.totals[0], 'ReportFigures');
});

test('one wallet’s batch of a day (Antom settling each PSP apart) does not report another wallet’s sales of that day missing', async () => {
  const m = await setupMerchant(tg, 'PSP Split Drugstore', {
    name: 'alipay',
    body: { sandbox: true, wallets: ['alipay', 'alipayplus'] },
  });
  const sale = async (value: number, code: string, psp: string) => {
    const res = await createPayment(tg, m.terminalKey, scanPayment(value, { payment_code: code }));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.status, 'succeeded');
    assert.equal(res.body.wallet_psp, psp);
    return res.body as { id: string; provider_reference: string };
  };
  const settledCn = await sale(7100, '286714335246118790', 'ALIPAYCN');
  const leftOutCn = await sale(7200, '286714335246118791', 'ALIPAYCN');
  const hk = await sale(7300, '8812345678901234', 'ALIPAYHK');
  // The simulator's file of the day, cut down to the ALIPAYCN batch of one sale.
  const simUrl = await tg.gateway.ctx.sandbox.simulatorUrl('alipay');
  const csv = await (
    await fetch(`${simUrl}/_sim/settlements/${new Date().toISOString().slice(0, 10)}`)
  ).text();
  const [header, ...rows] = csv.trim().split('\n');
  const cnBatch = rows.filter((row) => row.includes(settledCn.provider_reference));
  assert.equal(cnBatch.length, 1, csv);
  const job = await importAndWait(tg, m.secretKey, [header, ...cnBatch, '<END>', ''].join('\n'), 'alipay');
  assert.equal(job.status, 'completed', JSON.stringify(job));
  const found = await discrepancies(tg, m.secretKey);
  assert.deepEqual(
    found.map((d) => [d.kind, d.payment_id]),
    [['missing_in_settlement', leftOutCn.id]],
    'the other ALIPAYCN sale of the day is missing; the ALIPAYHK sale waits for its own batch',
  );
  assert.match(
    found[0].detail as string,
    /other payments in EUR of that day or later through the same wallet \(ALIPAYCN\)/,
  );
  assert.ok(!found.some((d) => d.payment_id === hk.id));
});
