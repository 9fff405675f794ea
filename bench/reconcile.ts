/**
 * Reconciliation benchmark (DESIGN.md targets: 1,000,000 lines in under 60 s and 300 MB, within
 * 3× of the floor). Generates 1,000,000 succeeded ledger payments and the sandbox provider's
 * settlement file for them with a few hundred planted discrepancies, then measures, in one run:
 *
 * - import + match: the file received as an upload is (parsed by the sandbox adapter's streaming
 *   parser, COPYed into settlement_lines), then the reconcile job (set-based
 *   matching, discrepancies, marking payments settled);
 * - the floor: a bare COPY of the same file into a table of text columns plus one join against
 *   the payments, measured before the import and again after it (the ratio uses their mean).
 *
 * It checks that the discrepancies found are exactly the planted ones.
 * Usage: npx tsx bench/reconcile.ts [lines]   (env BENCH_DATABASE_URL, BENCH_REDIS_URL; BENCH_EXPLAIN=<ms>
 * prints the plan, with actual times, of every statement slower than that)
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import { loadConfig } from '../src/config.ts';
import type { Context } from '../src/context.ts';
import { createContext } from '../src/runtime.ts';
import { receiveFile } from '../src/settlements/receive.ts';
import { reconcileImport } from '../src/settlements/reconcile.ts';
import { adminQuery, databaseUrl, dropRedisKeys, REDIS_URL } from './db.ts';

const LINES = Number(process.argv[2] ?? 1_000_000);
const PLANT = {
  amount_mismatch: 100,
  currency_mismatch: 50,
  status_mismatch: 50,
  duplicate_in_settlement: 50,
  missing_in_ledger: 50,
  missing_in_settlement: 50,
};
const DATE = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);

/** Which payment numbers carry which planted fault; spread evenly through the file. */
function plan(n: number): Map<number, keyof typeof PLANT> {
  const faults = new Map<number, keyof typeof PLANT>();
  const stride = Math.floor(n / (Object.values(PLANT).reduce((a, b) => a + b, 0) + 1));
  let at = stride;
  for (const [kind, count] of Object.entries(PLANT) as [keyof typeof PLANT, number][]) {
    for (let i = 0; i < count; i++, at += stride) faults.set(at, kind);
  }
  return faults;
}

const amountOf = (i: number) => 100 + (i % 50_000);

async function writeFile(path: string, n: number, faults: Map<number, keyof typeof PLANT>): Promise<void> {
  const out = createWriteStream(path);
  const header =
    'batch_id,type,transaction_id,original_transaction_id,request_id,amount,currency,settlement_amount,settlement_currency,fee,exchange_rate,settled_at,store_id,wallet_psp\n';
  async function* rows() {
    yield header;
    let chunk = '';
    for (let i = 1; i <= n; i++) {
      const fault = faults.get(i);
      if (fault === 'missing_in_settlement') continue;
      let amount = amountOf(i);
      let currency = 'EUR';
      const ref = `sbx_${i}`;
      if (fault === 'amount_mismatch') amount += 1;
      if (fault === 'currency_mismatch') currency = 'USD';
      const fee = Math.floor((amount * 18 + 500) / 1000);
      const batch = `SBX-${DATE}-${i % 4}`;
      const line = `${batch},payment,${ref},,pay_${i},${amount},${currency},${amount},EUR,${fee},1,${DATE}T12:00:00Z,store-${i % 2000},SANDBOXWALLET\n`;
      chunk += fault === 'duplicate_in_settlement' ? line + line : line;
      // A line the ledger has never seen, next to a normal one.
      if (fault === 'missing_in_ledger')
        chunk += `${batch},payment,sbx_unknown_${i},,,${amount},EUR,${amount},EUR,${fee},1,${DATE}T12:00:00Z,,SANDBOXWALLET\n`;
      if (chunk.length > 1 << 16) {
        yield chunk;
        chunk = '';
      }
    }
    yield chunk;
  }
  await pipeline(rows, out);
}

