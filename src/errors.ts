/** The one error shape of API.md; domain code throws these, the HTTP layer renders them. */
export type ErrorType =
  | 'invalid_request'
  | 'authentication'
  | 'permission'
  | 'not_found'
  | 'conflict'
  | 'idempotency'
  | 'unprocessable'
  | 'rate_limited'
  | 'provider'
  | 'unavailable'
  | 'internal';

const STATUS: Record<ErrorType, number> = {
  invalid_request: 400,
  authentication: 401,
  permission: 403,
  not_found: 404,
  conflict: 409,
  idempotency: 409,
  unprocessable: 422,
  rate_limited: 429,
  provider: 502,
  unavailable: 503,
  internal: 500,
};

export class ApiError extends Error {
  readonly status: number;

  constructor(
    readonly type: ErrorType,
    readonly code: string,
    message: string,
    readonly param?: string,
    status?: number,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.status = status ?? STATUS[type];
  }

  body(requestId: string) {
    return {
      error: {
        type: this.type,
        code: this.code,
        message: this.message,
        ...(this.param ? { param: this.param } : {}),
        request_id: requestId,
      },
    };
  }
}

/** SQLSTATE class 22, data exception: PostgreSQL refused a value it was given. */
export function isDataException(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && code.startsWith('22') && code.length === 5;
}

/** An error of the body parsers (http-errors) that blames the request, with a 4xx status. */
export function isUnreadableBody(error: unknown): boolean {
  const status = (error as { status?: unknown } | null)?.status;
  return error instanceof Error && typeof status === 'number' && status >= 400 && status < 500;
}

/** The same Idempotency-Key with another request: 422 (API.md). */
export const idempotencyKeyReused = () =>
  new ApiError(
    'idempotency',
    'idempotency_key_reused',
    'this Idempotency-Key was used with a different request',
    'Idempotency-Key',
    422,
  );

/** The first request with this Idempotency-Key is still running: 409 (API.md). */
export const idempotencyInProgress = () =>
  new ApiError(
    'idempotency',
    'idempotency_request_in_progress',
    'a request with this Idempotency-Key is still in progress',
    'Idempotency-Key',
    409,
  );

export const notFound = (what: string, id?: string) =>
  new ApiError('not_found', 'resource_missing', id ? `No ${what} ${id}` : `No such ${what}`);

/** A provider API.md names whose adapter is not built yet (PLANNED_PROVIDERS). */
export const providerNotSupported = (provider: string, param?: string) =>
  new ApiError(
    'unprocessable',
    'provider_not_supported',
    `${provider} is not supported by this gateway yet (its adapter is still to come)`,
    param,
  );
