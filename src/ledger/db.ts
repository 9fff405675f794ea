import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ConfigError, withoutPassword } from '../config.ts';

// bigint columns hold minor units below 2^53 (amounts are capped far lower): read them as numbers.
pg.types.setTypeParser(20, (value) => Number(value));

export type Db = pg.Pool;
export type Queryable = pg.Pool | pg.PoolClient;

const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  '57P01',
  '57P03',
  '53300',
  '08006',
  '08001',
  // A statement past statement_timeout (PoolOptions.queryTimeoutMs), cancelled by the server.
  '57014',
]);

/** pg's message for a query past the pool's `query_timeout` (PoolOptions.queryTimeoutMs). */
const QUERY_TIMED_OUT = 'Query read timeout';

const UNAVAILABLE_MESSAGES = new RegExp(
  `Connection is closed|connect ECONNREFUSED|Connection terminated|timeout exceeded when trying to connect|${QUERY_TIMED_OUT}|max retries per request`,
);

/** PostgreSQL or Redis out of reach (down, restarting, failing over, out of connections). */
export function isInfrastructureError(error: unknown): boolean {
  const e = error as { code?: string; message?: string };
  return (
    (e.code !== undefined && UNAVAILABLE_CODES.has(e.code)) || UNAVAILABLE_MESSAGES.test(e.message ?? '')
  );
}

/**
 * Runs `work` again while the storage is out of reach, for up to `budgetMs`: for writes that must
 * not be lost to a blip, such as what a provider just answered about money it took.
 */
export async function retryWhileUnavailable<T>(work: () => Promise<T>, budgetMs: number): Promise<T> {
  const deadline = Date.now() + budgetMs;
  for (let pauseMs = 100; ; pauseMs = Math.min(pauseMs * 2, 1_000)) {
    try {
      return await work();
    } catch (error) {
      if (!isInfrastructureError(error) || Date.now() + pauseMs > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }
}

const MIGRATIONS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'migrations');

export interface PoolOptions {
  max?: number;
  /**
   * How long a query, or a wait for a free connection, may take before it fails as
   * `storage_unavailable`. The server cancels a statement past it (statement_timeout), so what the
   * caller was told failed does not commit later, once a lock it waited for is released. The client
   * gives up at the same time (query_timeout) on a PostgreSQL that keeps its connections and stops
   * answering (hung, or a black-holed network), which would otherwise hold every request on them
   * for ever; that connection is dropped, not handed out again (its answer may still come, or never).
   * Unset for the pool of long statements (settlement files, reconcile jobs, reports, migrations).
   */
  queryTimeoutMs?: number;
}

export function createPool(databaseUrl: string, { max = 20, queryTimeoutMs }: PoolOptions = {}): Db {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max,
    statement_timeout: queryTimeoutMs,
    query_timeout: queryTimeoutMs,
    connectionTimeoutMillis: queryTimeoutMs,
  });
  pool.on('error', () => {
    // An idle client lost its connection; the pool replaces it. Queries report their own errors.
  });
  // A client lost while checked out (a transaction, a job's lock) emits 'error' with no listener
  // of the pool's: unheard, that would end the process at a PostgreSQL restart. Its holder hears
  // of it through its query, and the pool drops it on release.
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

/** Creates the database named in the URL when it does not exist yet. */
export async function ensureDatabase(databaseUrl: string): Promise<void> {
  const url = new URL(databaseUrl);
  const name = decodeURIComponent(url.pathname.slice(1));
  const admin = new URL(databaseUrl);
  admin.pathname = '/postgres';
  // A server that accepts the connection and never answers as PostgreSQL would hold the start for ever.
  const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (found.rowCount === 0) {
      await client
        .query(`CREATE DATABASE "${name.replaceAll('"', '""')}"`)
        .catch((error: { code?: string }) => {
          // Created meanwhile by another process: 42P04, or, when both ran CREATE DATABASE at
          // once, the unique violation of the catalogue's index on the name.
          if (error.code !== '42P04' && error.code !== '23505') throw error;
        });
    }
  } finally {
    await client.end();
  }
}

