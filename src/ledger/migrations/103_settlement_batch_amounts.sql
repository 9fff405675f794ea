-- API.md lists a batch as { ..., "currency", "gross", "fees", "net", "count", ... }: the amounts are
-- integer minor units of the batch's `currency`, given beside it, not Money objects.
CREATE OR REPLACE FUNCTION tb_settlement_json(s settlements) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('id', s.id, 'object', 'settlement', 'provider', s.provider,
           'provider_batch_id', s.provider_batch_id, 'settlement_date', s.settlement_date::text,
           'currency', s.currency, 'gross', s.gross, 'fees', s.fees, 'net', s.net,
           'count', s.count, 'status', s.status, 'version', s.version,
           'import_id', s.import_id, 'created_at', tb_utc(s.created_at), 'updated_at', tb_utc(s.updated_at))
$$;
