/**
 * The `reconcile` job: the lines of a received file (parsed and COPYed into settlement_lines by
 * receiveFile in receive.ts, where a malformed file is refused) are applied in one transaction,
 * set-based in SQL (PROVIDERS.md, "Decisions where the sources stop"):
 *
 * - a batch is keyed by provider, the provider's batch id and the settlement currency; a batch whose
 *   lines hash the same as its current version is left alone (the same file twice changes nothing),
 *   a batch whose lines differ supersedes the current version, which stays in the audit trail;
 * - each line is matched to a payment by the provider's transaction id, then by our request id
 *   (refunds likewise), and gets a result: matched, pending (a refund not final yet) or a
 *   discrepancy kind (a sale not decided yet is a status_mismatch, PROVIDERS.md, checked again once
 *   it is); matched payments are marked settled (amount, rate, fee). The lines are not
 *   written again: only results other than a payment matched by its transaction id are recorded
 *   (settlement_line_results, migration 104);
 * - captured payments that should have settled and did not become `missing_in_settlement`.
 *
 * Every write lives in one transaction, rolled back on the first error. The jobs of one merchant
 * and provider take turns (an advisory lock held to commit), so a payment settled by two files at
 * once is seen by the second; receiving files, the bulk of the work, runs in parallel.
 */
import type pg from 'pg';
import { SettlementFormatError, type WalletAdapter } from '../../adapters/contract.ts';
import { providerModule } from '../../adapters/index.ts';
import type { Context } from '../context.ts';
import { inTransaction, lockUntilCommit, rollback } from '../ledger/db.ts';
import { UNRESOLVED_SQL } from '../ledger/payments.ts';
import { discardLines } from './receive.ts';

export const DISCREPANCY_KINDS = [
  'missing_in_ledger',
  'missing_in_settlement',
  'amount_mismatch',
  'currency_mismatch',
  'status_mismatch',
  'duplicate_in_settlement',
] as const;

export type DiscrepancyKind = (typeof DISCREPANCY_KINDS)[number];

export interface ImportCounts {
  lines: number;
  batches: number;
  batches_created: number;
  batches_superseded: number;
  batches_unchanged: number;
  /** The lines of those batches: their results stand from the import that brought them, not counted again. */
  lines_unchanged: number;
  matched: number;
  pending: number;
  discrepancies: number;
  by_kind: Partial<Record<DiscrepancyKind, number>>;
  /** Where the time went: classifying the lines, marking payments settled, ledger-side checks, all. */
  timings_ms: Record<string, number>;
}

function countDiscrepancies(counts: ImportCounts, kind: DiscrepancyKind, n: number): void {
  if (!n) return;
  counts.discrepancies += n;
  counts.by_kind[kind] = (counts.by_kind[kind] ?? 0) + n;
}

async function timed<T>(counts: ImportCounts, step: string, work: () => Promise<T>): Promise<T> {
  const start = Date.now();
  try {
    return await work();
  } finally {
    counts.timings_ms[step] = (counts.timings_ms[step] ?? 0) + Date.now() - start;
  }
}

interface ImportRow {
  id: string;
  merchant_id: string;
  provider: string;
  /** The ids of the import's lines lie between these (bigint, as text). */
  first_line_id: string | null;
  last_line_id: string | null;
  repeats_listed: boolean;
}

/** The CTE that announces every row of a statement's `disc` CTE (new discrepancies) through the outbox; $2 is the merchant. */
const DISCREPANCY_EVENTS = `events AS (
  INSERT INTO outbox (event_id, merchant_id, type, payload)
  SELECT e.payload->>'id', $2, 'reconciliation.discrepancy', e.payload
    FROM (SELECT tb_event('reconciliation.discrepancy', tb_discrepancy_json(d::reconciliation_discrepancies)) AS payload
            FROM disc d) e
  RETURNING 1
)`;

/**
 * The statuses of a payment not decided yet. Its payment or cancel line is a status_mismatch
 * (PROVIDERS.md: a line whose payment is not succeeded) marked `recheck`: matched again once the
 * sale is final, which may close that discrepancy.
 */
const UNDECIDED = UNRESOLVED_SQL;

/** A line result `x` waiting for its refund or sale: `pending` (a refund), or kept for a recheck. */
const AWAITS_DECISION = "(x.result = 'pending' OR x.recheck)";

/**
 * A line result `x` that awaits a decision (AWAITS_DECISION) whose refund `r` (a refund's line)
 * or payment `p` (any other line) is final now, so the line can be matched again.
 */
const DECIDED_NOW = `CASE WHEN x.refund_id IS NOT NULL THEN r.status <> 'pending' ELSE p.status NOT IN (${UNDECIDED}) END`;

/**
 * A line of `type` in a current batch version, for the payment `payment`, known by its result row
 * and meeting `condition` (on `o`, the result).
 */
const CURRENT_LINE = (type: 'payment' | 'cancel', payment: string, condition: string) => `
  SELECT 1 FROM settlement_line_results o
    JOIN settlements so ON so.id = o.settlement_id AND so.import_id = o.import_id
    JOIN settlement_lines ol ON ol.id = o.line_id AND ol.import_id = o.import_id AND ol.type = '${type}'
   WHERE o.payment_id = ${payment} AND ${condition}`;
/** Settled by a line of another current batch: this line is a duplicate. */
const IN_ANOTHER_BATCH = "o.settlement_id <> k.settlement_id AND o.result <> 'duplicate_in_settlement'";

/**
 * What tells apart two refund lines with the same provider id, line `t`: our refund request id. A
 * provider may name a refund by the sale's id (Antom's Chinese page does), so two refunds of one
 * sale share it; a payment or cancel line is known by the provider's id alone (null here).
 */
const REQUEST_KEY = (t: string) => `(CASE WHEN ${t}.type = 'refund' THEN ${t}.provider_request_id END)`;

/**
 * The import's lines, each classified, into a temporary table (one row a line). A read-only query
 * feeding CREATE TABLE AS may run in parallel, which the statements that write the ledger may not,
 * so everything that writes reads this table afterwards. $6..$8: the changed batches (batch id,
 * currency, settlement id); the lines' ids lie between $4 and $5.
 */
