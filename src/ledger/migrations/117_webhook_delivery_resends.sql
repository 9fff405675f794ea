-- How many times the merchant had a delivery sent again. A try that began before the latest such
-- request does not decide the delivery's status: its last failing try must not mark `failed` a
-- delivery the merchant has just set going again.
ALTER TABLE webhook_deliveries ADD COLUMN resends integer NOT NULL DEFAULT 0;
