/**
 * The benchmarks' own databases and Redis prefixes: each run makes a database on BENCH_DATABASE_URL's
 * server and uses a prefix of its own on BENCH_REDIS_URL, and drops both.
 */
import pg from 'pg';
import { databaseOn, dropRedisKeys as dropKeys } from '../test/services.ts';

export const REDIS_URL =
  process.env.BENCH_REDIS_URL ?? process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export const PG_BASE =
  process.env.BENCH_DATABASE_URL ??
  process.env.TEST_DATABASE_URL ??
  'postgres://postgres@127.0.0.1:5432/postgres';

export const databaseUrl = (name: string): string => databaseOn(PG_BASE, name);

/** Deletes a run's Redis keys: Redis here keeps them until it restarts. */
export const dropRedisKeys = (prefix: string): Promise<void> => dropKeys(REDIS_URL, prefix);

/** One statement on the server's maintenance database (CREATE/DROP DATABASE). */
export async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: PG_BASE });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