const CLASSIFY_SQL = `
CREATE TEMP TABLE classified ON COMMIT DROP AS
WITH rr AS NOT MATERIALIZED (
  SELECT r.id, r.provider_reference, r.provider_request_id, r.amount_value, r.currency, r.status
    FROM refunds r JOIN payments p ON p.id = r.payment_id
   WHERE r.merchant_id = $2 AND p.provider = $3
),
lines AS NOT MATERIALIZED (
  SELECT s.*, c.settlement_id
    FROM settlement_lines s
    JOIN unnest($6::text[], $7::text[], $8::text[]) AS c (batch_ref, currency, settlement_id)
      ON c.batch_ref = s.batch_ref AND c.currency = s.settlement_currency
   WHERE s.id BETWEEN $4 AND $5 AND s.import_id = $1
),
cancels AS (
  SELECT DISTINCT COALESCE(original_provider_reference, provider_reference) AS ref, provider_request_id AS req
    FROM settlement_lines WHERE id BETWEEN $4 AND $5 AND import_id = $1 AND type = 'cancel'
),
keyed AS (
  SELECT s.*, d.first_line, p1.id AS by_reference,
         COALESCE(p1.id, p2.id) AS pay_id, COALESCE(p1.amount_value, p2.amount_value) AS pay_amount,
         COALESCE(p1.currency, p2.currency) AS pay_currency, COALESCE(p1.status, p2.status) AS pay_status,
         COALESCE(p1.paid_at, p2.paid_at) AS pay_paid_at,
         CASE WHEN p1.id IS NULL THEN p2.wallet_psp ELSE p1.wallet_psp END AS pay_wallet_psp,
         r1.id AS ref_by_reference,
         COALESCE(r1.id, r2.id) AS ref_id, COALESCE(r1.amount_value, r2.amount_value) AS ref_amount,
         COALESCE(r1.currency, r2.currency) AS ref_currency, COALESCE(r1.status, r2.status) AS ref_status
    FROM lines s
    LEFT JOIN unnest($9::text[], $10::text[], $11::int[], $12::text[]) AS d (type, provider_reference, first_line, request_key)
           ON d.type = s.type AND d.provider_reference = s.provider_reference
          AND d.request_key IS NOT DISTINCT FROM ${REQUEST_KEY('s')}
    LEFT JOIN payments p1 ON s.type <> 'refund' AND p1.merchant_id = $2 AND p1.provider = $3
                         AND p1.provider_reference = CASE WHEN s.type = 'cancel'
                               THEN COALESCE(s.original_provider_reference, s.provider_reference)
                               ELSE s.provider_reference END
    -- By our request id only where the provider's id found nothing: a lateral index probe for those
    -- few lines (the gate is a one-time filter), not a second hash join over all the payments.
    LEFT JOIN LATERAL (SELECT p.id, p.amount_value, p.currency, p.status, p.paid_at, p.wallet_psp FROM payments p
                        WHERE p1.id IS NULL AND s.type <> 'refund' AND p.provider_request_id = s.provider_request_id
                          AND p.merchant_id = $2 AND p.provider = $3 LIMIT 1) p2 ON true
    LEFT JOIN rr r1 ON s.type = 'refund' AND r1.provider_reference = s.provider_reference
    LEFT JOIN rr r2 ON s.type = 'refund' AND r1.id IS NULL AND r2.provider_request_id = s.provider_request_id
)
SELECT k.id, k.line_no, k.settlement_id, k.type, k.provider_reference, k.provider_request_id, k.transaction_value,
       k.transaction_currency, k.settlement_value, k.settlement_currency, k.exchange_rate, k.fee_value, k.settled_at,
       k.first_line, k.by_reference, k.pay_id, k.pay_amount, k.pay_currency, k.pay_status, k.pay_paid_at,
       k.pay_wallet_psp,
       k.ref_by_reference, k.ref_id, k.ref_amount, k.ref_currency, k.ref_status,
       -- Set only for another batch's line that ORPHANED_DUPLICATES_SQL adds: the import it came with.
       NULL::text AS line_import_id,
    CASE
      WHEN k.line_no > k.first_line THEN 'duplicate_in_settlement'
      WHEN k.type = 'refund' THEN CASE
        WHEN k.ref_id IS NULL THEN 'missing_in_ledger'
        WHEN EXISTS (SELECT 1 FROM settlement_line_results o JOIN settlements so ON so.id = o.settlement_id
                      WHERE o.refund_id = k.ref_id AND so.import_id = o.import_id AND o.settlement_id <> k.settlement_id
                        AND o.result <> 'duplicate_in_settlement') THEN 'duplicate_in_settlement'
        WHEN k.ref_currency <> k.transaction_currency THEN 'currency_mismatch'
        WHEN k.ref_amount <> k.transaction_value THEN 'amount_mismatch'
        WHEN k.ref_status = 'pending' THEN 'pending'
        WHEN k.ref_status <> 'succeeded' THEN 'status_mismatch'
        ELSE 'matched' END
      WHEN k.pay_id IS NULL THEN 'missing_in_ledger'
      WHEN k.type = 'payment' AND ps.settlement_id IS NOT NULL AND ps.settlement_id <> k.settlement_id
        THEN 'duplicate_in_settlement'
      -- A payment the ledger does not hold as paid has no mark: a payment line of another current
      -- batch (its result row says so) settled it already.
      WHEN k.type = 'payment' AND k.pay_status NOT IN ('succeeded', 'partially_refunded', 'refunded')
           AND EXISTS (${CURRENT_LINE('payment', 'k.pay_id', IN_ANOTHER_BATCH)})
        THEN 'duplicate_in_settlement'
      -- A cancel that a line of another current batch already settled (its result row says so).
      WHEN k.type = 'cancel' AND EXISTS (${CURRENT_LINE('cancel', 'k.pay_id', IN_ANOTHER_BATCH)})
        THEN 'duplicate_in_settlement'
      WHEN k.pay_currency <> k.transaction_currency THEN 'currency_mismatch'
      WHEN k.pay_amount <> k.transaction_value THEN 'amount_mismatch'
      -- A sale still being decided (the file came quicker than its outcome) falls through to a
      -- status_mismatch, matched again once it is final (recheck, REMATCH_PENDING_SQL).
      WHEN k.type = 'cancel' THEN CASE WHEN k.pay_status = 'canceled' THEN 'matched' ELSE 'status_mismatch' END
      WHEN k.pay_status IN ('succeeded', 'partially_refunded', 'refunded') THEN 'matched'
      -- Paid, then reversed: the file carries the payment and its cancel, and the ledger says canceled.
      WHEN k.pay_status = 'canceled' AND EXISTS (SELECT 1 FROM cancels x
                                                  WHERE x.ref = k.provider_reference OR x.req = k.provider_request_id)
        THEN 'matched'
      -- ...or the cancel came first, in a file of its own (paid before midnight, reversed after);
      -- rechecked if the sale was undecided then, and matched again with this line's job.
      WHEN k.pay_status = 'canceled'
           AND EXISTS (${CURRENT_LINE('cancel', 'k.pay_id', "(o.result = 'matched' OR o.recheck)")})
        THEN 'matched'
      ELSE 'status_mismatch' END AS result
  FROM keyed k
  LEFT JOIN payment_settlements ps ON ps.payment_id = k.pay_id
`;

/**
 * The same transaction twice in one file, in one batch or in two, is settled more than once: the
 * lines the receiving parser flagged as possible repeats (settlement_import_repeats) are counted,
 * or every line where it made no list ($6). Handed to CLASSIFY_SQL as parameters: a temporary
 * table would keep its joins out of the parallel workers (they cannot read one), and a million
 * lines would pass through a join in the leader alone.
 */
const DUPLICATES_SQL = `
SELECT l.type, l.provider_reference, ${REQUEST_KEY('l')} AS request_key, min(l.line_no) AS first_line
  FROM settlement_lines l
  JOIN unnest($4::text[], $5::text[]) AS c (batch_ref, currency)
    ON c.batch_ref = l.batch_ref AND c.currency = l.settlement_currency
 WHERE l.id BETWEEN $2 AND $3 AND l.import_id = $1
   AND (NOT $6 OR (l.type, l.provider_reference) IN (SELECT r.type, r.provider_reference
                                                        FROM settlement_import_repeats r WHERE r.import_id = $1))
 GROUP BY 1, 2, 3 HAVING count(*) > 1
`;

/**
 * A payment found by our request id (the provider's id named nothing) may also be on a line that
 * names it by the provider's id, or on an earlier line found the same way: the file settles it
 * twice, and this line is the duplicate. Rare, so looked for only where such lines exist; so are
 * two lines of one refund that DUPLICATES_SQL told apart (by the refund's id on one, by our request
 * id on the other, or the same id with two request ids).
 */
const DUPLICATE_CANDIDATES_SQL = `
SELECT EXISTS (SELECT 1 FROM classified WHERE type = 'payment' AND by_reference IS NULL AND pay_id IS NOT NULL) AS payments,
       (SELECT count(*) FROM classified WHERE type = 'refund' AND ref_id IS NOT NULL) > 1 AS refunds
`;
const DUPLICATE_PAYMENTS_BY_REQUEST_ID_SQL = `
UPDATE classified c SET result = 'duplicate_in_settlement', first_line = o.line_no
  FROM classified o
 WHERE o.pay_id = c.pay_id AND o.type = 'payment' AND c.type = 'payment' AND o.id <> c.id
   AND c.result <> 'duplicate_in_settlement' AND c.by_reference IS NULL
   AND (o.by_reference IS NOT NULL OR o.line_no < c.line_no)
`;
/** The line that names a refund by its own id settles it, or else the first: the others are duplicates. */
const DUPLICATE_REFUNDS_SQL = `
UPDATE classified c SET result = 'duplicate_in_settlement', first_line = o.line_no
  FROM classified o
 WHERE o.ref_id = c.ref_id AND o.type = 'refund' AND c.type = 'refund' AND o.id <> c.id
   AND c.result <> 'duplicate_in_settlement'
   AND (o.ref_by_reference IS NOT NULL, c.line_no) > (c.ref_by_reference IS NOT NULL, o.line_no)
`;

/**
 * A payment that a superseded version settled (`unsettled`, kept by supersede) and that a line of
 * another current batch repeated (its duplicate_in_settlement): unless this file settles it again,
 * that line settles it now. The line is classified again beside this file's lines (so it is marked,
 * and any difference reported, like theirs), its old result goes and its duplicate is closed.
 */
const ORPHANED_DUPLICATES_SQL = `
WITH orphan AS (
  SELECT DISTINCT ON (x.payment_id) x.line_id, x.settlement_id, x.payment_id, x.import_id
    FROM unsettled u
    JOIN settlement_line_results x ON x.payment_id = u.payment_id AND x.result = 'duplicate_in_settlement'
    JOIN settlements s ON s.id = x.settlement_id AND s.import_id = x.import_id
    JOIN settlement_lines l ON l.id = x.line_id AND l.type = 'payment'
   WHERE NOT EXISTS (SELECT 1 FROM classified c WHERE c.pay_id = u.payment_id AND c.type = 'payment'
                        AND c.result <> 'duplicate_in_settlement')
   ORDER BY x.payment_id, s.settlement_date, x.line_id
),
closed AS (
  UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
    FROM orphan o
   WHERE d.line_id = o.line_id AND d.kind = 'duplicate_in_settlement' AND d.closed_at IS NULL
),
cleared AS (
  DELETE FROM settlement_line_results x USING orphan o WHERE x.line_id = o.line_id
)
INSERT INTO classified (id, line_no, settlement_id, type, provider_reference, provider_request_id, transaction_value,
       transaction_currency, settlement_value, settlement_currency, exchange_rate, fee_value, settled_at, by_reference,
       pay_id, pay_amount, pay_currency, pay_status, pay_paid_at, pay_wallet_psp, line_import_id, result)
SELECT l.id, l.line_no, o.settlement_id, l.type, l.provider_reference, l.provider_request_id, l.transaction_value,
       l.transaction_currency, l.settlement_value, l.settlement_currency, l.exchange_rate, l.fee_value, l.settled_at,
       CASE WHEN p.provider_reference = l.provider_reference THEN p.id END,
       p.id, p.amount_value, p.currency, p.status, p.paid_at, p.wallet_psp, o.import_id,
       CASE WHEN p.currency <> l.transaction_currency THEN 'currency_mismatch'
            WHEN p.amount_value <> l.transaction_value THEN 'amount_mismatch'
            WHEN p.status IN ('succeeded', 'partially_refunded', 'refunded') THEN 'matched'
            ELSE 'status_mismatch' END
  FROM orphan o JOIN settlement_lines l ON l.id = o.line_id JOIN payments p ON p.id = o.payment_id
`;

