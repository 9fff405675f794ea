-- A payment marked settled keeps the wallet that paid it (its wallet_psp) beside its sale currency:
-- the same-day rule for missing_in_settlement compares a payment only with payments of its own
-- wallet, since Antom may settle each wallet (PSP) of a day in a batch and a file of its own, and
-- one wallet's file says nothing about another's sales of that day.
ALTER TABLE payment_settlements ADD COLUMN payment_wallet_psp text;
UPDATE payment_settlements ps SET payment_wallet_psp = p.wallet_psp
  FROM payments p WHERE p.id = ps.payment_id AND p.wallet_psp IS NOT NULL;
