/**
 * Receiving a settlement file (upload or scheduled fetch): the bytes are streamed through the
 * provider adapter's streaming parser and the parsed lines COPYed into settlement_lines, where they
 * stay for good, all in one transaction. A malformed file (SettlementFormatError, naming the line
 * or column) rolls everything back, so nothing of it is stored; an accepted file is queued for the
 * `reconcile` job, which matches its lines and records only what is not a plain match.
 *
 * Memory stays bounded: the file is never buffered (back-pressure runs from the COPY back to the
 * socket), at most COPY_CHUNK bytes of rows wait for the COPY at a time. The raw bytes are not kept:
 * the import records their size and SHA-256 (the audit of what was received) beside its lines.
 */
import { createHash, type Hash } from 'node:crypto';
import { finished, Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { SettlementFormatError, type SettlementLine, type WalletAdapter } from '../../adapters/contract.ts';
import { providerModule } from '../../adapters/index.ts';
import type { Context } from '../context.ts';
import { inTransaction, type Queryable } from '../ledger/db.ts';
import { copyField } from './copy-text.ts';
import { Utf8Guard } from './encoding.ts';
import { createImport, type ImportRow, isFinished } from './imports.ts';
import { RepeatFilter } from './repeats.ts';

const LINE_COLUMNS = [
  'import_id',
  'line_no',
  'batch_ref',
  'type',
  'provider_reference',
  'original_provider_reference',
  'provider_request_id',
  'transaction_value',
  'transaction_currency',
  'settlement_value',
  'settlement_currency',
  'fee_value',
  'exchange_rate',
  'settled_at',
  'transacted_at',
  'store_id',
  'wallet_psp',
];

/** The COPY is sent in pieces of this many bytes at most. */
const COPY_CHUNK = 1 << 18;
/** A file's warnings kept for its job: the first few say what there is to say. */
const MAX_WARNINGS = 20;
/** A batch's content hash is fed in pieces of this many bytes rather than line by line. */
const HASH_PIECE = 1 << 16;

/** Ids, names and rates: none is longer in any real file, and an id must fit in an index. */
const MAX_TEXT_CHARS = 256;
const TEXT_FIELDS: [keyof SettlementLine, string][] = [
  ['batch_id', 'the settlement batch id'],
  ['provider_reference', 'the transaction id'],
  ['original_provider_reference', 'the original transaction id'],
  ['provider_request_id', 'the request id'],
  ['store_id', 'the store id'],
  ['wallet_psp', 'the wallet'],
  ['exchange_rate', 'the exchange rate'],
];

/** A rate is shown as it was written: digits, perhaps a fraction, not zero. */
const RATE = /^(?=[0.]*[1-9])\d{1,32}(\.\d{1,32})?$/;

/** What makes a line the parser gave us impossible to store (a format error too), if anything. */
function lineFault(line: SettlementLine): string | undefined {
  if (!line.batch_id) return 'the settlement batch id is empty';
  if (!line.provider_reference) return 'the transaction id is empty';
  for (const [field, name] of TEXT_FIELDS) {
    const value = line[field];
    // Characters, not UTF-16 units (an emoji is two), counted only past the cheap bound.
    if (typeof value === 'string' && value.length > MAX_TEXT_CHARS && [...value].length > MAX_TEXT_CHARS)
      return `${name} is longer than ${MAX_TEXT_CHARS} characters`;
  }
  if (line.exchange_rate !== undefined && !RATE.test(line.exchange_rate))
    return `the exchange rate ${line.exchange_rate} is not a positive decimal`;
  if (!Number.isSafeInteger(line.transaction_amount.value))
    return 'the transaction amount is not an integer amount';
  if (!Number.isSafeInteger(line.settlement_amount.value))
    return 'the settlement amount is not an integer amount';
  if (!Number.isSafeInteger(line.fee.value)) return 'the fee is not an integer amount';
  if (line.fee.currency !== line.settlement_amount.currency)
    return `the fee is in ${line.fee.currency}, not in the settlement currency ${line.settlement_amount.currency}`;
  if (!storableTime(line.settled_at)) return 'the settlement time is not a date from 1970 to 9999';
  if (line.transacted_at && !storableTime(line.transacted_at))
    return 'the transaction time is not a date from 1970 to 9999';
  return undefined;
}

const LAST_STORABLE = Date.UTC(10000, 0, 1);
/** A time PostgreSQL stores and our ISO text renders as written (Date alone goes to year 275760). */
const storableTime = (time: Date): boolean => time.getTime() >= 0 && time.getTime() < LAST_STORABLE;

const SPECIAL = /[\\\t\n\r]/;
/** A text field of a COPY row (copyField's output, with the common clean case tested once). */
const text = (value: string | undefined): string =>
  value === undefined ? '\\N' : SPECIAL.test(value) ? copyField(value) : value;

/** Many lines share their settlement time: its ISO text is made once per distinct time. */
let lastTime = Number.NaN;
let lastIso = '';
function iso(date: Date | undefined): string {
  if (!date) return '\\N';
  const t = date.getTime();
  if (t !== lastTime) {
    lastTime = t;
    lastIso = date.toISOString();
  }
  return lastIso;
}

/**
 * What a line settles, as the COPY text fields after its import id and line number (copyField
 * each, tab-separated): also what a batch's content hash is made of.
 */
export function lineContent(line: SettlementLine): string {
  const t = line.transacted_at ? line.transacted_at.toISOString() : '\\N';
  return `${text(line.batch_id)}\t${line.type}\t${text(line.provider_reference)}\t${text(
    line.original_provider_reference,
  )}\t${text(line.provider_request_id)}\t${line.transaction_amount.value}\t${text(
    line.transaction_amount.currency,
  )}\t${line.settlement_amount.value}\t${text(line.settlement_amount.currency)}\t${line.fee.value}\t${text(
    line.exchange_rate,
  )}\t${iso(line.settled_at)}\t${t}\t${text(line.store_id)}\t${text(line.wallet_psp)}\n`;
}

interface BatchDigest {
  batch_ref: string;
  currency: string;
  hash: Hash;
  /** Content bytes not hashed yet: pending[0, pendingBytes). */
  pending: Buffer;
  pendingBytes: number;
  lines: number;
  gross: number;
  fees: number;
  first_settled: number;
}

/**
 * Adds bytes[start, end) to the batch's content hash, through its pending piece. The piece grows to
 * HASH_PIECE as the batch does: a file of many small batches must not reserve a piece for each.
 */
function hashContent(batch: BatchDigest, bytes: Buffer, start: number, end: number): void {
  const wanted = batch.pendingBytes + end - start;
  if (wanted > batch.pending.length) {
    if (wanted <= HASH_PIECE) {
      const grown = Buffer.allocUnsafe(Math.min(HASH_PIECE, Math.max(wanted, 2 * batch.pending.length)));
      batch.pending.copy(grown, 0, 0, batch.pendingBytes);
      batch.pending = grown;
    } else {
      batch.hash.update(batch.pending.subarray(0, batch.pendingBytes));
      batch.pendingBytes = 0;
      if (end - start > batch.pending.length) {
        batch.hash.update(bytes.subarray(start, end));
        return;
      }
    }
  }
  batch.pendingBytes += bytes.copy(batch.pending, batch.pendingBytes, start, end);
}

/** Counts and hashes the raw bytes on their way to the parser. */
class Tap extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

export interface ReceivedFile {
  /** What the adapter read past without refusing the file (unknown columns), at most MAX_WARNINGS. */
  warnings: string[];
  /** settlement_import_repeats lists every transaction the file may name twice. */
  repeats_listed: boolean;
  bytes: number;
  sha256: string;
  lines: number;
  batches: number;
  /** The ids of the import's lines lie between these (bigint, as text); null without lines. */
  first_line_id: string | null;
  last_line_id: string | null;
}

/**
 * Parses `source` into settlement_lines and records the import's batches; the caller owns the
 * transaction. Throws SettlementFormatError for a malformed file (`bytes` tells an empty body).
 */
export async function copyLines(
  client: pg.PoolClient,
  importId: string,
  adapter: WalletAdapter<unknown>,
  source: Readable,
): Promise<ReceivedFile> {
  // A retried fetch receives its file again from scratch.
  await discardLines(client, importId);
  await client.query('DELETE FROM settlement_import_batches WHERE import_id = $1', [importId]);
  await client.query('DELETE FROM settlement_import_repeats WHERE import_id = $1', [importId]);
  const prefix = `${copyField(importId)}\t`;
  // Every id the COPY is given comes after the last one handed out before it.
  const before = await client.query<{ first: string }>(
    'SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS first FROM settlement_lines_id_seq',
  );
  const tap = new Tap();
  const guard = new Utf8Guard();
  // Also a source closed before this began (a client gone while the request was authenticated):
  // it would never emit again, and the COPY would wait on it for ever.
  finished(source, { writable: false }, (error) => {
    if (error) tap.destroy(new FileBrokenOffError(error));
  });
  tap.on('error', (error) => guard.destroy(error));
  source.pipe(tap).pipe(guard);
  const batches = new Map<string, Map<string, BatchDigest>>();
  const repeats = new RepeatFilter();
  const warnings: string[] = [];
  const warn = (message: string) => {
    if (warnings.length < MAX_WARNINGS) warnings.push(message);
  };
  let lines = 0;
  /** The batch a line belongs to, by batch id then settlement currency (no key string per line). */
  const batchOf = (line: SettlementLine): BatchDigest => {
    const currency = line.settlement_amount.currency;
    let byCurrency = batches.get(line.batch_id);
    if (!byCurrency) {
      byCurrency = new Map();
      batches.set(line.batch_id, byCurrency);
    }
    let batch = byCurrency.get(currency);
    if (!batch) {
      batch = {
        batch_ref: line.batch_id,
        currency,
        hash: createHash('sha256'),
        pending: Buffer.alloc(0),
        pendingBytes: 0,
        lines: 0,
        gross: 0,
        fees: 0,
        first_settled: Number.POSITIVE_INFINITY,
      };
      byCurrency.set(currency, batch);
    }
    return batch;
  };
  async function* rows() {
    let out = Buffer.allocUnsafe(COPY_CHUNK);
    let used = 0;
    try {
      for await (const chunk of adapter.parseSettlement(guard, warn)) {
        for (const line of chunk) {
          const fault = lineFault(line);
          if (fault) throw new SettlementFormatError(`line ${line.line_no}: ${fault}`, line.line_no);
          const content = lineContent(line);
          // Room for the row at three bytes a character, the most UTF-8 takes for one UTF-16 unit.
          const room = 3 * (prefix.length + 12 + content.length);
          if (used + room > out.length) {
            if (used) yield out.subarray(0, used);
            out = Buffer.allocUnsafe(Math.max(COPY_CHUNK, room));
            used = 0;
          }
          used += out.write(prefix, used);
          used += out.write(`${line.line_no}\t`, used);
          const contentStart = used;
          used += out.write(content, used);
          const batch = batchOf(line);
          // The content hash leaves out the import and line number: only what was settled counts.
          hashContent(batch, out, contentStart, used);
          batch.lines++;
          const value = line.settlement_amount.value;
          batch.gross += line.type === 'payment' ? value : -value;
          // A cancel of a paid order gives the fee back (alipay.md §7): it counts against the fees.
          batch.fees += line.type === 'cancel' ? -line.fee.value : line.fee.value;
          // Each amount is a safe integer; a batch total beyond 2^53 minor units is no real file.
          if (!Number.isSafeInteger(batch.gross) || !Number.isSafeInteger(batch.fees))
            throw new SettlementFormatError(
              `line ${line.line_no}: the batch total is out of range`,
              line.line_no,
            );
          repeats.add(line.type, line.provider_reference);
          const settled = line.settled_at.getTime();
          if (settled < batch.first_settled) batch.first_settled = settled;
          lines++;
        }
      }
    } catch (error) {
      throw guard.error ?? error;
    }
    if (guard.error) throw guard.error;
    if (used) yield out.subarray(0, used);
  }
  const copy = client.query(copyFrom(`COPY settlement_lines (${LINE_COLUMNS.join(', ')}) FROM STDIN`));
  try {
    await pipeline(Readable.from(rows()), copy);
  } catch (error) {
    // Nothing at all was sent: say so, rather than what the parser makes of no bytes.
    if (error instanceof SettlementFormatError && tap.bytes === 0) throw new EmptyFileError();
    // A value the parser let through that PostgreSQL refuses (SQLSTATE class 22, data exception)
    // is still the file's fault, not ours.
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('22'))
      throw new SettlementFormatError(
        `the file holds a value the ledger cannot store: ${(error as Error).message}`,
      );
    throw error;
  }
  if (tap.bytes === 0) throw new EmptyFileError();
  const last = lines
    ? (await client.query<{ last: string }>("SELECT currval('settlement_lines_id_seq') AS last")).rows[0].last
    : null;
  const digests = [...batches.values()].flatMap((byCurrency) => [...byCurrency.values()]);
  for (const batch of digests) {
    batch.hash.update(batch.pending.subarray(0, batch.pendingBytes));
    await client.query(
      `INSERT INTO settlement_import_batches (import_id, batch_ref, currency, content_hash, lines, gross, fees,
                                             settlement_date)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [
        importId,
        batch.batch_ref,
        batch.currency,
        batch.hash.digest('hex'),
        batch.lines,
        batch.gross,
        batch.fees,
        new Date(batch.first_settled).toISOString().slice(0, 10),
      ],
    );
  }
  if (!repeats.overflowed && repeats.types.length)
    await client.query(
      `INSERT INTO settlement_import_repeats (import_id, type, provider_reference)
       SELECT $1, * FROM unnest($2::text[], $3::text[])`,
      [importId, repeats.types, repeats.references],
    );
  return {
    warnings,
    repeats_listed: !repeats.overflowed,
    bytes: tap.bytes,
    sha256: tap.hash.digest('hex'),
    lines,
    batches: digests.length,
    first_line_id: last === null ? null : before.rows[0].first,
    last_line_id: last,
  };
}

/**
 * Deletes the lines of an import that no batch took (a failed import, or a fetch received again),
 * by the id range it recorded: never a scan of every import's lines. An import that any batch
 * version points at keeps its lines.
 */
export async function discardLines(db: Queryable, importId: string): Promise<void> {
  await db.query(
    `WITH i AS (
       SELECT first_line_id, last_line_id FROM settlement_imports
        WHERE id = $1 AND first_line_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM settlements WHERE import_id = $1)
          AND NOT EXISTS (SELECT 1 FROM settlement_versions WHERE import_id = $1)
     ),
     gone AS (
       DELETE FROM settlement_lines l USING i
        WHERE l.id BETWEEN i.first_line_id AND i.last_line_id AND l.import_id = $1
     ),
     repeats AS (
       DELETE FROM settlement_import_repeats r USING i WHERE r.import_id = $1
     )
     UPDATE settlement_imports SET first_line_id = NULL, last_line_id = NULL
      WHERE id = $1 AND EXISTS (SELECT 1 FROM i)`,
    [importId],
  );
}

/** The lines of failed imports, given up by whichever path failed them (the fetch schedule sweeps). */
export async function discardFailedLines(ctx: Context): Promise<number> {
  const { rows } = await ctx.db.query<{ id: string }>(
    "SELECT id FROM settlement_imports WHERE status = 'failed' AND first_line_id IS NOT NULL",
  );
  for (const { id } of rows) await discardLines(ctx.bulkDb, id);
  return rows.length;
}

/** The import was finished (completed or failed) by another run of its job meanwhile. */
export class ImportFinishedError extends Error {
  constructor(id: string) {
    super(`import ${id} is already finished`);
  }
}

/** The file stopped arriving before its end: the upload's connection, or the fetch's, broke off. */
export class FileBrokenOffError extends Error {
  constructor(cause: Error) {
    super(`the file broke off before its end: ${cause.message}`, { cause });
  }
}

export class EmptyFileError extends Error {
  constructor() {
    super('the settlement file is empty');
  }
}

export interface ImportFields {
  merchant_id: string;
  provider: string;
  provider_account_id: string | null;
  source: 'upload' | 'fetch';
  /** An import created beforehand (a scheduled fetch); otherwise one is created with the file. */
  id?: string;
}

/**
 * Receives one settlement file, in one transaction: the import record (created, or the fetch's
 * own), its parsed lines, its batches, and status `queued`. Throws
 * SettlementFormatError (malformed) or EmptyFileError (no bytes at all), with nothing stored, and
 * ImportFinishedError for a fetch's import that another run finished meanwhile. The caller queues
 * the `reconcile` job.
 */
export async function receiveFile(
  ctx: Context,
  fields: ImportFields,
  source: Readable,
): Promise<{ id: string } & ReceivedFile> {
  const module = providerModule(fields.provider);
  if (!module) throw new Error(`no adapter for provider ${fields.provider}`);
  return inTransaction(ctx.bulkDb, async (client) => {
    if (fields.id) {
      // A fetch received again (a retry, or its job handed out twice): the reconcile job holds this
      // row while it runs, so this waits for it, and a finished import is left alone.
      const { rows } = await client.query<Pick<ImportRow, 'status'>>(
        'SELECT status FROM settlement_imports WHERE id = $1 FOR UPDATE',
        [fields.id],
      );
      if (!rows[0] || isFinished(rows[0].status)) throw new ImportFinishedError(fields.id);
    }
    const id =
      fields.id ??
      (await createImport(client, {
        merchant_id: fields.merchant_id,
        provider: fields.provider,
        provider_account_id: fields.provider_account_id,
        source: fields.source,
        status: 'receiving',
      }));
    const received = await copyLines(client, id, module.adapter, source);
    await client.query(
      `UPDATE settlement_imports SET status = 'queued', bytes = $2, sha256 = $3,
              counts = jsonb_build_object('lines_parsed', $4::int, 'batches', $5::int),
              first_line_id = $6, last_line_id = $7, repeats_listed = $8, warnings = $9
        WHERE id = $1`,
      [
        id,
        received.bytes,
        received.sha256,
        received.lines,
        received.batches,
        received.first_line_id,
        received.last_line_id,
        received.repeats_listed,
        JSON.stringify(received.warnings),
      ],
    );
    return { id, ...received };
  });
}
