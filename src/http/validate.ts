import { z } from 'zod';
import { ApiError } from '../errors.ts';

/** Parses input with a schema, or throws the first problem as a 400 naming the field. */
export function parse<S extends z.ZodType>(
  schema: S,
  input: unknown,
  where: 'body' | 'query' = 'body',
): z.output<S> {
  if (
    where === 'body' &&
    (input === undefined || input === null || typeof input !== 'object' || Array.isArray(input))
  ) {
    throw new ApiError('invalid_request', 'invalid_body', 'the request body must be a JSON object');
  }
  const result = schema.safeParse(where === 'body' ? withoutNullOptionals(schema, input) : input, {
    error: describeIssue,
  });
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const param = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0];
    const full = param ? `${param}.${key}` : key;
    throw new ApiError('invalid_request', 'parameter_unknown', `unknown parameter ${full}`, full);
  }
  // Zod 4 leaves the input out of its issues: what was sent is looked up by the issue's path.
  // Any field's problem when it was left out is that it is missing (an enum's too, which Zod 4
  // reports as a wrong value); a rule of our own keeps its message, which says when it is required.
  const missing = issue.path.length > 0 && valueAt(input, issue.path) === undefined;
  throw new ApiError(
    'invalid_request',
    missing ? 'parameter_missing' : 'parameter_invalid',
    missing && issue.code !== 'custom' ? `${param} is required` : `${param || where} ${issue.message}`,
    param || undefined,
  );
}

const KINDS: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'an integer',
  boolean: 'true or false',
  object: 'an object',
  record: 'an object',
  array: 'an array',
};

/**
 * Says what a field must be, in the words of our own messages ("must be a string"), where Zod's
 * default would answer a till "Invalid input: expected string, received number". A schema's own
 * message, where it has one, still wins.
 */
function describeIssue(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case 'invalid_type':
      return `must be ${KINDS[issue.expected] ?? issue.expected}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map((value) => JSON.stringify(value)).join(', ')}`;
    case 'too_big':
    case 'too_small': {
      const bound = issue.code === 'too_big' ? issue.maximum : issue.minimum;
      const most = issue.code === 'too_big' ? 'at most' : 'at least';
      if (issue.origin === 'string') {
        return issue.code === 'too_small' && bound === 1
          ? 'must not be empty'
          : `must be ${most} ${bound} characters long`;
      }
      if (issue.origin === 'array' || issue.origin === 'set') {
        return `must have ${most} ${bound} ${bound === 1 ? 'item' : 'items'}`;
      }
      return `must be ${most} ${bound}`;
    }
    default:
      return undefined;
  }
}

const NO_PARAMETERS = z.strictObject({});

/** For a request that takes no parameters (a cancel, a key rotation): its body, when sent, is `{}`. */
export function refuseParameters(body: unknown): void {
  if (body !== undefined) parse(NO_PARAMETERS, body);
}

/** For a read that takes no query parameters: one sent would be silently ignored (a filter that filters nothing). */
export function refuseQuery(query: unknown): void {
  parse(NO_PARAMETERS, query, 'query');
}

/**
 * The body without its null optional fields: many JSON serialisers write an unset field as null,
 * and a till's `"description": null` means no description, not a bad request. A required field
 * that is null is still refused, by its own schema.
 */
function withoutNullOptionals(schema: z.ZodType, input: unknown): unknown {
  const shape = (schema as { shape?: Record<string, z.ZodType> }).shape;
  if (!shape || input === null || typeof input !== 'object') return input;
  const entries = Object.entries(input as Record<string, unknown>);
  if (!entries.some(([, value]) => value === null)) return input;
  return Object.fromEntries(
    entries.filter(
      ([key, value]) =>
        !(value === null && Object.hasOwn(shape, key) && shape[key].safeParse(undefined).success),
    ),
  );
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}
