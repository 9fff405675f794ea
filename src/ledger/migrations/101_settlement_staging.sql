-- Settlement files are parsed while they are uploaded (or fetched): a malformed file is refused
-- before anything is stored. The lines of an accepted file wait for the reconcile job in a table of
-- their own in this schema, UNLOGGED (written once, without WAL, like a bare COPY) and dropped by
-- the job that applies them. A crash empties unlogged tables; the job then fails the import and
-- asks for the file again instead of reconciling half a file.
CREATE SCHEMA settlement_staging;

-- What the import holds per batch, computed while parsing: the job compares content_hash with the
-- batch's current version (the same file twice changes nothing) without reading the lines again.
CREATE TABLE settlement_import_batches (
  import_id text NOT NULL REFERENCES settlement_imports(id) ON DELETE CASCADE,
  batch_ref text NOT NULL,
  currency text NOT NULL,
  content_hash text NOT NULL,
  lines integer NOT NULL,
  PRIMARY KEY (import_id, batch_ref, currency)
);
