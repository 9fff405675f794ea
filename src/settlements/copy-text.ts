/** Rows for PostgreSQL's COPY text format: tab-separated, `\N` for NULL, backslash escapes. */

const SPECIAL = /[\\\t\n\r]/;

export function copyField(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return '\\N';
  const text = String(value);
  if (!SPECIAL.test(text)) return text;
  return text.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}