/**
 * The same for refunds and cancels, which have no marks: a refund (or a payment's cancel) that a
 * version this file superseded settled, and that a line of another current batch repeated. Unless
 * this file settles it again, that line settles it now: classified again, its old result and its
 * duplicate closed. $1 this import.
 */
const ORPHANED_REPEATS_SQL = `
WITH old AS (
  SELECT DISTINCT l.type, x.refund_id, x.payment_id
    FROM settlement_versions v
    JOIN settlement_line_results x ON x.settlement_id = v.settlement_id AND x.import_id = v.import_id
    JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id
   WHERE v.superseded_by = $1 AND x.result <> 'duplicate_in_settlement'
     AND ((l.type = 'refund' AND x.refund_id IS NOT NULL) OR (l.type = 'cancel' AND x.payment_id IS NOT NULL))
),
orphan AS (
  SELECT DISTINCT ON (o.type, COALESCE(o.refund_id, o.payment_id)) x.line_id, x.settlement_id, x.import_id
    FROM old o
    JOIN settlement_line_results x ON x.result = 'duplicate_in_settlement'
         AND ((o.type = 'refund' AND x.refund_id = o.refund_id) OR (o.type = 'cancel' AND x.payment_id = o.payment_id))
    JOIN settlements s ON s.id = x.settlement_id AND s.import_id = x.import_id
    JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id AND l.type = o.type
   WHERE NOT EXISTS (SELECT 1 FROM classified c
                      WHERE c.type = o.type AND c.result <> 'duplicate_in_settlement'
                        AND ((o.type = 'refund' AND c.ref_id = o.refund_id) OR (o.type = 'cancel' AND c.pay_id = o.payment_id)))
   ORDER BY o.type, COALESCE(o.refund_id, o.payment_id), s.settlement_date, x.line_id
),
closed AS (
  UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
    FROM orphan o
   WHERE d.line_id = o.line_id AND d.kind = 'duplicate_in_settlement' AND d.closed_at IS NULL
),
cleared AS (
  DELETE FROM settlement_line_results x USING orphan o WHERE x.line_id = o.line_id RETURNING x.*
)
INSERT INTO classified (id, line_no, settlement_id, type, provider_reference, provider_request_id, transaction_value,
       transaction_currency, settlement_value, settlement_currency, exchange_rate, fee_value, settled_at,
       pay_id, pay_amount, pay_currency, pay_status, pay_paid_at, pay_wallet_psp, ref_id, ref_amount, ref_currency, ref_status,
       line_import_id, result)
SELECT l.id, l.line_no, x.settlement_id, l.type, l.provider_reference, l.provider_request_id, l.transaction_value,
       l.transaction_currency, l.settlement_value, l.settlement_currency, l.exchange_rate, l.fee_value, l.settled_at,
       p.id, p.amount_value, p.currency, p.status, p.paid_at, p.wallet_psp, r.id, r.amount_value, r.currency, r.status,
       x.import_id,
       CASE WHEN COALESCE(r.currency, p.currency) <> l.transaction_currency THEN 'currency_mismatch'
            WHEN COALESCE(r.amount_value, p.amount_value) <> l.transaction_value THEN 'amount_mismatch'
            WHEN l.type = 'refund' AND r.status = 'pending' THEN 'pending'
            WHEN l.type = 'refund' AND r.status = 'succeeded' THEN 'matched'
            WHEN l.type = 'cancel' AND p.status = 'canceled' THEN 'matched'
            ELSE 'status_mismatch' END
  FROM cleared x
  JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id
  LEFT JOIN refunds r ON r.id = x.refund_id
  LEFT JOIN payments p ON p.id = x.payment_id
`;

/** Matched payments (and those matched with another amount or currency) are marked settled. */
const MARK_SQL = `
INSERT INTO payment_settlements (payment_id, merchant_id, provider, settlement_id, line_id, amount_value, currency,
       rate, fee_value, settled_at, paid_on, payment_currency, payment_wallet_psp)
SELECT c.pay_id, $1, $2, c.settlement_id, c.id, c.settlement_value,
       c.settlement_currency, c.exchange_rate, c.fee_value, c.settled_at, (c.pay_paid_at AT TIME ZONE 'UTC')::date,
       c.pay_currency, c.pay_wallet_psp
  FROM classified c
 WHERE c.type = 'payment' AND c.result IN ('matched', 'amount_mismatch', 'currency_mismatch')
`;

/**
 * A payment line of a current batch that was a status_mismatch (the ledger says canceled) is
 * matched once this file's cancel line for it comes (paid before midnight, reversed after: two
 * days, two files): its discrepancy closes and the payment is marked settled by its line, as when
 * both lines come in one file. $1 merchant, $2 provider.
 */
const REVERSED_LATER_SQL = `
WITH fixed AS (
  -- One line a payment: a second one is the first's duplicate (CLASSIFY_SQL), whatever came first.
  SELECT DISTINCT ON (x.payment_id) x.line_id, x.import_id, x.settlement_id, x.payment_id
    FROM classified c
    JOIN settlement_line_results x ON x.payment_id = c.pay_id AND x.result = 'status_mismatch'
    JOIN settlements s ON s.id = x.settlement_id AND s.import_id = x.import_id
    JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id AND l.type = 'payment'
   WHERE c.type = 'cancel' AND c.result = 'matched' AND c.pay_status = 'canceled'
   ORDER BY x.payment_id, s.settlement_date, x.line_id
),
results AS (
  UPDATE settlement_line_results x SET result = 'matched', recheck = false FROM fixed f WHERE x.line_id = f.line_id
),
closed AS (
  UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
    FROM fixed f
   WHERE d.line_id = f.line_id AND d.kind = 'status_mismatch' AND d.closed_at IS NULL
)
INSERT INTO payment_settlements (payment_id, merchant_id, provider, settlement_id, line_id, amount_value, currency,
       rate, fee_value, settled_at, paid_on, payment_currency, payment_wallet_psp)
SELECT f.payment_id, $1, $2, f.settlement_id, l.id, l.settlement_value, l.settlement_currency, l.exchange_rate,
       l.fee_value, l.settled_at, (p.paid_at AT TIME ZONE 'UTC')::date, p.currency, p.wallet_psp
  FROM fixed f
  JOIN settlement_lines l ON l.id = f.line_id AND l.import_id = f.import_id
  JOIN payments p ON p.id = f.payment_id
 WHERE NOT EXISTS (SELECT 1 FROM payment_settlements ps WHERE ps.payment_id = f.payment_id)
`;

/** A payment line matched by the provider's id needs no row: that is what a line without one means. */
const RESULTS_SQL = `
INSERT INTO settlement_line_results (line_id, import_id, settlement_id, result, payment_id, refund_id, recheck)
SELECT c.id, COALESCE(c.line_import_id, $1), c.settlement_id, c.result, c.pay_id, c.ref_id,
       c.result = 'status_mismatch' AND c.type <> 'refund' AND c.pay_status IN (${UNDECIDED})
  FROM classified c
 WHERE NOT (c.type = 'payment' AND c.result = 'matched' AND c.by_reference IS NOT NULL)
`;

/**
 * A status_mismatch's detail, one wording wherever it is found: the line of `row` (its line_no and
 * type) settled what the ledger holds, as `id`, in status `status` (SQL expressions).
 */
const statusMismatchDetail = (row: string, id: string, status: string) =>
  `format('line %s: the provider settled a %s, but the ledger %s %s is %s', ${row}.line_no, ${row}.type,
          CASE WHEN ${row}.type = 'refund' THEN 'refund' ELSE 'payment' END, ${id}, ${status})`;

