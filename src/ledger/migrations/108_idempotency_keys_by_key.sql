-- A refund or cancel key is kept per merchant, action and payment (scope `<merchant>:refunds:<payment>`,
-- as always, so processes of the previous version still read the same rows during an upgrade); a
-- key names one request of the merchant, so idempotency.ts also looks for the same key under the
-- merchant's other scopes, by key.
CREATE INDEX idempotency_keys_key ON idempotency_keys (key);