function rssSampler() {
  let peak = process.memoryUsage().rss;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, process.memoryUsage().rss);
    },
  };
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;
const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** The floor: the same file, bare COPY into an unlogged table of text columns, one join; ms. */
async function floor(ctx: Context, file: string): Promise<number> {
  // Each measurement (both floors, the import) starts after a checkpoint.
  await ctx.bulkDb.query('CHECKPOINT');
  const start = Date.now();
  const client = await ctx.bulkDb.connect();
  try {
    await client.query(
      `CREATE UNLOGGED TABLE floor_lines (batch_id text, type text, transaction_id text, original_transaction_id text,
         request_id text, amount text, currency text, settlement_amount text, settlement_currency text, fee text,
         exchange_rate text, settled_at text, store_id text, wallet_psp text)`,
    );
    await pipeline(
      createReadStream(file),
      client.query(copyFrom('COPY floor_lines FROM STDIN WITH (FORMAT csv, HEADER true)')),
    );
    await client.query(
      `SELECT count(*) FROM floor_lines f JOIN payments p
          ON p.provider_reference = f.transaction_id AND p.amount_value = f.amount::bigint`,
    );
  } finally {
    client.release();
  }
  const ms = Date.now() - start;
  await ctx.bulkDb.query('DROP TABLE floor_lines');
  await ctx.bulkDb.query('CHECKPOINT');
  return ms;
}