const DISCREPANCIES_SQL = `
WITH disc AS (
  INSERT INTO reconciliation_discrepancies (id, merchant_id, provider, settlement_id, line_id, import_id, kind,
         payment_id, refund_id, provider_reference, expected_value, expected_currency, actual_value,
         actual_currency, detail)
  SELECT tb_random_id('dsc'), $2, $3, c.settlement_id, c.id, $1, c.result, c.pay_id, c.ref_id,
         -- The ledger's own reference where the line has one (API.md: the payment's
         -- provider_reference), not a cancel's id or an id the ledger never saw.
         COALESCE(CASE WHEN c.type = 'refund' THEN (SELECT r.provider_reference FROM refunds r WHERE r.id = c.ref_id)
                       ELSE (SELECT p.provider_reference FROM payments p WHERE p.id = c.pay_id) END,
                  c.provider_reference),
         CASE WHEN c.type = 'refund' THEN c.ref_amount ELSE c.pay_amount END,
         CASE WHEN c.type = 'refund' THEN c.ref_currency ELSE c.pay_currency END,
         c.transaction_value, c.transaction_currency,
         CASE c.result
           WHEN 'missing_in_ledger' THEN format('line %s: no %s with provider reference %s%s in the ledger',
             c.line_no, c.type, c.provider_reference,
             CASE WHEN c.provider_request_id IS NULL THEN '' ELSE ' or request id ' || c.provider_request_id END)
           WHEN 'duplicate_in_settlement' THEN format('line %s: %s %s is settled more than once (%s)',
             c.line_no, c.type, c.provider_reference,
             CASE WHEN c.first_line IS NULL OR c.first_line = c.line_no THEN 'already in another settlement'
                  WHEN c.first_line < c.line_no THEN 'first on line ' || c.first_line
                  ELSE 'also on line ' || c.first_line END)
           WHEN 'currency_mismatch' THEN format('line %s: the provider reports %s in %s, the ledger has %s in %s (minor units)',
             c.line_no, c.transaction_value, c.transaction_currency,
             CASE WHEN c.type = 'refund' THEN c.ref_amount ELSE c.pay_amount END,
             CASE WHEN c.type = 'refund' THEN c.ref_currency ELSE c.pay_currency END)
           -- In minor units, said so: "7700 EUR" reads as a hundred times the amount.
           WHEN 'amount_mismatch' THEN format('line %s: the provider reports %s, the ledger has %s (minor units of %s)',
             c.line_no, c.transaction_value,
             CASE WHEN c.type = 'refund' THEN c.ref_amount ELSE c.pay_amount END, c.transaction_currency)
           ELSE ${statusMismatchDetail('c', 'COALESCE(c.ref_id, c.pay_id)', 'COALESCE(c.ref_status, c.pay_status)')}
         END
    FROM classified c
   WHERE c.result NOT IN ('matched', 'pending')
  RETURNING *
),
${DISCREPANCY_EVENTS}
SELECT count(*) FROM disc
`;

/**
 * The other way round: a payment line of a current batch, matched as a sale paid and reversed (the
 * ledger's payment canceled), whose cancel line a correction took away. With no current cancel line
 * left for it, the provider settled a sale the ledger has canceled: a status_mismatch, as had the
 * line come alone, and the payment is no longer settled. $1 this import, $2 merchant, $3 provider.
 */
const UNREVERSED_SQL = `
WITH taken AS (
  SELECT DISTINCT x.payment_id
    FROM settlement_versions v
    JOIN settlement_line_results x ON x.settlement_id = v.settlement_id AND x.import_id = v.import_id
    JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id AND l.type = 'cancel'
   WHERE v.superseded_by = $1 AND x.result = 'matched'
),
unmarked AS (
  DELETE FROM payment_settlements ps USING taken t, payments p
   WHERE ps.payment_id = t.payment_id AND p.id = t.payment_id AND p.status = 'canceled'
     AND NOT EXISTS (${CURRENT_LINE('cancel', 't.payment_id', "o.result = 'matched'")})
  RETURNING ps.payment_id, ps.settlement_id, ps.line_id
),
lines AS (
  SELECT u.payment_id, u.settlement_id, l.id AS line_id, s.import_id, l.line_no, l.type, l.transaction_value,
         l.transaction_currency, p.provider_reference, p.amount_value, p.currency, p.status
    FROM unmarked u
    JOIN settlements s ON s.id = u.settlement_id
    JOIN settlement_lines l ON l.id = u.line_id AND l.import_id = s.import_id
    JOIN payments p ON p.id = u.payment_id
),
results AS (
  INSERT INTO settlement_line_results (line_id, import_id, settlement_id, result, payment_id)
  SELECT line_id, import_id, settlement_id, 'status_mismatch', payment_id FROM lines
  ON CONFLICT (line_id) DO UPDATE SET result = 'status_mismatch', recheck = false
),
disc AS (
  INSERT INTO reconciliation_discrepancies (id, merchant_id, provider, settlement_id, line_id, import_id, kind,
         payment_id, provider_reference, expected_value, expected_currency, actual_value, actual_currency, detail)
  SELECT tb_random_id('dsc'), $2, $3, r.settlement_id, r.line_id, $1, 'status_mismatch', r.payment_id,
         r.provider_reference, r.amount_value, r.currency, r.transaction_value, r.transaction_currency,
         ${statusMismatchDetail('r', 'r.payment_id', 'r.status')}
    FROM lines r
  RETURNING *
),
${DISCREPANCY_EVENTS}
SELECT count(*)::int AS n FROM disc
`;

/**
 * Due, by its time `t`: the provider's settlement delay has passed by the dates it has settled, or
 * it has already settled payments sold in the same currency through the same wallet on the same day
 * or later (`s`, the marks of that sale currency and wallet: another currency's batch of the day,
 * or another wallet's where the provider settles each wallet apart, may come in a file of its own).
 */
const due = (t: string) => `(${delayPassed(t)} OR (${t} AT TIME ZONE 'UTC')::date <= s.last_paid)`;
const delayPassed = (t: string) => `(${t} AT TIME ZONE 'UTC')::date + $3::int <= h.last_date`;

/**
 * Payments and succeeded refunds due in a settlement and in none, not yet reported: read-only,
 * into a temporary table, so that its anti-join of every payment against every mark may run in
 * parallel (a statement that writes may not). A refund is in a settlement when a line of a current
 * batch version names it; a succeeded refund is final, so its row last changed when it succeeded.
 * Refunds made before they were checked at all are not (migration 109).
 * $1 merchant, $2 provider, $3 the provider's settlement delay in days.
 */
const DUE_UNSETTLED_SQL = `
CREATE TEMP TABLE due_unsettled ON COMMIT DROP AS
WITH horizon AS (
  SELECT max(settlement_date) AS last_date,
         (array_agg(id ORDER BY settlement_date DESC, created_at DESC, id DESC))[1] AS latest
    FROM settlements WHERE merchant_id = $1 AND provider = $2
),
settled AS (
  SELECT payment_currency AS currency, payment_wallet_psp AS wallet_psp, max(paid_on) AS last_paid
    FROM payment_settlements
   WHERE merchant_id = $1 AND provider = $2
   GROUP BY payment_currency, payment_wallet_psp
)
SELECT 'payment' AS object, p.id, p.provider_reference, p.amount_value, p.currency, p.wallet_psp, p.paid_at AS done_at,
       h.latest, ${delayPassed('p.paid_at')} AS delay_passed
  FROM payments p CROSS JOIN horizon h
  LEFT JOIN settled s ON s.currency = p.currency AND s.wallet_psp IS NOT DISTINCT FROM p.wallet_psp
 WHERE p.merchant_id = $1 AND p.provider = $2 AND p.paid_at IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM payment_settlements ps WHERE ps.payment_id = p.id)
   AND p.status IN ('succeeded', 'partially_refunded', 'refunded') AND h.latest IS NOT NULL
   AND ${due('p.paid_at')}
   -- A paid sale with an open status_mismatch was named by a cancel line (the provider reversed
   -- it): that is its one discrepancy, not also a settlement gone missing.
   AND NOT EXISTS (SELECT 1 FROM reconciliation_discrepancies d
                    WHERE d.payment_id = p.id AND d.closed_at IS NULL
                      AND d.kind IN ('missing_in_settlement', 'status_mismatch'))
UNION ALL
SELECT 'refund', r.id, r.provider_reference, r.amount_value, r.currency, p.wallet_psp, r.updated_at, h.latest,
       ${delayPassed('r.updated_at')}
  FROM refunds r JOIN payments p ON p.id = r.payment_id CROSS JOIN horizon h
  LEFT JOIN settled s ON s.currency = r.currency AND s.wallet_psp IS NOT DISTINCT FROM p.wallet_psp
 WHERE r.merchant_id = $1 AND p.provider = $2 AND r.status = 'succeeded' AND r.settlement_expected
   AND h.latest IS NOT NULL
   AND ${due('r.updated_at')}
   AND NOT EXISTS (SELECT 1 FROM settlement_line_results x JOIN settlements so ON so.id = x.settlement_id
                    WHERE x.refund_id = r.id AND so.import_id = x.import_id)
   AND NOT EXISTS (SELECT 1 FROM reconciliation_discrepancies d
                    WHERE d.refund_id = r.id AND d.closed_at IS NULL AND d.kind = 'missing_in_settlement')
`;

/** Each payment or refund of DUE_UNSETTLED_SQL becomes missing_in_settlement. */
const MISSING_IN_SETTLEMENT_SQL = `
WITH disc AS (
  INSERT INTO reconciliation_discrepancies (id, merchant_id, provider, settlement_id, import_id, kind, payment_id,
         refund_id, provider_reference, expected_value, expected_currency, detail)
  -- Reported against the latest batch in its own currency where there is one (the batch it should
  -- have been in), else the latest batch.
  SELECT tb_random_id('dsc'), $2, $3,
         COALESCE((SELECT s.id FROM settlements s
                    WHERE s.merchant_id = $2 AND s.provider = $3 AND s.currency = f.currency
                    ORDER BY s.settlement_date DESC, s.created_at DESC, s.id DESC LIMIT 1), f.latest),
         $1, 'missing_in_settlement', CASE WHEN f.object = 'payment' THEN f.id END,
         CASE WHEN f.object = 'refund' THEN f.id END,
         COALESCE(f.provider_reference, ''), f.amount_value, f.currency,
         format('%s %s succeeded on %s and is in no settlement: %s',
                f.object, f.id, to_char(f.done_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                CASE WHEN f.delay_passed THEN format('the provider settles within %s day(s)', $4::int)
                     ELSE format('the provider has settled other payments in %s of that day or later%s', f.currency,
                                 CASE WHEN f.wallet_psp IS NULL THEN ''
                                      ELSE format(' through the same wallet (%s)', f.wallet_psp) END) END)
    FROM due_unsettled f
  RETURNING *
),
${DISCREPANCY_EVENTS}
SELECT count(*)::int AS n FROM disc
`;

