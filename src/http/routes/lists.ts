import type { Context } from '../../context.ts';
import { ApiError } from '../../errors.ts';

/**
 * Cursor pagination shared by every list: newest first, `starting_after=<id>` continues after
 * that object, `has_more` says whether another page exists. `table` and `filters` are ours, never
 * input; `filters[0]` says whose the rows are (it uses only the first parameters), the rest narrow
 * the list. The cursor only has to be one of the caller's objects: it may no longer match the other
 * filters (a payment that left `processing` while a till paged through `status=processing`).
 */
export async function listPage<R extends { id: string }>(
  ctx: Context,
  table: string,
  filters: string[],
  values: unknown[],
  query: { limit?: number; starting_after?: string },
  toJson: (row: R) => unknown,
): Promise<{ object: 'list'; data: unknown[]; has_more: boolean }> {
  const limit = query.limit ?? 20;
  const where = [...filters];
  const params = [...values];
  if (query.starting_after) {
    const owner = filters[0];
    const ownerParams = values.slice(
      0,
      Math.max(0, ...[...owner.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]))),
    );
    const cursor = await ctx.db.query(
      `SELECT 1 FROM ${table} WHERE ${owner} AND id = $${ownerParams.length + 1}`,
      [...ownerParams, query.starting_after],
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
    `SELECT * FROM ${table} WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id DESC LIMIT $${params.length}`,
    params,
  );
  return { object: 'list', data: rows.slice(0, limit).map(toJson), has_more: rows.length > limit };
}
