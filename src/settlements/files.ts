/**
 * Settlement files as received: streamed into PostgreSQL in chunks (never held whole in memory),
 * read back as a stream by the reconcile job, and kept as the audit copy of what the provider sent.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Db } from '../ledger/db.ts';

const CHUNK_BYTES = 1 << 20;

export interface StoredFile {
  bytes: number;
  sha256: string;
}

/** Writes the stream into settlement_import_chunks; at most one chunk is in memory at a time. */
export async function storeFile(
  db: Db,
  importId: string,
  source: AsyncIterable<Buffer | string>,
): Promise<StoredFile> {
  const hash = createHash('sha256');
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let bytes = 0;
  let seq = 0;
  const flush = async () => {
    if (pendingBytes === 0) return;
    const data = Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    await db.query('INSERT INTO settlement_import_chunks (import_id, seq, data) VALUES ($1, $2, $3)', [
      importId,
      seq++,
      data,
    ]);
  };
  for await (const piece of source) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece) : piece;
    hash.update(chunk);
    bytes += chunk.length;
    pending.push(chunk);
    pendingBytes += chunk.length;
    if (pendingBytes >= CHUNK_BYTES) await flush();
  }
  await flush();
  return { bytes, sha256: hash.digest('hex') };
}

/** The stored file as a stream, one chunk fetched at a time. */
export function readFile(db: Db, importId: string): Readable {
  async function* chunks() {
    for (let seq = 0; ; seq++) {
      const { rows } = await db.query<{ data: Buffer }>(
        'SELECT data FROM settlement_import_chunks WHERE import_id = $1 AND seq = $2',
        [importId, seq],
      );
      if (rows.length === 0) return;
      yield rows[0].data;
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}
