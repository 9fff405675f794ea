/** Builds a process: its connections, the HTTP server (api role) and the job processors (worker role). */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { providerModule } from '../adapters/index.ts';
import { type Config, ConfigError, urlHost, withoutPassword } from './config.ts';
import type { Context } from './context.ts';
import { withDeadline } from './deadline.ts';
import { createApp, createHttpServer, createOperationsApp } from './http/app.ts';
import { startWorker, type Worker } from './jobs/processors.ts';
import { createQueues, QUEUE_CLOSE_MAX_MS } from './jobs/queues.ts';
import { asDatabaseConfigError, createPool, type Db, ensureDatabase, migrate } from './ledger/db.ts';
import { createLogger } from './logger.ts';
import { createMetrics } from './metrics.ts';
import { ProviderAccounts } from './payments/accounts.ts';
import { SandboxRuntime } from './payments/sandbox.ts';
import { PaymentUpdates } from './realtime/payment-updates.ts';

/** How long start-up waits for Redis (one starting alongside us) before it gives up and says so. */
const REDIS_STARTUP_WAIT_MS = 5_000;

async function connectRedis(url: string): Promise<Redis> {
  const redis = new Redis(url, { maxRetriesPerRequest: 2, enableAutoPipelining: true });
  // Its connection errors are the cause worth telling when it never answers (refused, unknown host).
  let lastError: Error | undefined;
  redis.on('error', (error: Error) => {
    lastError = error;
  });
  const deadline = Date.now() + REDIS_STARTUP_WAIT_MS;
  for (;;) {
    try {
      await withDeadline(redis.ping(), 'a ping', Math.max(deadline - Date.now(), 1));
      // A database the server does not have is only an error event, and every client would go on
      // in database 0: said here, as a configuration error.
      const database = Number(new URL(url).pathname.slice(1) || 0);
      if (database)
        await redis.select(database).catch((error: Error) => {
          redis.disconnect();
          throw new ConfigError(
            `REDIS_URL (${withoutPassword(url)}) names a database Redis refuses: ${error.message}`,
          );
        });
      return redis;
    } catch (error) {
      if (error instanceof ConfigError) throw error;
      if (Date.now() >= deadline) {
        redis.disconnect();
        // Said as a configuration error naming the variable, as an unreachable DATABASE_URL is.
        throw new ConfigError(
          `Redis is not reachable at REDIS_URL (${withoutPassword(url)}): ${(lastError ?? (error as Error)).message}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

export async function createContext(config: Config): Promise<Context> {
  // Redis first: a gateway that cannot reach it would start but never finish a payment.
  const redis = await connectRedis(config.redisUrl);
  let db: Db;
  let bulkDb: Db;
  try {
    await ensureDatabase(config.databaseUrl);
    db = createPool(config.databaseUrl, { queryTimeoutMs: config.databaseQueryTimeoutMs });
    bulkDb = createPool(config.databaseUrl, { max: 10 });
    await migrate(bulkDb);
  } catch (error) {
    redis.disconnect();
    throw asDatabaseConfigError(error, config.databaseUrl);
  }
  const sandbox = new SandboxRuntime(config);
  const updates = new PaymentUpdates(config.redisUrl, config.redisPrefix);
  const accounts = new ProviderAccounts(db, config, sandbox);
  // An account configured or deleted on another process stops serving here at once, not at its cache's end.
  updates.onAccountChange((merchantId) => accounts.forgetRoutes(merchantId));
  return {
    config,
    db,
    bulkDb,
    redis,
    queues: createQueues(config.redisUrl, config.redisPrefix),
    updates,
    accounts,
    sandbox,
    log: createLogger(config.logLevel),
    metrics: createMetrics(),
    lateWrites: new Set(),
  };
}

export interface Gateway {
  ctx: Context;
  url: string;
  server: Server;
  worker?: Worker;
  stop(): Promise<void>;
}

/**
 * Credentials and secrets sealed under another master key than this one: refused in production
 * (the key it was started with is wrong), said loudly in sandbox, where a re-cloned checkout has a
 * new key beside an old database (each account works again once configured again).
 */
async function checkMasterKey(ctx: Context): Promise<void> {
  const unreadable = await ctx.accounts.unreadable();
  if (!unreadable.length) return;
  const shown = unreadable.slice(0, 5).join(', ') + (unreadable.length > 5 ? ', …' : '');
  const message = `the master key does not open what ${unreadable.length} provider account(s) or webhook endpoint(s) stored (${shown}): they were sealed under another key`;
  if (ctx.config.production)
    throw new ConfigError(`${message}; start with the TILLBRIDGE_MASTER_KEY they were stored under`);
  ctx.log.error(
    { unreadable },
    `${message}. Each takes no sale and delivers nothing until it is configured again (PUT /v1/providers/{provider}, or a new webhook endpoint); restore the old key (TILLBRIDGE_MASTER_KEY or .tillbridge/master.key) to keep them`,
  );
}

/**
 * The simulators that sandbox accounts use, started now rather than at their first call: after a
 * restart a customer may open a QR code handed out before it (API.md: the sandbox survives a
 * restart), before the gateway itself calls the simulator again.
 */
async function startSimulatorsInUse(ctx: Context): Promise<void> {
  const { rows } = await ctx.db.query<{ provider: string }>(
    'SELECT DISTINCT provider FROM provider_accounts WHERE sandbox AND deleted_at IS NULL',
  );
  for (const { provider } of rows)
    if (providerModule(provider)?.startSimulator) await ctx.sandbox.simulatorUrl(provider);
}

/** A port taken or not ours to take is said in a line naming PORT, as other start-up problems are. */
function listenError(error: unknown, host: string, port: number): unknown {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE')
    return new ConfigError(
      `PORT ${port} is already in use on ${host}: stop what listens there, or set another PORT`,
    );
  if (code === 'EACCES')
    return new ConfigError(
      `PORT ${port} on ${host} may not be listened on by this user: set a PORT above 1023`,
    );
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND' || code === 'EAI_AGAIN')
    return new ConfigError(`HOST ${host} is not an address of this machine`);
  return error;
}

/** How long each step of a stop after the in-flight requests may take. */
const STOP_STEP_DEADLINE_MS = 10_000;
/** How long pausing the queues may hold the stop's first step (a hung Redis would hold it). */
const QUEUE_PAUSE_DEADLINE_MS = 2_000;

export async function startGateway(config: Config, port = config.port): Promise<Gateway> {
  const ctx = await createContext(config);
  let worker: Worker | undefined;
  // A worker alone serves its health and metrics (its own jobs, provider calls, reconciliations).
  const app = config.role === 'worker' ? createOperationsApp(ctx) : createApp(ctx);
  let server: Server;
  try {
    await checkMasterKey(ctx);
    if (!config.production && config.role !== 'worker') await startSimulatorsInUse(ctx);
    server = await new Promise<Server>((resolve, reject) => {
      const s = createHttpServer(app);
      s.on('error', reject);
      s.listen(port, config.host, () => resolve(s));
    });
  } catch (error) {
    await closeContext(ctx);
    throw listenError(error, config.host, port);
  }
  server.keepAliveTimeout = 65_000;
  if (config.role !== 'api') worker = await startWorker(ctx);
  const address = server.address() as AddressInfo;
  return {
    ctx,
    server,
    worker,
    // An IPv6 address is written in brackets in a URL; listening on every address, ask the loopback.
    url: `http://${urlHost(config.host)}:${address.port}`,
    async stop() {
      // A PostgreSQL or Redis that stopped answering must not hold the stop for ever: each step
      // waits so long, then the process goes (what it did not finish, the sweeper takes up).
      const bounded = (work: Promise<unknown>, what: string, ms = STOP_STEP_DEADLINE_MS) =>
        withDeadline(work, what, ms).catch((error) =>
          ctx.log.error({ err: error }, `shutdown: ${what} did not finish`),
        );
      // Stop accepting, let in-flight requests finish, then close queues and connections. A worker
      // takes no new job from the start: one queued meanwhile is left to a worker that stays.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // Long-polling tills would otherwise hold the shutdown for up to their wait: answer them now.
      ctx.updates.wakeAll();
      if (worker) await bounded(ctx.queues.stopTaking(), 'pausing the queues', QUEUE_PAUSE_DEADLINE_MS);
      await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000))]);
      server.closeAllConnections();
      // A provider's answer still waiting for PostgreSQL: stored now, while the queues can still
      // take the sale's next check, so that the sweeper need not ask the provider again.
      await bounded(Promise.all(ctx.lateWrites), "storing providers' answers");
      await bounded(worker?.stop() ?? Promise.resolve(), 'stopping the worker');
      // Closing the queues waits for running jobs, as long as it allows them (QUEUE_CLOSE_MAX_MS).
      const jobsFinished = await bounded(
        ctx.queues.close(),
        'closing the queues',
        QUEUE_CLOSE_MAX_MS + 1_000,
      );
      if (jobsFinished === false)
        ctx.log.warn(
          'shutdown: stopped waiting for running jobs (past their time, or Redis unreachable); each runs again on a worker that stays',
        );
      // A job left running keeps its pooled connection: the pools are not waited for then.
      await bounded(closeConnections(ctx, jobsFinished === true), 'closing connections');
    },
  };
}

async function closeContext(ctx: Context): Promise<void> {
  await ctx.queues.close();
  await closeConnections(ctx);
}

async function closeConnections(ctx: Context, waitForPools = true): Promise<void> {
  await ctx.updates.close();
  await ctx.sandbox.close();
  ctx.redis.disconnect();
  const ended = Promise.all([ctx.db.end(), ctx.bulkDb.end()]);
  if (waitForPools) await ended;
  else ended.catch(() => {});
}
