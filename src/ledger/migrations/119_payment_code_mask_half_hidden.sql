-- A payment code's mask now hides at least half its digits (maskPaymentCode): a code of 10 to 15
-- digits stored before showed 8. Masked again from the stored mask, which shows at least as many
-- digits at each end as the new one. (Webhooks already sent keep what they carried.)
UPDATE payments
   SET payment_code_masked = CASE
         WHEN length(payment_code_masked) <= 8 THEN repeat('*', length(payment_code_masked))
         ELSE left(payment_code_masked, least(4, length(payment_code_masked) / 4))
              || repeat('*', length(payment_code_masked) - 2 * least(4, length(payment_code_masked) / 4))
              || right(payment_code_masked, least(4, length(payment_code_masked) / 4))
       END
 WHERE payment_code_masked IS NOT NULL AND length(payment_code_masked) < 16;