/**
 * Lines that await a decision (a refund pending, or a sale undecided: its status_mismatch marked
 * `recheck`) are matched again once it is final, as if it had been final then: a succeeded refund
 * or sale is matched (the sale marked settled by its line, and a missing_in_settlement reported in
 * between closed), a cancelled sale's cancel too, and anything else is a status_mismatch. A sale
 * cancelled after its payment line came is matched when a cancel line for it came as well (paid,
 * then reversed), as CLASSIFY_SQL does. A rechecked line's status_mismatch is closed when it is
 * matched (or found a duplicate), and otherwise kept, its detail naming the final status.
 * $1 provider, $2 merchant, $3 the import whose job this is (its counts are the job's to keep),
 * or null.
 */
const REMATCH_PENDING_SQL = `
WITH ready AS (
  SELECT x.line_id, x.import_id, x.settlement_id, x.payment_id, x.refund_id, l.line_no, l.type,
         l.transaction_value, l.transaction_currency, l.settlement_value, l.settlement_currency, l.exchange_rate,
         l.fee_value, l.settled_at, p.paid_at, p.currency AS pay_currency, p.wallet_psp AS pay_wallet_psp,
         COALESCE(r.provider_reference, p.provider_reference, l.provider_reference) AS provider_reference,
         COALESCE(r.status, p.status) AS status, x.recheck,
         CASE
           WHEN l.type = 'refund' THEN CASE WHEN r.status = 'succeeded' THEN 'matched' ELSE 'status_mismatch' END
           WHEN l.type = 'cancel' THEN CASE WHEN p.status = 'canceled' THEN 'matched' ELSE 'status_mismatch' END
           WHEN p.status IN ('succeeded', 'partially_refunded', 'refunded') THEN
             CASE WHEN EXISTS (SELECT 1 FROM payment_settlements ps WHERE ps.payment_id = p.id)
                  THEN 'duplicate_in_settlement' ELSE 'matched' END
           WHEN p.status = 'canceled' AND EXISTS (${CURRENT_LINE('cancel', 'p.id', "(o.result = 'matched' OR o.recheck)")})
             THEN 'matched'
           ELSE 'status_mismatch' END AS result
    FROM settlement_line_results x
    JOIN settlements s ON s.id = x.settlement_id AND s.import_id = x.import_id
    JOIN settlement_lines l ON l.import_id = x.import_id AND l.id = x.line_id
    LEFT JOIN refunds r ON r.id = x.refund_id
    LEFT JOIN payments p ON p.id = x.payment_id
   WHERE ${AWAITS_DECISION} AND s.merchant_id = $2 AND s.provider = $1
     AND ${DECIDED_NOW}
),
upd AS (
  UPDATE settlement_line_results x SET result = r.result, recheck = false FROM ready r WHERE x.line_id = r.line_id
),
rechecked AS (
  UPDATE reconciliation_discrepancies d
     SET closed_at = CASE WHEN r.result <> 'status_mismatch' THEN now() END,
         closed_reason = CASE WHEN r.result <> 'status_mismatch' THEN 'resolved' END,
         detail = CASE WHEN r.result = 'status_mismatch'
                       THEN ${statusMismatchDetail('r', 'r.payment_id', 'r.status')} ELSE d.detail END
    FROM ready r
   WHERE r.recheck AND d.line_id = r.line_id AND d.kind = 'status_mismatch' AND d.closed_at IS NULL
),
marks AS (
  INSERT INTO payment_settlements (payment_id, merchant_id, provider, settlement_id, line_id, amount_value, currency,
         rate, fee_value, settled_at, paid_on, payment_currency, payment_wallet_psp)
  SELECT DISTINCT ON (r.payment_id) r.payment_id, $2, $1, r.settlement_id, r.line_id, r.settlement_value,
         r.settlement_currency, r.exchange_rate, r.fee_value, r.settled_at, (r.paid_at AT TIME ZONE 'UTC')::date,
         r.pay_currency, r.pay_wallet_psp
    FROM ready r
   WHERE r.type = 'payment' AND r.result = 'matched'
   ORDER BY r.payment_id, r.line_id
),
resolved AS (
  UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
    FROM ready r
   WHERE d.kind = 'missing_in_settlement' AND d.closed_at IS NULL AND r.result = 'matched'
     AND ((r.type = 'payment' AND d.payment_id = r.payment_id) OR (r.type = 'refund' AND d.refund_id = r.refund_id))
),
disc AS (
  INSERT INTO reconciliation_discrepancies (id, merchant_id, provider, settlement_id, line_id, import_id, kind,
         payment_id, refund_id, provider_reference, expected_value, expected_currency, actual_value, actual_currency,
         detail)
  SELECT tb_random_id('dsc'), $2, $1, r.settlement_id, r.line_id, r.import_id, r.result, r.payment_id, r.refund_id,
         r.provider_reference, r.transaction_value, r.transaction_currency, r.transaction_value,
         r.transaction_currency,
         CASE WHEN r.result = 'duplicate_in_settlement'
              THEN format('line %s: payment %s is settled more than once (already in another settlement)',
                          r.line_no, r.provider_reference)
              ELSE ${statusMismatchDetail('r', 'COALESCE(r.refund_id, r.payment_id)', 'r.status')} END
    FROM ready r WHERE r.result <> 'matched' AND NOT (r.recheck AND r.result = 'status_mismatch')
  RETURNING *
),
-- An import still awaiting its undecided lines counts their results as its own.
awaiting AS (
  UPDATE settlement_imports i
     SET counts = i.counts || jsonb_build_object(
           'pending', GREATEST((i.counts->>'pending')::int - o.n, 0),
           'matched', (i.counts->>'matched')::int + o.matched,
           'discrepancies', (i.counts->>'discrepancies')::int + o.n - o.matched,
           'by_kind', COALESCE(i.counts->'by_kind', '{}') || (
             SELECT COALESCE(jsonb_object_agg(k.result, COALESCE((i.counts->'by_kind'->>k.result)::int, 0) + k.n), '{}')
               FROM (SELECT r.result, count(*)::int AS n FROM ready r
                      WHERE r.import_id = i.id AND NOT r.recheck AND r.result <> 'matched' GROUP BY r.result) k))
    FROM (SELECT import_id, count(*)::int AS n, count(*) FILTER (WHERE result = 'matched')::int AS matched
            FROM ready WHERE NOT recheck GROUP BY import_id) o
   WHERE i.id = o.import_id AND i.status = 'awaiting'
  RETURNING i.id
),
${DISCREPANCY_EVENTS}
SELECT (SELECT count(*) FROM ready)::int AS rematched,
       (SELECT COALESCE(jsonb_object_agg(result, n), '{}')
          FROM (SELECT result, count(*)::int AS n FROM ready WHERE NOT recheck AND import_id = $3::text
                 GROUP BY result) k) AS own_results,
       -- A rechecked line's new discrepancy (a duplicate) is new to whichever job finds it.
       (SELECT COALESCE(jsonb_object_agg(kind, n), '{}')
          FROM (SELECT d.kind, count(*)::int AS n FROM disc d JOIN ready r ON r.line_id = d.line_id
                 WHERE r.recheck OR (d.import_id NOT IN (SELECT id FROM awaiting)
                                     AND d.import_id IS DISTINCT FROM $3::text)
                 GROUP BY d.kind) k) AS unowned_discrepancies
`;

/**
 * Imports awaiting undecided lines ($1 provider, $2 merchant) complete once none of their lines in
 * a current batch version is still pending (decided since, or superseded by a corrected file).
 */
const COMPLETE_AWAITING_SQL = `
UPDATE settlement_imports i SET status = 'completed', finished_at = clock_timestamp(),
       counts = i.counts || '{"pending": 0}'
 WHERE i.provider = $1 AND i.merchant_id = $2 AND i.status = 'awaiting'
   AND NOT EXISTS (SELECT 1 FROM settlements s
                     JOIN settlement_line_results x ON x.settlement_id = s.id AND x.import_id = s.import_id
                    WHERE s.import_id = i.id AND x.result = 'pending')
`;

/** From this many lines an import is worth fresh statistics before the matching statement is planned. */
const ANALYZE_FROM_LINES = 10_000;

/** The ledger tables the job's statements join, whose row counts decide between a hash join and a nested loop. */
const LEDGER_TABLES = ['payments', 'refunds', 'payment_settlements', 'reconciliation_discrepancies'];

