-- Refund and cancel Idempotency-Keys are kept per merchant (scope = the merchant id), no longer
-- per merchant, action and payment: a key names one request, and the same key on another path is
-- 422 (idempotency.ts). Keys stored under the old scopes move to the new one, so a retry across
-- the upgrade still gets its stored answer; where a merchant used one key for several requests,
-- the latest keeps it.
WITH latest AS (
  SELECT DISTINCT ON (split_part(scope, ':', 1), key) scope, key
    FROM idempotency_keys
   WHERE scope LIKE '%:%'
   ORDER BY split_part(scope, ':', 1), key, created_at DESC
)
UPDATE idempotency_keys k SET scope = split_part(k.scope, ':', 1)
  FROM latest l
 WHERE k.scope = l.scope AND k.key = l.key
   AND NOT EXISTS (SELECT 1 FROM idempotency_keys o WHERE o.scope = split_part(k.scope, ':', 1) AND o.key = k.key);
DELETE FROM idempotency_keys WHERE scope LIKE '%:%';