async function main(): Promise<void> {
  const dbName = `tb_bench_${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'tb-bench-'));
  const file = join(dir, 'settlement.csv');
  const config = loadConfig({
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl(dbName),
    REDIS_URL,
    REDIS_PREFIX: `tbbench:${dbName}`,
    ADMIN_API_KEY: `adm_bench_${randomBytes(12).toString('hex')}`,
    TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
    LOG_LEVEL: 'warn',
  });
  const ctx = await createContext(config);
  if (process.env.BENCH_EXPLAIN) {
    // Plans of every statement slower than BENCH_EXPLAIN ms, with actual times, on stderr.
    const explaining = new WeakSet<object>();
    ctx.bulkDb.on('acquire', (client) => {
      if (explaining.has(client)) return;
      explaining.add(client);
      client.on('notice', (notice) => console.error(notice.message));
      void client.query(
        `LOAD 'auto_explain'; SET auto_explain.log_min_duration = ${Number(process.env.BENCH_EXPLAIN)};
         SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on; SET auto_explain.log_level = notice`,
      );
    });
  }
  try {
    const faults = plan(LINES);
    console.log(`generating ${LINES.toLocaleString()} ledger payments and their settlement file …`);
    const genStart = Date.now();
    await ctx.bulkDb.query(
      `INSERT INTO merchants (id, name, settlement_currency, country) VALUES ('mer_bench', 'Bench', 'EUR', 'DE');
       INSERT INTO provider_accounts (id, merchant_id, provider, wallets, sandbox, credentials)
       VALUES ('pva_bench', 'mer_bench', 'sandbox', '{alipay}', true, '\\x00')`,
    );
    await ctx.bulkDb.query(
      `INSERT INTO payments (id, merchant_id, store_id, provider_account_id, provider, wallet, mode, status,
                             amount_value, currency, reference, provider_request_id, provider_reference,
                             resolve_by, paid_at, finalized_at, created_at)
       SELECT 'pay_' || i, 'mer_bench', 'store-' || (i % 2000), 'pva_bench', 'sandbox', 'alipay', 'scan',
              CASE WHEN i = ANY($2::int[]) THEN 'failed' ELSE 'succeeded' END,
              100 + (i % 50000), 'EUR', 'R-' || i, 'pay_' || i, 'sbx_' || i, now(),
              CASE WHEN i = ANY($2::int[]) THEN NULL ELSE $3::date + time '10:00' END, now(), now()
         FROM generate_series(1, $1::int) AS i`,
      [LINES, [...faults].filter(([, k]) => k === 'status_mismatch').map(([i]) => i), DATE],
    );
    await ctx.bulkDb.query('VACUUM ANALYZE payments');
    await writeFile(file, LINES, faults);
    const bytes = statSync(file).size;
    console.log(`generated in ${s(Date.now() - genStart)}; file ${mb(bytes)}`);

    // The floor, measured before the import and again after it: this machine's speed drifts
    // within a run, and the ratio is taken against the mean of the two.
    const floorBeforeMs = await floor(ctx, file);

    // Import + match, as an upload: store the file, then the reconcile job.
    global.gc?.();
    const baseline = process.memoryUsage().rss;
    const sampler = rssSampler();
    const start = Date.now();
    const cpuBefore = process.cpuUsage();
    const { id: importId } = await receiveFile(
      ctx,
      { merchant_id: 'mer_bench', provider: 'sandbox', provider_account_id: 'pva_bench', source: 'upload' },
      createReadStream(file),
    );
    const receivedMs = Date.now() - start;
    const receiveCpu = process.cpuUsage(cpuBefore);
    await reconcileImport(ctx, importId);
    const totalMs = Date.now() - start;
    const peak = sampler.stop();
    const floorAfterMs = await floor(ctx, file);
    const floorMs = (floorBeforeMs + floorAfterMs) / 2;

    const job = await ctx.bulkDb.query(
      'SELECT status, counts, error_message FROM settlement_imports WHERE id = $1',
      [importId],
    );
    const found = await ctx.bulkDb.query<{ kind: string; n: number }>(
      `SELECT kind, count(*)::int AS n FROM reconciliation_discrepancies WHERE closed_at IS NULL GROUP BY kind ORDER BY kind`,
    );
    const byKind = Object.fromEntries(found.rows.map((r) => [r.kind, r.n]));
    const exact = Object.entries(PLANT).every(([kind, n]) => byKind[kind] === n) && found.rows.length === 6;
    console.log(
      JSON.stringify(
        {
          status: job.rows[0].status,
          error: job.rows[0].error_message,
          found: byKind,
          timings_ms: job.rows[0].counts.timings_ms,
        },
        null,
        0,
      ),
    );
    console.log('');
    console.log(`lines                       ${LINES.toLocaleString()} (${mb(bytes)} file)`);
    console.log(
      `planted discrepancies       ${Object.values(PLANT).reduce((a, b) => a + b, 0)} — found exactly: ${exact}`,
    );
    console.log(
      `floor (bare COPY + 1 join)  ${s(floorMs)} (mean of ${s(floorBeforeMs)} before the import and ${s(floorAfterMs)} after)`,
    );
    console.log(
      `import + match              ${s(totalMs)} (received: parsed + stored in ${s(receivedMs)}, ${s((receiveCpu.user + receiveCpu.system) / 1000)} of it node CPU)`,
    );
    console.log(`ratio to floor              ${(totalMs / floorMs).toFixed(2)}×  (target ≤ 3×)`);
    console.log(`peak RSS during import      ${mb(peak)} (baseline ${mb(baseline)}; target < 300 MB)`);
    console.log(`target < 60 s               ${totalMs < 60_000 ? 'met' : 'MISSED'}`);
    if (!exact || job.rows[0].status !== 'completed') process.exitCode = 1;
  } finally {
    await ctx.queues.close();
    await ctx.updates.close();
    ctx.redis.disconnect();
    await ctx.db.end();
    await ctx.bulkDb.end();
    if (process.env.BENCH_KEEP_DB) console.log(`file kept: ${file}`);
    else rmSync(dir, { recursive: true, force: true });
    // BENCH_KEEP_DB=1 leaves the database for a look at its plans in psql.
    if (process.env.BENCH_KEEP_DB) console.log(`database kept: ${dbName}`);
    else {
      await adminQuery(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
      await dropRedisKeys(`tbbench:${dbName}`);
    }
  }
}

await main();
