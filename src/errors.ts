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

export const notFound = (what: string, id?: string) =>
  new ApiError('not_found', 'resource_missing', id ? `No ${what} ${id}` : `No such ${what}`);
