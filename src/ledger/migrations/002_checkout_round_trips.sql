-- Fewer round trips per payment.
-- An outbox row may hold a snapshot of the payment row taken by the same statement that changed
-- it ('payment_row'); the relay renders it into the event envelope ('event') when dispatching.
ALTER TABLE outbox ADD COLUMN payload_kind text NOT NULL DEFAULT 'event' CHECK (payload_kind IN ('event', 'payment_row'));

-- POST /v1/payments keeps its Idempotency-Key on the payment itself: the key, a hash of the
-- request, and whether the creating request has finished (until then a retry gets 409). A retry
-- whose first attempt died after storing the payment finds it instead of creating a second one.
ALTER TABLE payments ADD COLUMN idempotency_key text;
ALTER TABLE payments ADD COLUMN request_hash text;
ALTER TABLE payments ADD COLUMN request_done boolean NOT NULL DEFAULT true;
CREATE UNIQUE INDEX payments_idempotency_key ON payments (merchant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
