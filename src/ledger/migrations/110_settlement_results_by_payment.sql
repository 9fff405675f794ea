-- A cancel line is a duplicate when a line of another current batch already settled the same
-- payment's cancel (reconcile.ts): looked up by payment among the few lines that have results.
CREATE INDEX settlement_line_results_payment ON settlement_line_results (payment_id) WHERE payment_id IS NOT NULL;
