-- Lists and sweeps bounded by an index, not by the size of a table that only grows: a request's
-- statement has DATABASE_QUERY_TIMEOUT_MS (10 s by default), and a scan of every row of a big
-- merchant's history would pass it.

-- GET /v1/payments for a terminal key (its store and terminal), or filtered by store and terminal:
-- a dormant till of a merchant with millions of sales read all of them to find none.
CREATE INDEX payments_merchant_terminal_created
    ON payments (merchant_id, store_id, terminal_id, created_at DESC, id DESC);

-- GET /v1/webhook-endpoints/{id}/deliveries: every delivery the endpoint ever had, sorted.
CREATE INDEX webhook_deliveries_endpoint_created ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- The sweeper's deliveries whose job was lost: a pending one among all ever made.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (updated_at) WHERE status = 'pending';

-- GET /v1/reconciliation/discrepancies with closed ones (status=closed|all): the open ones have
-- reconciliation_discrepancies_open.
CREATE INDEX reconciliation_discrepancies_merchant ON reconciliation_discrepancies (merchant_id, created_at DESC, id DESC);

-- GET /v1/settlements/{id}/lines?result=…: a page of the lines with that result, in line order,
-- read from here (settlements.ts, linePageSql) rather than by looking at every line of the batch.
CREATE INDEX settlement_line_results_page ON settlement_line_results (settlement_id, result, line_id);
