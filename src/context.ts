import type { Redis } from 'ioredis';
import type { Config } from './config.ts';
import type { Queues } from './jobs/queues.ts';
import type { Db } from './ledger/db.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { ProviderAccounts } from './payments/accounts.ts';
import type { SandboxRuntime } from './payments/sandbox.ts';
import type { PaymentUpdates } from './realtime/payment-updates.ts';

/** Everything a request handler or job needs; built once per process in src/main.ts. */
export interface Context {
  config: Config;
  /** For requests and short jobs: every query bounded (config.databaseQueryTimeoutMs). */
  db: Db;
  /** For statements that run as long as their data: settlement files, reconcile jobs, reports, migrations. */
  bulkDb: Db;
  redis: Redis;
  queues: Queues;
  updates: PaymentUpdates;
  accounts: ProviderAccounts;
  sandbox: SandboxRuntime;
  log: Logger;
  metrics: Metrics;
  /** Writes that go on after their request answered (storeProviderAnswer): a stop waits for them. */
  lateWrites: Set<Promise<void>>;
}
