-- Every batch's current lines as the API and the reports show them, in one place: the lines of the
-- import the batch points at (found by that import's id range), their results where the reconcile
-- job kept one, and amounts signed as they count. A line without a result is a payment matched by
-- its provider reference (migration 104). A cancel gives the payment's fee back (alipay.md §7).
CREATE VIEW settlement_current_lines AS
SELECT l.*, s.id AS settlement_id, s.merchant_id, s.provider, s.settlement_date,
       COALESCE(x.result, 'matched') AS result, x.line_id IS NOT NULL AS has_result,
       x.payment_id AS result_payment_id, x.refund_id,
       CASE WHEN l.type = 'payment' THEN l.settlement_value ELSE -l.settlement_value END AS signed_value,
       CASE WHEN l.type = 'cancel' THEN -l.fee_value ELSE l.fee_value END AS signed_fee
  FROM settlements s
  JOIN settlement_imports i ON i.id = s.import_id
  JOIN settlement_lines l ON l.id BETWEEN i.first_line_id AND i.last_line_id AND l.import_id = s.import_id
                         AND l.batch_ref = s.provider_batch_id AND l.settlement_currency = s.currency
  LEFT JOIN settlement_line_results x ON x.line_id = l.id;