/** Applies the plain SQL migrations in file-name order, each once, under an advisory lock. */
export async function migrate(pool: Db): Promise<string[]> {
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await client.query('SELECT pg_advisory_lock(7263516)');
    await client.query(
      'CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    const done = new Set(
      (await client.query<{ version: string }>('SELECT version FROM schema_migrations')).rows.map(
        (r) => r.version,
      ),
    );
    const files = readdirSync(MIGRATIONS_DIR)
      .filter((f) => f.endsWith('.sql'))
      .sort();
    for (const file of files) {
      if (done.has(file)) continue;
      await client.query('BEGIN');
      try {
        await client.query(readFileSync(join(MIGRATIONS_DIR, file), 'utf8'));
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [file]);
        await client.query('COMMIT');
        applied.push(file);
      } catch (error) {
        await client.query('ROLLBACK');
        throw new Error(`migration ${file} failed: ${(error as Error).message}`);
      }
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock(7263516)').catch(() => {});
    client.release();
  }
  return applied;
}

const statements = new Map<string, string>();

/**
 * A named (prepared) statement for a hot query: PostgreSQL parses and plans it once per
 * connection instead of on every call, which matters for the CTEs on the checkout path.
 */
export function prepared(text: string, values: unknown[]): { name: string; text: string; values: unknown[] } {
  let name = statements.get(text);
  if (!name) {
    name = `tb_${statements.size + 1}`;
    statements.set(text, name);
  }
  return { name, text, values };
}

/** Takes the transaction-level advisory lock called `name`: held by `client`'s transaction until it ends. */
export async function lockUntilCommit(client: pg.PoolClient, name: string): Promise<void> {
  await client.query(prepared('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [name]));
}

export async function inTransaction<T>(
  pool: Db,
  work: (client: pg.PoolClient) => Promise<T>,
  { readOnly = false }: { readOnly?: boolean } = {},
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query(readOnly ? 'BEGIN READ ONLY' : 'BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    broken = await rollback(client, error);
    throw error;
  } finally {
    client.release(broken);
  }
}

/**
 * Rolls back the client's transaction after `cause`; when it cannot, returns why, for `release`: a
 * connection that cannot roll back (lost, or its query timed out) must not be handed out again.
 * Dropping it rolls the transaction back on the server.
 */
export async function rollback(client: pg.PoolClient, cause: unknown): Promise<Error | undefined> {
  // A ROLLBACK would wait behind the query that timed out, as long again.
  if (cause instanceof Error && cause.message === QUERY_TIMED_OUT) return cause;
  try {
    await client.query('ROLLBACK');
    return undefined;
  } catch (error) {
    return error as Error;
  }
}

/**
 * A start-up failure that says the database at DATABASE_URL cannot be used as configured: not
 * reached, not PostgreSQL, or refusing us (authentication, an unknown role, no permission to
 * connect or to create the database), rather than a bug of ours.
 */
function unusableDatabase(error: unknown): boolean {
  const code = (error as { code?: string }).code ?? '';
  return (
    [
      'ECONNREFUSED',
      'ENOTFOUND',
      'EAI_AGAIN',
      'ETIMEDOUT',
      'EHOSTUNREACH',
      'ENETUNREACH',
      'ECONNRESET',
    ].includes(code) ||
    // Class 28: invalid authorization (a wrong password, an unknown role); 3D000 no such database
    // to connect to; 42501 not allowed (to connect, or to create the database).
    /^28/.test(code) ||
    code === '3D000' ||
    code === '42501' ||
    // What pg says when the server closes the connection, or talks another protocol.
    /Connection terminated|timeout expired|not a PostgreSQL|unexpected message/i.test(
      (error as Error).message ?? '',
    )
  );
}

/** `error` as a configuration error naming DATABASE_URL when it says the database cannot be used. */
export function asDatabaseConfigError(error: unknown, databaseUrl: string): unknown {
  if (!unusableDatabase(error)) return error;
  return new ConfigError(
    `PostgreSQL at DATABASE_URL (${withoutPassword(databaseUrl)}) cannot be used: ${(error as Error).message}`,
  );
}
