-- Batch totals computed while the file is parsed, so the reconcile job does not read a million
-- staged lines again for them: gross (payments minus refunds and cancels, in the settlement
-- currency), fees, and the settlement date (UTC date of the earliest settlement time).
ALTER TABLE settlement_import_batches
  ADD COLUMN gross bigint NOT NULL DEFAULT 0,
  ADD COLUMN fees bigint NOT NULL DEFAULT 0,
  ADD COLUMN settlement_date date;
