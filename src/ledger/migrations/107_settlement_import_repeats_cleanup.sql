-- The repeats list of an import is needed by its reconcile job only: the job deletes it, a failed
-- import's goes with its lines (discardLines), and a deleted import takes its list with it.
DELETE FROM settlement_import_repeats r WHERE NOT EXISTS (SELECT 1 FROM settlement_imports i WHERE i.id = r.import_id);
ALTER TABLE settlement_import_repeats
  ADD CONSTRAINT settlement_import_repeats_import_fk FOREIGN KEY (import_id) REFERENCES settlement_imports (id) ON DELETE CASCADE;