/**
 * ANALYZEs those of `tables` never analyzed or that changed enough since, by autovacuum's own rule
 * (50 rows and a tenth of the table; counted by PostgreSQL a few seconds late), for a server that runs without autovacuum or has not
 * come round to them yet: planned with stale counts (a merchant's thousands of new payments taken
 * for one), the job's anti-joins become nested loops that take minutes, holding the merchant's lock.
 * Outside the job's transaction, like ANALYZE settlement_lines.
 */
async function analyzeStale(client: pg.PoolClient, tables: string[]): Promise<void> {
  const { rows } = await client.query<{ relname: string }>(
    `SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
      WHERE s.schemaname = current_schema() AND s.relname = ANY($1)
        AND (c.reltuples < 0 OR s.n_mod_since_analyze > 50 + 0.1 * c.reltuples)`,
    [tables],
  );
  for (const { relname } of rows) await client.query(`ANALYZE ${client.escapeIdentifier(relname)}`);
}

/** Held to commit: what settles the merchant's payments with one provider is done by one at a time. */
async function lockLedger(client: pg.PoolClient, merchantId: string, provider: string): Promise<void> {
  await lockUntilCommit(client, ledgerLock(merchantId, provider));
}

const ledgerLock = (merchantId: string, provider: string) => `settlement-ledger:${merchantId}:${provider}`;

/** Applies the import's received lines; the caller owns the transaction. */
async function applyLines(
  client: pg.PoolClient,
  job: ImportRow,
  adapter: WalletAdapter<unknown>,
  batches: ReceivedBatch[],
  counts: ImportCounts,
): Promise<string[]> {
  const { id: importId, merchant_id: merchantId, provider } = job;
  const lineIds = [job.first_line_id, job.last_line_id];
  // One job at a time per merchant and provider, held to commit: the same batch twice yields one
  // version, a payment settled by two files at once is a duplicate in the second, and the ledger
  // side never reports missing a payment another file is settling right now.
  await lockLedger(client, merchantId, provider);
  // A sale decided since an earlier file's line for it came, and not yet matched again by the
  // sweeper, is settled by that line, not by this file's.
  if (await rematchDecided(client, job, counts)) await refreshBatchStatuses(client, merchantId, provider, []);
  const ordered = [...batches].sort((a, b) =>
    `${a.batch_ref}\u0000${a.currency}` < `${b.batch_ref}\u0000${b.currency}` ? -1 : 1,
  );
  // The batches this file changes: batch ids, currencies and settlement ids, side by side.
  const changedRefs: string[] = [];
  const changedCurrencies: string[] = [];
  const changed: string[] = [];
  const superseded: string[] = [];
  for (const batch of ordered) {
    const hash = batch.content_hash;
    // `seen`: this content was a version of the batch once. The same file imported again changes
    // nothing, also when a correction came in between (an old file sent again must not undo it).
    const { rows } = await client.query<{ id: string; seen: boolean }>(
      `SELECT s.id, s.content_hash = $5 OR EXISTS (SELECT 1 FROM settlement_versions v
                                                   WHERE v.settlement_id = s.id AND v.content_hash = $5) AS seen
         FROM settlements s
        WHERE s.merchant_id = $1 AND s.provider = $2 AND s.provider_batch_id = $3 AND s.currency = $4
          FOR UPDATE`,
      [merchantId, provider, batch.batch_ref, batch.currency, hash],
    );
    const existing = rows[0];
    let settlementId: string;
    if (existing?.seen || (existing && (await sameLinesAsAVersion(client, existing.id, job, batch)))) {
      counts.batches_unchanged++;
      counts.lines_unchanged += batch.lines;
      continue;
    }
    if (existing) {
      settlementId = existing.id;
      superseded.push(settlementId);
      counts.batches_superseded++;
      await client.query(
        `UPDATE settlements SET version = version + 1, content_hash = $2, import_id = $3, updated_at = now()
          WHERE id = $1`,
        [settlementId, hash, importId],
      );
    } else {
      const created = await client.query<{ id: string }>(
        `INSERT INTO settlements (id, merchant_id, provider, provider_batch_id, currency, settlement_date, status,
                                  content_hash, import_id)
         VALUES (tb_random_id('stl'), $1, $2, $3, $4, $7, 'reconciled', $5, $6)
         RETURNING id`,
        [merchantId, provider, batch.batch_ref, batch.currency, hash, importId, batch.settlement_date],
      );
      settlementId = created.rows[0].id;
      counts.batches_created++;
    }
    changedRefs.push(batch.batch_ref);
    changedCurrencies.push(batch.currency);
    changed.push(settlementId);
  }
  const changedBatches = [changedRefs, changedCurrencies, changed];
  /** The changed batches as a table `c`, from the three arrays given as parameters $n, $n+1, $n+2. */
  const changedAt = (n: number) =>
    `unnest($${n}::text[], $${n + 1}::text[], $${n + 2}::text[]) AS c (batch_ref, currency, settlement_id)`;
  if (superseded.length) await supersede(client, superseded, importId);
  if (changed.length) {
    const duplicates = await timed(counts, 'duplicates', () =>
      client.query<{
        type: string;
        provider_reference: string;
        request_key: string | null;
        first_line: number;
      }>(DUPLICATES_SQL, [importId, ...lineIds, changedRefs, changedCurrencies, job.repeats_listed]),
    );
    await timed(counts, 'classify', () =>
      client.query(CLASSIFY_SQL, [
        importId,
        merchantId,
        provider,
        ...lineIds,
        ...changedBatches,
        duplicates.rows.map((d) => d.type),
        duplicates.rows.map((d) => d.provider_reference),
        duplicates.rows.map((d) => d.first_line),
        duplicates.rows.map((d) => d.request_key),
      ]),
    );
    const candidates = await client.query<{ payments: boolean; refunds: boolean }>(DUPLICATE_CANDIDATES_SQL);
    if (candidates.rows[0].payments) await client.query(DUPLICATE_PAYMENTS_BY_REQUEST_ID_SQL);
    if (candidates.rows[0].refunds) await client.query(DUPLICATE_REFUNDS_SQL);
    if (superseded.length) {
      await client.query(ORPHANED_DUPLICATES_SQL);
      await client.query(ORPHANED_REPEATS_SQL, [importId]);
    }
    await timed(counts, 'mark', () => client.query(MARK_SQL, [merchantId, provider]));
    await client.query(RESULTS_SQL, [importId]);
    await client.query(DISCREPANCIES_SQL, [importId, merchantId, provider]);
    const { rows } = await client.query<{ result: string; cancel: boolean; n: number }>(
      // This file's lines: not those of other batches that ORPHANED_DUPLICATES_SQL added.
      `SELECT result, type = 'cancel' AS cancel, count(*)::int AS n FROM classified WHERE settlement_id = ANY($1)
        GROUP BY 1, 2`,
      [changed],
    );
    // Only a matched cancel line can settle a payment line of an earlier file.
    if (rows.some((r) => r.cancel && r.result === 'matched'))
      await client.query(REVERSED_LATER_SQL, [merchantId, provider]);
    if (superseded.length) {
      const unreversed = await client.query<{ n: number }>(UNREVERSED_SQL, [importId, merchantId, provider]);
      countDiscrepancies(counts, 'status_mismatch', unreversed.rows[0].n);
    }
    for (const { result, n } of rows) {
      if (result === 'matched') counts.matched += n;
      else if (result === 'pending') counts.pending += n;
      else countDiscrepancies(counts, result as DiscrepancyKind, n);
    }
    // Totals as counted while the file was parsed (settlement_import_batches).
    await client.query(
      `UPDATE settlements s
          SET gross = b.gross, fees = b.fees, net = b.gross - b.fees, count = b.lines,
              settlement_date = b.settlement_date, updated_at = now()
         FROM ${changedAt(2)} JOIN settlement_import_batches b
              ON b.import_id = $1 AND b.batch_ref = c.batch_ref AND b.currency = c.currency
        WHERE s.id = c.settlement_id`,
      [importId, ...changedBatches],
    );
  }
  // An unchanged batch's lines were received for nothing: the batch keeps its own. (Only now: a
  // cancel on such a line still counted for a payment in a changed batch.)
  if (counts.batches_unchanged)
    await client.query(
      `DELETE FROM settlement_lines l WHERE l.id BETWEEN $2 AND $3 AND l.import_id = $1
          AND NOT EXISTS (SELECT 1 FROM ${changedAt(4)} WHERE c.batch_ref = l.batch_ref AND c.currency = l.settlement_currency)`,
      [importId, ...lineIds, ...changedBatches],
    );
  // The list of possible repeats has served (DUPLICATES_SQL).
  await client.query('DELETE FROM settlement_import_repeats WHERE import_id = $1', [importId]);
  // A file that changed no batch (the same file again, or no lines) changes nothing: payments made
  // since are for the next file that settles something to report.
  if (!changed.length) return changed;
  await timed(counts, 'ledger', () => reconcileLedger(client, job, adapter, changed, counts));
  await client.query(
    `INSERT INTO settlement_versions (settlement_id, version, import_id, content_hash, gross, fees, net, count,
                                      discrepancies)
     SELECT s.id, s.version, $2, s.content_hash, s.gross, s.fees, s.net, s.count,
            (SELECT count(*) FROM reconciliation_discrepancies d WHERE d.settlement_id = s.id AND d.closed_at IS NULL)
       FROM settlements s WHERE s.id = ANY($1)`,
    [changed, importId],
  );
  await client.query(
    `INSERT INTO outbox (event_id, merchant_id, type, payload)
     SELECT e.payload->>'id', $2, 'settlement.reconciled', e.payload
       FROM (SELECT tb_event('settlement.reconciled', tb_settlement_json(s)) AS payload
               FROM settlements s WHERE s.id = ANY($1) ORDER BY s.provider_batch_id) e`,
    [changed, merchantId],
  );
  return changed;
}

