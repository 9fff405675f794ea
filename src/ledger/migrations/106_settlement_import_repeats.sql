-- The transactions a received file may name more than once (receive.ts, repeats.ts: a Bloom
-- filter over the file's lines, so every real repeat is listed, with a few false ones): the reconcile
-- job counts duplicates among these lines only. repeats_listed is false where no list was made (too
-- many candidates, or an import received before this step): the job then groups every line.
CREATE TABLE settlement_import_repeats (
  import_id text NOT NULL,
  type text NOT NULL,
  provider_reference text NOT NULL
);
CREATE INDEX settlement_import_repeats_import ON settlement_import_repeats (import_id);
ALTER TABLE settlement_imports ADD COLUMN repeats_listed boolean NOT NULL DEFAULT false;
