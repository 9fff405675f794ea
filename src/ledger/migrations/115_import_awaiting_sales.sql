-- An import whose lines include sales (or refunds) not decided yet when it was matched is
-- `awaiting` (shown as `running`): API.md's `completed` means the file's discrepancies are final,
-- and those lines may still become discrepancies. It completes when the last of them is decided.
ALTER TABLE settlement_imports DROP CONSTRAINT settlement_imports_status_check;
ALTER TABLE settlement_imports ADD CONSTRAINT settlement_imports_status_check
  CHECK (status IN ('receiving', 'queued', 'running', 'awaiting', 'completed', 'failed'));