/** What a settlement line settles: every column a batch's content hash covers. */
const LINE_CONTENT = `batch_ref, type, provider_reference, original_provider_reference, provider_request_id,
  transaction_value, transaction_currency, settlement_value, settlement_currency, fee_value, exchange_rate,
  settled_at, transacted_at, store_id, wallet_psp`;

/**
 * Whether the batch's lines in this import are those of one of its versions, in another order (a
 * provider's re-export, an API that lists in no fixed order): the content hash follows the order
 * of the lines, so it says "changed". Compared line by line only for a version with the same count
 * and totals; a real correction mostly differs there already.
 */
async function sameLinesAsAVersion(
  client: pg.PoolClient,
  settlementId: string,
  job: ImportRow,
  batch: ReceivedBatch,
): Promise<boolean> {
  const { rows } = await client.query<{ same: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM settlement_versions v JOIN settlement_imports i ON i.id = v.import_id
        WHERE v.settlement_id = $1 AND v.count = $6 AND v.gross = $7 AND v.fees = $8
          AND NOT EXISTS (
            SELECT ${LINE_CONTENT} FROM settlement_lines
             WHERE id BETWEEN $3 AND $4 AND import_id = $2 AND batch_ref = $5 AND settlement_currency = $9
            EXCEPT ALL
            SELECT ${LINE_CONTENT} FROM settlement_lines
             WHERE id BETWEEN i.first_line_id AND i.last_line_id AND import_id = i.id
               AND batch_ref = $5 AND settlement_currency = $9)) AS same`,
    [
      settlementId,
      job.id,
      job.first_line_id,
      job.last_line_id,
      batch.batch_ref,
      batch.lines,
      batch.gross,
      batch.fees,
      batch.currency,
    ],
  );
  return rows[0].same;
}

/**
 * The current version of each batch becomes history: its discrepancies closed, its payments no
 * longer settled by it (its lines stop being current with settlements.import_id). Those of its
 * payments that another batch repeated are kept in `unsettled` for ORPHANED_DUPLICATES_SQL.
 */
async function supersede(client: pg.PoolClient, ids: string[], importId: string): Promise<void> {
  await client.query(
    `UPDATE reconciliation_discrepancies SET closed_at = now(), closed_reason = 'superseded'
      WHERE settlement_id = ANY($1) AND closed_at IS NULL`,
    [ids],
  );
  await client.query('CREATE TEMP TABLE unsettled (payment_id text NOT NULL) ON COMMIT DROP');
  await client.query(
    `WITH gone AS (DELETE FROM payment_settlements WHERE settlement_id = ANY($1) RETURNING payment_id)
     INSERT INTO unsettled (payment_id)
     SELECT g.payment_id FROM gone g
      WHERE EXISTS (SELECT 1 FROM settlement_line_results x
                     WHERE x.payment_id = g.payment_id AND x.result = 'duplicate_in_settlement')`,
    [ids],
  );
  // Likewise a sale whose line there awaited its decision (it has no mark yet).
  await client.query(
    `INSERT INTO unsettled (payment_id)
     SELECT DISTINCT x.payment_id
       FROM settlement_versions v
       JOIN settlement_line_results x ON x.settlement_id = v.settlement_id AND x.import_id = v.import_id
       JOIN settlement_lines l ON l.id = x.line_id AND l.import_id = x.import_id AND l.type = 'payment'
      WHERE v.settlement_id = ANY($1) AND v.superseded_at IS NULL AND ${AWAITS_DECISION}
        AND EXISTS (SELECT 1 FROM settlement_line_results d
                     WHERE d.payment_id = x.payment_id AND d.result = 'duplicate_in_settlement')`,
    [ids],
  );
  await client.query(
    `UPDATE settlement_versions SET superseded_at = now(), superseded_by = $2
      WHERE settlement_id = ANY($1) AND superseded_at IS NULL`,
    [ids, importId],
  );
}

/**
 * Lines awaiting a decision that is made now are matched again (REMATCH_PENDING_SQL), inside the
 * job: before its own lines are classified (a later file must find a sale an earlier one settled
 * as settled) and after them. Returns how many.
 */
async function rematchDecided(client: pg.PoolClient, job: ImportRow, counts: ImportCounts): Promise<number> {
  const {
    rematched,
    own_results: own,
    unowned_discrepancies: unowned,
  } = await matchDecidedAgain(client, job.provider, job.merchant_id, job.id);
  // This file's own lines decided since they were classified a moment ago.
  for (const [result, n = 0] of Object.entries(own)) {
    counts.pending -= n;
    if (result === 'matched') counts.matched += n;
    else countDiscrepancies(counts, result as DiscrepancyKind, n);
  }
  // An import awaiting its lines counts their results itself; the rest are this job's: each is
  // new, whichever file brought its line.
  for (const [kind, n = 0] of Object.entries(unowned)) countDiscrepancies(counts, kind as DiscrepancyKind, n);
  return rematched;
}

/**
 * REMATCH_PENDING_SQL for a merchant and provider (`importId`: the job's, whose counts are its own,
 * or null for the sweeper), then the imports left with nothing to await complete.
 */
async function matchDecidedAgain(
  client: pg.PoolClient,
  provider: string,
  merchantId: string,
  importId: string | null,
) {
  const { rows } = await client.query<{
    rematched: number;
    own_results: Partial<Record<'matched' | DiscrepancyKind, number>>;
    unowned_discrepancies: Partial<Record<DiscrepancyKind, number>>;
  }>(REMATCH_PENDING_SQL, [provider, merchantId, importId]);
  await client.query(COMPLETE_AWAITING_SQL, [provider, merchantId]);
  return rows[0];
}

/**
 * What the ledger says beyond the file's own lines: settled-late payments close their
 * missing_in_settlement, pending refunds are matched again, due payments not settled are reported,
 * and every batch of this merchant and provider gets its status.
 */
async function reconcileLedger(
  client: pg.PoolClient,
  job: ImportRow,
  adapter: WalletAdapter<unknown>,
  changed: string[],
  counts: ImportCounts,
): Promise<void> {
  // Only the batches this file changed can have settled a payment since the last job.
  await client.query(
    `UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
       FROM payment_settlements p
      WHERE d.merchant_id = $1 AND d.provider = $2 AND d.kind = 'missing_in_settlement' AND d.closed_at IS NULL
        AND p.settlement_id = ANY($3) AND p.payment_id = d.payment_id`,
    [job.merchant_id, job.provider, changed],
  );
  // Refunds that a line of a current batch version now names, whichever import brought it (a
  // worker of the previous version, which does not close these, may have): open ones are few.
  await client.query(
    `UPDATE reconciliation_discrepancies d SET closed_at = now(), closed_reason = 'resolved'
      WHERE d.merchant_id = $1 AND d.provider = $2 AND d.kind = 'missing_in_settlement' AND d.closed_at IS NULL
        AND d.refund_id IS NOT NULL
        AND EXISTS (SELECT 1 FROM settlement_line_results x JOIN settlements s ON s.id = x.settlement_id
                     WHERE x.refund_id = d.refund_id AND s.import_id = x.import_id)`,
    [job.merchant_id, job.provider],
  );
  await rematchDecided(client, job, counts);
  const delay = adapter.resolution.settlement_delay_days;
  const missing = await reportMissing(client, job.id, job.provider, job.merchant_id, delay);
  countDiscrepancies(counts, 'missing_in_settlement', missing);
  // A batch this file did not change may change status all the same (a payment it missed is
  // settled by this file): the merchant hears of it as of the batches this file changed, whose
  // events follow (applyLines).
  await refreshBatchStatuses(client, job.merchant_id, job.provider, changed);
}

/**
 * Payments and refunds due in a settlement of the merchant and provider and in none become
 * missing_in_settlement, reported by `importId`'s job; how many.
 */
async function reportMissing(
  client: pg.PoolClient,
  importId: string,
  provider: string,
  merchantId: string,
  delay: number,
): Promise<number> {
  // The planner walks payments in key order and sorts every mark to merge them (1.5 s at 1M);
  // hashing the marks is a third cheaper, and a merge join is never the better plan here.
  // And the marks just written have no statistics yet: the planner takes them for a handful, and
  // sorted a million to group them by currency (0.5 s and 70 MB), where hashing them costs nothing.
  await client.query('SET LOCAL enable_mergejoin = off; SET LOCAL enable_sort = off');
  await client.query(DUE_UNSETTLED_SQL, [merchantId, provider, delay]);
  await client.query('SET LOCAL enable_mergejoin = on; SET LOCAL enable_sort = on');
  const missing = await client.query<{ n: number }>(MISSING_IN_SETTLEMENT_SQL, [
    importId,
    merchantId,
    provider,
    delay,
  ]);
  return missing.rows[0]?.n ?? 0;
}

/**
 * Every batch of the merchant and provider gets the status its open discrepancies give it; each
 * whose status changes, except those in `quiet` (their event is sent by the caller), is sent as
 * `settlement.reconciled` again.
 */
async function refreshBatchStatuses(
  client: pg.PoolClient,
  merchantId: string,
  provider: string,
  quiet: string[],
): Promise<void> {
  await client.query(
    `WITH now_status AS (
       SELECT s.id, CASE WHEN EXISTS (SELECT 1 FROM reconciliation_discrepancies d
                                       WHERE d.settlement_id = s.id AND d.closed_at IS NULL)
                         THEN 'discrepancies' ELSE 'reconciled' END AS status
         FROM settlements s WHERE s.merchant_id = $1 AND s.provider = $2
     ),
     upd AS (
       UPDATE settlements s SET status = n.status, updated_at = now()
         FROM now_status n WHERE s.id = n.id AND s.status <> n.status
       RETURNING s AS batch
     )
     INSERT INTO outbox (event_id, merchant_id, type, payload)
     SELECT e.payload->>'id', $1, 'settlement.reconciled', e.payload
       FROM (SELECT tb_event('settlement.reconciled', tb_settlement_json(u.batch)) AS payload
               FROM upd u WHERE (u.batch).id <> ALL($3) ORDER BY (u.batch).provider_batch_id) e`,
    [merchantId, provider, quiet],
  );
}

/**
 * The sweeper's part: lines awaiting a decision (AWAITS_DECISION) whose refund or sale is final
 * now are matched again at once, not when the next file of that merchant and provider comes
 * (which may be never: the last file of a day). Under the same lock as the reconcile jobs.
 * Returns how many lines.
 */
export async function rematchDecidedLines(ctx: Context): Promise<number> {
  const { rows } = await ctx.db.query<{ merchant_id: string; provider: string }>(
    `SELECT DISTINCT s.merchant_id, s.provider
       FROM settlement_line_results x
       JOIN settlements s ON s.id = x.settlement_id AND s.import_id = x.import_id
       LEFT JOIN refunds r ON r.id = x.refund_id
       LEFT JOIN payments p ON p.id = x.payment_id
      WHERE ${AWAITS_DECISION}
        AND ${DECIDED_NOW}`,
  );
  let rematched = 0;
  for (const { merchant_id: merchantId, provider } of rows) {
    try {
      rematched += await inTransaction(ctx.bulkDb, async (client) => {
        // A reconcile job of theirs running now re-matches these lines itself: not waited for, so
        // the rest of the sweep is not held up behind a long file.
        const { rows: lock } = await client.query<{ taken: boolean }>(
          'SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS taken',
          [ledgerLock(merchantId, provider)],
        );
        if (!lock[0].taken) return 0;
        const { rematched: n } = await matchDecidedAgain(client, provider, merchantId, null);
        // A sale settled now may be the first word that others of its day are missing; told by
        // the import of the latest batch, as the next file's job would have.
        const delay = providerModule(provider)?.adapter.resolution.settlement_delay_days;
        if (n > 0 && delay !== undefined) {
          const { rows: latest } = await client.query<{ import_id: string }>(
            `SELECT import_id FROM settlements WHERE merchant_id = $1 AND provider = $2
              ORDER BY settlement_date DESC, created_at DESC, id DESC LIMIT 1`,
            [merchantId, provider],
          );
          if (latest[0]) await reportMissing(client, latest[0].import_id, provider, merchantId, delay);
        }
        await refreshBatchStatuses(client, merchantId, provider, []);
        return n;
      });
    } catch (error) {
      // The others go on; these are taken up again at the next sweep.
      ctx.log.error(
        { err: error, merchant_id: merchantId, provider },
        'could not match pending settlement lines again',
      );
    }
  }
  return rematched;
}

export class ReconcileError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly line?: number,
  ) {
    super(message);
  }
}

interface ReceivedBatch {
  batch_ref: string;
  currency: string;
  content_hash: string;
  lines: number;
  /** Minor units, as text (bigint). */
  gross: string;
  fees: string;
  /** YYYY-MM-DD (as text: node-postgres would read a `date` as local midnight). */
  settlement_date: string;
}

function emptyCounts(): ImportCounts {
  return {
    lines: 0,
    batches: 0,
    batches_created: 0,
    batches_superseded: 0,
    batches_unchanged: 0,
    lines_unchanged: 0,
    matched: 0,
    pending: 0,
    discrepancies: 0,
    by_kind: {},
    timings_ms: {},
  };
}

/**
 * Applies one received import (its lines already parsed and stored by receiveFile). A known
 * failure marks the import failed (no retry); any other error is thrown for bull to retry, and
 * recorded when `lastAttempt`.
 */
export async function reconcileImport(ctx: Context, importId: string, lastAttempt = true): Promise<void> {
  const started = await ctx.db.query<ImportRow>(
    `UPDATE settlement_imports SET status = 'running', started_at = COALESCE(started_at, now()),
            attempts = attempts + 1
      WHERE id = $1 AND status IN ('queued', 'running')
      RETURNING id, merchant_id, provider, first_line_id, last_line_id, repeats_listed`,
    [importId],
  );
  const job = started.rows[0];
  if (!job) return;
  const module = providerModule(job.provider);
  const log = ctx.log.child({ import_id: importId, provider: job.provider });
  const counts = emptyCounts();
  const client = await ctx.bulkDb.connect();
  let broken: Error | undefined;
  try {
    if (!module) throw new ReconcileError('provider_unknown', `no adapter for provider ${job.provider}`);
    const adapter = module.adapter;
    const { rows: batches } = await client.query<ReceivedBatch>(
      `SELECT batch_ref, currency, content_hash, lines, gross, fees, settlement_date::text AS settlement_date
         FROM settlement_import_batches WHERE import_id = $1`,
      [importId],
    );
    counts.lines = batches.reduce((sum, b) => sum + b.lines, 0);
    counts.batches = batches.length;
    // The planner must know how many lines it is about to join: a million lines planned as a dozen
    // become a million index probes. ANALYZE samples the table (a bounded cost), outside the
    // transaction, whose lock on the table would hold other merchants' jobs until its commit.
    if (counts.lines >= ANALYZE_FROM_LINES) await client.query('ANALYZE settlement_lines');
    await analyzeStale(client, LEDGER_TABLES);
    await client.query('BEGIN');
    // Hash joins and aggregates over a million lines stay in memory (the server's memory, not ours).
    await client.query("SET LOCAL work_mem = '512MB'");
    // One big statement per file: compiling it (JIT) costs seconds and saves nothing.
    await client.query('SET LOCAL jit = off');
    // Held to commit: a second run of this job (handed out twice) or a fetch receiving this import
    // again waits here, then finds it finished.
    const current = await client.query<{ status: string }>(
      'SELECT status FROM settlement_imports WHERE id = $1 FOR UPDATE',
      [importId],
    );
    if (current.rows[0]?.status !== 'running') {
      await client.query('ROLLBACK');
      return;
    }
    await timed(counts, 'apply', () => applyLines(client, job, adapter, batches, counts));
    // Refund lines still pending may yet become discrepancies: until the last is decided
    // (rematchDecidedLines), the import is awaiting, not completed.
    await client.query(
      `UPDATE settlement_imports SET status = $3, counts = $2,
              finished_at = CASE WHEN $3 = 'completed' THEN clock_timestamp() END,
              error_code = NULL, error_message = NULL, error_line = NULL
        WHERE id = $1`,
      [importId, counts, counts.pending ? 'awaiting' : 'completed'],
    );
    await timed(counts, 'commit', () => client.query('COMMIT'));
    ctx.metrics.reconciliation.inc({ provider: job.provider, result: 'matched' }, counts.matched);
    for (const [kind, n] of Object.entries(counts.by_kind))
      ctx.metrics.reconciliation.inc({ provider: job.provider, result: kind }, n ?? 0);
    log.info({ counts }, 'settlement file reconciled');
  } catch (error) {
    broken = await rollback(client, error);
    const known =
      error instanceof SettlementFormatError
        ? new ReconcileError('settlement_file_invalid', error.message, error.line_no)
        : error instanceof ReconcileError
          ? error
          : undefined;
    if (known || lastAttempt) {
      const code = known?.code ?? 'reconciliation_failed';
      const message = known?.message ?? `reconciliation failed: ${(error as Error).message}`;
      await ctx.db.query(
        `UPDATE settlement_imports SET status = 'failed', finished_at = clock_timestamp(), error_code = $2, error_message = $3,
                error_line = $4, counts = '{}'
          WHERE id = $1`,
        [importId, code, message, known?.line ?? null],
      );
      log[known ? 'warn' : 'error']({ err: error, code }, 'settlement import failed');
      // Lines of a file that was never applied belong to no batch (if this fails, the fetch
      // schedule's sweep deletes them).
      await discardLines(ctx.bulkDb, importId).catch(() => {});
      ctx.metrics.reconciliation.inc({ provider: job.provider, result: 'import_failed' });
    }
    if (!known) throw error;
  } finally {
    client.release(broken);
  }
}
