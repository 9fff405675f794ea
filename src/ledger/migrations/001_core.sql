-- The ledger: the system of record for merchants, keys, provider accounts, payments and refunds.

CREATE TABLE merchants (
  id text PRIMARY KEY,
  name text NOT NULL,
  settlement_currency text NOT NULL,
  country text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE terminals (
  id text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants(id),
  store_id text NOT NULL,
  terminal_id text NOT NULL,
  can_refund boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, store_id, terminal_id)
);

-- Keys are stored only as SHA-256 hashes: they carry 130+ bits of entropy, so no slow KDF is needed.
CREATE TABLE api_keys (
  id text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants(id),
  kind text NOT NULL CHECK (kind IN ('secret', 'terminal')),
  terminal_ref text REFERENCES terminals(id),
  key_hash bytea NOT NULL UNIQUE,
  key_hint text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);

CREATE TABLE provider_accounts (
  id text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants(id),
  provider text NOT NULL,
  wallets text[] NOT NULL,
  currencies text[],
  priority integer NOT NULL DEFAULT 0,
  sandbox boolean NOT NULL DEFAULT false,
  credentials bytea NOT NULL,
  public_view jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE UNIQUE INDEX provider_accounts_one_live ON provider_accounts (merchant_id, provider) WHERE deleted_at IS NULL;

CREATE TABLE payments (
  id text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants(id),
  terminal_ref text REFERENCES terminals(id),
  store_id text,
  terminal_id text,
  provider_account_id text NOT NULL REFERENCES provider_accounts(id),
  provider text NOT NULL,
  wallet text NOT NULL,
  wallet_psp text,
  mode text NOT NULL CHECK (mode IN ('scan', 'qr')),
  status text NOT NULL CHECK (status IN ('processing', 'requires_customer', 'succeeded', 'failed', 'canceled',
                                         'partially_refunded', 'refunded')),
  amount_value bigint NOT NULL CHECK (amount_value > 0),
  currency text NOT NULL,
  amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0 AND amount_refunded <= amount_value),
  customer_amount_value bigint,
  customer_currency text,
  exchange_rate text,
  settlement_amount_value bigint,
  settlement_currency text,
  settlement_rate text,
  reference text NOT NULL,
  description text,
  metadata jsonb NOT NULL DEFAULT '{}',
  payment_code_masked text,
  payment_code_sealed bytea,
  provider_request_id text NOT NULL UNIQUE,
  provider_reference text,
  qr_data text,
  qr_expires_at timestamptz,
  failure_code text,
  failure_message text,
  resolve_by timestamptz NOT NULL,
  next_check_at timestamptz,
  poll_step integer NOT NULL DEFAULT 0,
  pay_answered boolean NOT NULL DEFAULT true,
  not_found_since timestamptz,
  not_found_count integer NOT NULL DEFAULT 0,
  resent boolean NOT NULL DEFAULT false,
  cancel_requested_at timestamptz,
  cancel_attempts integer NOT NULL DEFAULT 0,
  paid_at timestamptz,
  finalized_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_merchant_created ON payments (merchant_id, created_at DESC, id DESC);
CREATE INDEX payments_unresolved ON payments (next_check_at) WHERE status IN ('processing', 'requires_customer');
CREATE INDEX payments_provider_reference ON payments (provider, provider_reference);

-- Append-only history: every transition with its cause.
CREATE TABLE payment_events (
  id bigserial PRIMARY KEY,
  payment_id text NOT NULL REFERENCES payments(id),
  refund_id text,
  from_status text,
  to_status text NOT NULL,
  cause text NOT NULL,
  detail jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_payment ON payment_events (payment_id, id);

CREATE TABLE refunds (
  id text PRIMARY KEY,
  payment_id text NOT NULL REFERENCES payments(id),
  merchant_id text NOT NULL REFERENCES merchants(id),
  amount_value bigint NOT NULL CHECK (amount_value > 0),
  currency text NOT NULL,
  status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
  reason text,
  provider_request_id text NOT NULL UNIQUE,
  provider_reference text,
  failure_code text,
  failure_message text,
  next_check_at timestamptz,
  poll_step integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_pending ON refunds (next_check_at) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
  scope text NOT NULL,
  key text NOT NULL,
  request_hash text NOT NULL,
  locked_until timestamptz,
  response_status integer,
  response_body jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE outbox (
  id bigserial PRIMARY KEY,
  event_id text NOT NULL UNIQUE,
  merchant_id text NOT NULL,
  type text NOT NULL,
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  dispatched_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE dispatched_at IS NULL;

CREATE TABLE webhook_endpoints (
  id text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants(id),
  url text NOT NULL,
  events text[] NOT NULL,
  secret_sealed bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);

CREATE TABLE webhook_deliveries (
  id text PRIMARY KEY,
  endpoint_id text NOT NULL REFERENCES webhook_endpoints(id),
  event_id text NOT NULL,
  event_type text NOT NULL,
  status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  last_status_code integer,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (endpoint_id, event_id)
);

CREATE TABLE inbound_notifications (
  account_id text NOT NULL,
  dedupe_key text NOT NULL,
  provider text NOT NULL,
  kind text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, dedupe_key)
);

-- Things a human must look at: a cancel whose result stays unknown, a payment that succeeded after a cancel.
CREATE TABLE alerts (
  id bigserial PRIMARY KEY,
  kind text NOT NULL,
  payment_id text,
  refund_id text,
  detail text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz
);
