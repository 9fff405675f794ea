-- Settlement lines are written once, by the COPY that receives the file (receive.ts), into
-- settlement_lines itself, and never rewritten: the staging table, the job's second million-row
-- insert and its per-row indexes were most of a large import's time.
--
-- What the reconcile job decides about a line is kept apart, and only where there is something to
-- say: settlement_line_results holds every line that is not a payment matched by its provider
-- reference (discrepancies, pending refunds, refund and cancel lines, matches by our request id).
-- A line without a result row is matched, and its payment is the one with its provider reference.
-- Which batch a line belongs to, and whether it is current, follow from the batch: a line is
-- current when settlements.import_id is the line's import (same batch id and currency).

CREATE TABLE settlement_line_results (
  line_id bigint PRIMARY KEY,
  import_id text NOT NULL,
  settlement_id text NOT NULL,
  result text NOT NULL,
  payment_id text,
  refund_id text
);
CREATE INDEX settlement_line_results_settlement ON settlement_line_results (settlement_id);
CREATE INDEX settlement_line_results_refund ON settlement_line_results (refund_id) WHERE refund_id IS NOT NULL;
CREATE INDEX settlement_line_results_pending ON settlement_line_results (settlement_id) WHERE result = 'pending';

INSERT INTO settlement_line_results (line_id, import_id, settlement_id, result, payment_id, refund_id)
SELECT l.id, l.import_id, l.settlement_id, l.result, l.payment_id, l.refund_id
  FROM settlement_lines l
 WHERE l.type <> 'payment' OR l.result <> 'matched'
    OR l.payment_id IS DISTINCT FROM (SELECT p.id FROM payments p
                                       WHERE p.merchant_id = l.merchant_id AND p.provider = l.provider
                                         AND p.provider_reference = l.provider_reference LIMIT 1);

DROP INDEX settlement_lines_settlement;
DROP INDEX settlement_lines_pending;
DROP INDEX settlement_lines_refund;
ALTER TABLE settlement_lines
  DROP CONSTRAINT settlement_lines_pkey,
  DROP COLUMN merchant_id,
  DROP COLUMN provider,
  DROP COLUMN settlement_id,
  DROP COLUMN active,
  DROP COLUMN payment_id,
  DROP COLUMN refund_id,
  DROP COLUMN result;
-- The one index, on the ids the identity hands out in COPY order: each new line lands at its right
-- edge, so it costs little per line (an index on (import_id, id) cost a third of the COPY). An
-- import's lines are the ids between the two it records (a concurrent import's lines may lie
-- between them too: queries still ask for the import id).
CREATE INDEX settlement_lines_id ON settlement_lines (id);
ALTER TABLE settlement_imports ADD COLUMN first_line_id bigint, ADD COLUMN last_line_id bigint;
UPDATE settlement_imports i SET first_line_id = l.first, last_line_id = l.last
  FROM (SELECT import_id, min(id) AS first, max(id) AS last FROM settlement_lines GROUP BY import_id) l
 WHERE l.import_id = i.id;

-- Payments marked settled: one row per payment line the job matched (or matched with a different
-- amount or currency). Written by the million; the primary key on payment_id (a random-text index,
-- rewritten page by page) cost 3 of the 4 seconds of that insert. A payment settled twice is the
-- matching statement's duplicate_in_settlement, which runs one import at a time per merchant and
-- provider; lookups by payment are set-based joins.
ALTER TABLE payment_settlements DROP CONSTRAINT payment_settlements_pkey;
-- A job's marks lie together on disk: a block-range index finds a batch's (to supersede it) at
-- next to no cost per row, where the B-tree on settlement_id cost half of the insert.
DROP INDEX payment_settlements_settlement;
CREATE INDEX payment_settlements_settlement ON payment_settlements USING brin (settlement_id);

-- Imports still queued hold their lines in staging tables that no longer exist after this step.
UPDATE settlement_imports SET status = 'failed', finished_at = now(), error_code = 'settlement_file_lost',
       error_message = 'the gateway was upgraded before this file was reconciled; import the file again'
 WHERE status IN ('receiving', 'queued', 'running');
DROP SCHEMA settlement_staging CASCADE;
