/**
 * Settlement reports: what the providers settled, per UTC settlement day, store or wallet, in each
 * settlement currency. Groups and totals come from one GROUPING SETS query over integer minor
 * units, so the totals are exactly the sums of the groups. CSV is streamed from a cursor.
 */
import type { Writable } from 'node:stream';
import type { Context } from '../context.ts';
import { inTransaction } from '../ledger/db.ts';
import { minorToMajor } from '../payments/money.ts';

export type GroupBy = 'day' | 'store' | 'wallet';

export interface ReportQuery {
  merchant_id: string;
  from: string;
  to: string;
  group_by: GroupBy;
  provider?: string;
}

interface ReportRow {
  grouped: number;
  key: string | null;
  currency: string;
  count: number;
  gross: number;
  fees: number;
  net: number;
  discrepancies: number;
}

const KEYS: Record<GroupBy, string> = {
  day: 'l.settlement_date::text',
  store: "COALESCE(p.store_id, pr.store_id, l.store_id, '(no store)')",
  wallet: "COALESCE(p.wallet, pr.wallet, '(unmatched)')",
};

function reportSql(groupBy: GroupBy, withProvider: boolean): string {
  return `
    SELECT GROUPING(${KEYS[groupBy]})::int AS grouped, ${KEYS[groupBy]} AS key, l.settlement_currency AS currency,
           count(*)::int AS count,
           sum(l.signed_value)::bigint AS gross,
           sum(l.signed_fee)::bigint AS fees,
           sum(l.signed_value - l.signed_fee)::bigint AS net,
           count(*) FILTER (WHERE l.result NOT IN ('matched', 'pending'))::int AS discrepancies
      -- The batches' current lines, signed as they count (migration 105).
      FROM settlement_current_lines l
      LEFT JOIN refunds r ON r.id = l.refund_id
      LEFT JOIN payments p ON p.id = COALESCE(l.result_payment_id, r.payment_id)
      -- A line without a result is a payment matched by its provider reference.
      LEFT JOIN payments pr ON NOT l.has_result AND pr.merchant_id = l.merchant_id AND pr.provider = l.provider
                           AND pr.provider_reference = l.provider_reference
     WHERE l.merchant_id = $1
       AND l.settlement_date BETWEEN $2::date AND $3::date
       ${withProvider ? 'AND l.provider = $4' : ''}
     GROUP BY GROUPING SETS ((${KEYS[groupBy]}, l.settlement_currency), (l.settlement_currency))
     ORDER BY l.settlement_currency, GROUPING(${KEYS[groupBy]}), 2`;
}

function params(q: ReportQuery): unknown[] {
  return q.provider ? [q.merchant_id, q.from, q.to, q.provider] : [q.merchant_id, q.from, q.to];
}

const money = (value: number, currency: string) => ({ value, currency });

function figures(row: ReportRow) {
  return {
    currency: row.currency,
    count: row.count,
    gross: money(row.gross, row.currency),
    fees: money(row.fees, row.currency),
    net: money(row.net, row.currency),
    discrepancies: row.discrepancies,
  };
}

export async function settlementReport(ctx: Context, q: ReportQuery) {
  const { rows } = await ctx.bulkDb.query<ReportRow>(reportSql(q.group_by, !!q.provider), params(q));
  return {
    object: 'settlement_report',
    from: q.from,
    to: q.to,
    group_by: q.group_by,
    ...(q.provider ? { provider: q.provider } : {}),
    groups: rows.filter((r) => r.grouped === 0).map((r) => ({ key: r.key, ...figures(r) })),
    totals: rows.filter((r) => r.grouped === 1).map(figures),
  };
}

/**
 * A cell Excel never opens as a formula (CSV injection), quoted when needed. Text that looks like a
 * number or a date (a store `0012`) is still read as one: CSV has no way to say otherwise.
 */
function cell(value: string | number): string {
  let text = String(value);
  const numeric = /^-?\d+(\.\d+)?$/.test(text);
  if (!numeric && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n;]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// `row` tells a totals row from a group whose key happens to read TOTAL (a store may be named so).
const CSV_HEADER = ['group', 'currency', 'count', 'gross', 'fees', 'net', 'discrepancies', 'row'];

function csvLine(fields: (string | number)[]): string {
  return `${fields.map(cell).join(',')}\r\n`;
}

/** How long a client may take no more of a CSV report before it is given up on. */
const STALLED_READER_MS = 30_000;

/** The client went away, or took nothing for STALLED_READER_MS: the report's transaction ends. */
export class ReaderGone extends Error {}

/**
 * Writes, waiting while the client's buffer is full. A client that closed the connection, or reads
 * no more while keeping it, would otherwise hold the cursor's transaction and one connection of
 * the bulk pool (shared by every merchant's imports and reports) for ever.
 */
async function write(out: Writable, text: string, stalledMs = STALLED_READER_MS): Promise<void> {
  if (out.destroyed) throw new ReaderGone('the client closed the connection');
  if (out.write(text)) return;
  await new Promise<void>((resolve, reject) => {
    const settle = (error?: Error) => {
      clearTimeout(stalled);
      out.off('drain', drained);
      out.off('close', closed);
      if (error) reject(error);
      else resolve();
    };
    const drained = () => settle();
    const closed = () => settle(new ReaderGone('the client closed the connection'));
    const stalled = setTimeout(() => {
      settle(new ReaderGone(`the client read nothing for ${stalledMs} ms`));
      out.destroy();
    }, stalledMs);
    out.on('drain', drained);
    out.on('close', closed);
  });
}

/**
 * CSV for spreadsheets: UTF-8 with BOM, CRLF, amounts in major units with a decimal point, and a
 * TOTAL row per currency after its groups (`row` says which rows are totals). Rows come from a cursor, a page at a time.
 */
export async function streamSettlementReportCsv(
  ctx: Context,
  q: ReportQuery,
  out: Writable,
  stalledMs = STALLED_READER_MS,
): Promise<void> {
  await inTransaction(
    ctx.bulkDb,
    async (client) => {
      await client.query(
        `DECLARE report NO SCROLL CURSOR FOR ${reportSql(q.group_by, !!q.provider)}`,
        params(q),
      );
      await write(out, `\ufeff${csvLine(CSV_HEADER)}`, stalledMs);
      for (;;) {
        const { rows } = await client.query<ReportRow>('FETCH 500 FROM report');
        for (const r of rows) {
          await write(
            out,
            csvLine([
              r.grouped ? 'TOTAL' : (r.key ?? ''),
              r.currency,
              r.count,
              minorToMajor(r.gross, r.currency),
              minorToMajor(r.fees, r.currency),
              minorToMajor(r.net, r.currency),
              r.discrepancies,
              r.grouped ? 'total' : 'group',
            ]),
            stalledMs,
          );
        }
        if (rows.length < 500) break;
      }
    },
    { readOnly: true },
  );
}
