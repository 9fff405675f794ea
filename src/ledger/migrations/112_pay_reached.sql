-- Whether the provider answered the creating request at all, decided or not (a U, an unsigned S):
-- the request arrived, so "no such order" afterwards is never a reason to send it again
-- (alipay.md §9: the one identical resend follows only a pay that got no answer). pay_answered
-- stays what it was: the answer decided something (paid, failed, a QR code, in process).
ALTER TABLE payments ADD COLUMN pay_reached boolean NOT NULL DEFAULT false;
UPDATE payments SET pay_reached = true WHERE pay_answered AND status IN ('processing', 'requires_customer');
