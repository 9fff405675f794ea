-- A refund keeps the Idempotency-Key of the request that made it, as a payment keeps its own: a
-- retry after that request's process died finds the refund it
-- left instead of making a second one, and a replay answers with the refund as it is now.
ALTER TABLE refunds ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX refunds_payment_idempotency_key ON refunds (payment_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
