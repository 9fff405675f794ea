/** Settlement imports (the `job_` objects of GET /v1/jobs/{id}): creating, queueing and showing them. */
import type { Context } from '../context.ts';
import { newId } from '../ids.ts';
import { queueDeadline } from '../jobs/queues.ts';
import type { Queryable } from '../ledger/db.ts';
import type { ImportCounts } from './reconcile.ts';

export interface ImportRow {
  id: string;
  merchant_id: string;
  provider: string;
  provider_account_id: string | null;
  source: 'upload' | 'fetch';
  /** node-postgres reads a `date` as local midnight. */
  fetch_date: Date | null;
  /** `awaiting`: matched, with refund lines whose refund is not decided yet (shown as running). */
  status: 'receiving' | 'queued' | 'running' | 'awaiting' | 'completed' | 'failed';
  bytes: number;
  sha256: string | null;
  counts: Partial<ImportCounts> & { lines_parsed?: number; no_file?: boolean };
  error_code: string | null;
  error_message: string | null;
  error_line: number | null;
  /** What the adapter read past without refusing the file (copyLines). */
  warnings: string[];
  attempts: number;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

/** Bull keeps this many attempts for a reconcile job whose failure is not the file's fault. */
export const RECONCILE_ATTEMPTS = 3;

export async function createImport(
  db: Queryable,
  fields: {
    merchant_id: string;
    provider: string;
    provider_account_id: string | null;
    source: 'upload' | 'fetch';
    fetch_date?: string;
    status: 'receiving' | 'queued';
    id?: string;
  },
): Promise<string> {
  const id = fields.id ?? newId('job');
  await db.query(
    `INSERT INTO settlement_imports (id, merchant_id, provider, provider_account_id, source, fetch_date, status)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [
      id,
      fields.merchant_id,
      fields.provider,
      fields.provider_account_id,
      fields.source,
      fields.fetch_date ?? null,
      fields.status,
    ],
  );
  return id;
}

/** The reconcile job of an uploaded file; its id is the import's, so adding one that exists changes nothing. */
export async function queueReconcile(ctx: Context, importId: string): Promise<void> {
  const added = ctx.queues.settlement.add(
    'reconcile',
    { import_id: importId },
    {
      jobId: importId,
      attempts: RECONCILE_ATTEMPTS,
      backoff: { type: 'exponential', delay: 2000 },
      removeOnComplete: 1000,
      removeOnFail: 5000,
    },
  );
  await queueDeadline(ctx.queues, added, 'queueing a reconcile job');
}

const localDate = (d: Date) =>
  `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;

/** Whether the import is done with (matched, or failed for good): receiving or fetching it again must leave it alone. */
export const isFinished = (status: ImportRow['status']) =>
  status === 'awaiting' || status === 'completed' || status === 'failed';

const iso = (d: Date | null) => (d ? d.toISOString() : null);

export function jobJson(row: ImportRow): Record<string, unknown> {
  const { lines_parsed, ...counts } = row.counts;
  return {
    id: row.id,
    object: 'job',
    type: 'reconcile',
    status: row.status === 'receiving' ? 'queued' : row.status === 'awaiting' ? 'running' : row.status,
    provider: row.provider,
    source: row.source,
    ...(row.fetch_date ? { settlement_date: localDate(row.fetch_date) } : {}),
    file: { bytes: row.bytes, sha256: row.sha256 },
    counts:
      row.status === 'completed' || row.status === 'awaiting' ? counts : { lines_parsed: lines_parsed ?? 0 },
    ...(row.warnings.length ? { warnings: row.warnings } : {}),
    ...(row.error_code
      ? {
          error: {
            code: row.error_code,
            message: row.error_message,
            ...(row.error_line ? { line: row.error_line } : {}),
          },
        }
      : {}),
    attempts: row.attempts,
    created_at: row.created_at.toISOString(),
    started_at: iso(row.started_at),
    finished_at: iso(row.finished_at),
  };
}
