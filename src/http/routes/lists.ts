import type { Context } from '../../context.ts';
import { ApiError } from '../../errors.ts';
import { DEFAULT_LIST_LIMIT } from '../schemas.ts';

/** A condition of a list's WHERE clause: SQL with at most one `?`, and the value it stands for. */
export type Condition = readonly [sql: string, value?: unknown];

export interface ListScope {
  /** Whose the rows are (merchant, terminal): a cursor must be one of these rows. */
  owner: Condition[];
  /** What narrows the list (status, dates…): a cursor need not match these any more. */
  filters?: Condition[];
}

/** The conditions as SQL, their `?` numbered after `firstParam`, and their values. */
function compile(conditions: Condition[], firstParam = 1): { sql: string[]; values: unknown[] } {
  const values: unknown[] = [];
  const sql = conditions.map(([text, ...value]) => {
    if (!text.includes('?')) return text;
    values.push(value[0]);
    return text.replace('?', `$${firstParam + values.length - 1}`);
  });
  return { sql, values };
}

/**
 * Cursor pagination shared by every list: newest first, `starting_after=<id>` continues after
 * that object, `has_more` says whether another page exists. `table` and the conditions' SQL are
 * ours, never input. The cursor only has to be one of the owner's rows: it may have left the
 * filters since (a payment that left `processing` while a till paged through `status=processing`).
 */
export async function listPage<R extends { id: string }>(
  ctx: Context,
  table: string,
  scope: ListScope,
  query: { limit?: number; starting_after?: string },
  toJson: (row: R) => unknown,
): Promise<{ object: 'list'; data: unknown[]; has_more: boolean }> {
  const limit = query.limit ?? DEFAULT_LIST_LIMIT;
  const { sql: where, values: params } = compile([...scope.owner, ...(scope.filters ?? [])]);
  if (query.starting_after) {
    const owner = compile(scope.owner);
    const cursor = await ctx.db.query(
      `SELECT 1 FROM ${table} WHERE ${[...owner.sql, 'true'].join(' AND ')} AND id = $${owner.values.length + 1}`,
      [...owner.values, query.starting_after],
    );
    if (cursor.rowCount === 0) {
      throw new ApiError(
        'invalid_request',
        'parameter_invalid',
        `starting_after: no such object ${query.starting_after}`,
        'starting_after',
      );
    }
    params.push(query.starting_after);
    where.push(`(created_at, id) < (SELECT created_at, id FROM ${table} WHERE id = $${params.length})`);
  }
  params.push(limit + 1);
  const { rows } = await ctx.db.query<R>(
    `SELECT * FROM ${table} WHERE ${[...where, 'true'].join(' AND ')} ORDER BY created_at DESC, id DESC LIMIT $${params.length}`,
    params,
  );
  return { object: 'list', data: rows.slice(0, limit).map(toJson), has_more: rows.length > limit };
}
