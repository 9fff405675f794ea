-- A payment marked settled keeps the currency it was sold in beside the one it was settled in: the
-- same-day rule for missing_in_settlement compares payments of one sale currency (a USD sale
-- settled in EUR speaks for the day's other USD sales, not for its EUR ones).
ALTER TABLE payment_settlements ADD COLUMN payment_currency text;
UPDATE payment_settlements ps SET payment_currency = p.currency FROM payments p WHERE p.id = ps.payment_id;
