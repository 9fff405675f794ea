-- When a pending delivery's next try is due, so that a merchant debugging an endpoint sees it: the
-- tries come up to an hour apart. Null once the delivery has succeeded or failed.
ALTER TABLE webhook_deliveries ADD COLUMN next_attempt_at timestamptz;
