-- Fewer round trips per payment.
-- An outbox row may hold a snapshot of the payment row taken by the same statement that changed
-- it ('payment_row'); the relay renders it into the event envelope ('event') when dispatching.
ALTER TABLE outbox ADD COLUMN payload_kind text NOT NULL DEFAULT 'event' CHECK (payload_kind IN ('event', 'payment_row'));

-- The Idempotency-Key that created the payment: a retry whose first attempt died after storing the
-- payment finds it instead of creating a second one.
ALTER TABLE payments ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX payments_idempotency_key ON payments (merchant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
