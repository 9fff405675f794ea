-- A settlement line whose sale was not decided when it was matched (still `processing` or
-- `requires_customer`) is a status_mismatch, as PROVIDERS.md says, and is checked again once the
-- sale is final (`recheck`): matched then, its discrepancy closed, when the sale succeeded (or, for
-- a cancel line, was cancelled). Until now such a line was `pending`, reported as nothing; those
-- are left so, and matched again as before.
ALTER TABLE settlement_line_results ADD COLUMN recheck boolean NOT NULL DEFAULT false;
DROP INDEX settlement_line_results_pending;
CREATE INDEX settlement_line_results_awaiting ON settlement_line_results (settlement_id)
  WHERE result = 'pending' OR recheck;

-- An import whose lines include refunds still pending when it was matched is `awaiting` (shown as
-- `running`): API.md's `completed` means the file's discrepancies are final, and such a line may
-- still become one. It completes when the last of them is decided.
ALTER TABLE settlement_imports DROP CONSTRAINT settlement_imports_status_check;
ALTER TABLE settlement_imports ADD CONSTRAINT settlement_imports_status_check
  CHECK (status IN ('receiving', 'queued', 'running', 'awaiting', 'completed', 'failed'));

-- What the adapter read past without refusing the file (Antom columns unknown to us, alipay.md §12:
-- "report unknown headers rather than fail"), shown on the job.
ALTER TABLE settlement_imports ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
