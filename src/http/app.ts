import { isUtf8 } from 'node:buffer';
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { Duplex } from 'node:stream';
import express, { type NextFunction, type Request, type Response } from 'express';
import { inboundWebhooksRouter } from '../../webhooks/inbound.ts';
import type { Context } from '../context.ts';
import { withDeadline } from '../deadline.ts';
import { ApiError, isDataException, isUnreadableBody } from '../errors.ts';
import { randomToken } from '../ids.ts';
import { countQueues } from '../jobs/queues.ts';
import { isInfrastructureError } from '../ledger/db.ts';
import { CredentialsUnreadableError } from '../payments/accounts.ts';
import { authenticator, rateLimiter } from './auth.ts';
import { documentedRoute, openApiDocument } from './openapi.ts';
import { paymentsRouter } from './routes/payments.ts';
import { extraRouters } from './routes/registry.ts';
import { setupRouter } from './routes/setup.ts';

const READY_PING_DEADLINE_MS = 2_000;
/** A ping unanswered for this long is left behind and a new one sent: one held connection per 10 s at most. */
const PING_RETRY_MS = 10_000;
const PROBES = new Set(['/healthz', '/readyz', '/metrics']);
/** The status logged for a request whose connection closed before its answer. */
const CLIENT_CLOSED_REQUEST = 499;

/**
 * The HTTP server of an app. Left to itself, Node answers some requests before the app sees them,
 * bare, without a Request-Id or the error shape: one its parser refuses (400/431), an HTTP/1.1
 * request without Host (400), an `Expect` other than 100-continue (417), CONNECT (the connection
 * just closed). Here each is answered as any other request or bad input is.
 */
export function createHttpServer(app: express.Express): Server {
  const server = createServer({ requireHostHeader: false }, app);
  // An expectation the server does not know may be ignored (RFC 9110, 10.1.1): the request is served.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => app(req, res));
  server.on('connect', (_req: IncomingMessage, socket: Duplex) =>
    answerOnSocket(
      socket,
      new ApiError('invalid_request', 'malformed_request', 'CONNECT is not served: this is no proxy'),
    ),
  );
  server.on('clientError', (error: Error & { code?: string }, socket: Duplex) => {
    if (!socket.writable || error.code === 'ECONNRESET' || error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      socket.destroy();
      return;
    }
    const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
    answerOnSocket(
      socket,
      new ApiError(
        'invalid_request',
        tooLarge ? 'headers_too_large' : 'malformed_request',
        tooLarge
          ? 'the request line or headers are too large'
          : 'the request is not valid HTTP (a control character in a header, or a malformed request line)',
      ),
    );
  });
  return server;
}

/** How long a socket answered by answerOnSocket may stay open for its client to close its side. */
const ANSWERED_SOCKET_LINGER_MS = 2_000;

/**
 * An answer written on a socket no request object stands for, which is closed after it. Such a
 * socket is Node's HTTP server's no more (CONNECT hands it over): its input is read away, so that
 * the client's end is seen, and a client that never ends its side is cut off.
 */
function answerOnSocket(socket: Duplex, error: ApiError): void {
  const requestId = `req_${randomToken(16)}`;
  const body = JSON.stringify(error.body(requestId));
  socket.resume();
  socket.once('end', () => socket.destroy());
  setTimeout(() => socket.destroy(), ANSWERED_SOCKET_LINGER_MS).unref();
  socket.end(
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nRequest-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** How long a scrape waits for the queues' counts before it shows the last ones. */
const QUEUE_COUNT_DEADLINE_MS = 1_000;

/**
 * /healthz, /readyz and /metrics: served by every process, a worker's own included (its queues,
 * reconciliation counts and provider calls are its own). Queue depth is counted at each scrape.
 */
export function operationsRouter(ctx: Context): express.Router {
  const router = express.Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  // A PostgreSQL that keeps its connection and stops answering never ends a ping: each probe
  // waits for the one still out, so probes every second do not take a pooled connection each. A
  // ping out for longer than PING_RETRY_MS is given up on, so a recovery is seen.
  let pendingPing: { ping: Promise<unknown>; since: number } | undefined;
  const pingPostgres = () => {
    if (!pendingPing || Date.now() - pendingPing.since > PING_RETRY_MS) {
      const ping = ctx.db.query('SELECT 1').finally(() => {
        if (pendingPing?.ping === ping) pendingPing = undefined;
      });
      pendingPing = { ping, since: Date.now() };
    }
    return pendingPing.ping;
  };
  router.get('/readyz', async (_req, res) => {
    const checks = await Promise.all([
      withDeadline(pingPostgres(), 'a PostgreSQL ping', READY_PING_DEADLINE_MS).then(
        () => true,
        () => false,
      ),
      // A hung Redis keeps its connection and never answers: not ready either.
      withDeadline(ctx.redis.ping(), 'a Redis ping', READY_PING_DEADLINE_MS).then(
        () => ctx.queues.reachable(),
        () => false,
      ),
    ]);
    const [postgres, redis] = checks;
    res
      .status(postgres && redis ? 200 : 503)
      .json({ status: postgres && redis ? 'ready' : 'unavailable', postgres, redis });
  });
  router.get('/metrics', async (_req, res) => {
    await withDeadline(countQueues(ctx), 'counting queued jobs', QUEUE_COUNT_DEADLINE_MS).catch(() => {});
    res.type(ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics());
  });
  return router;
}

/** Every response carries a Request-Id (API.md), which logs and error bodies repeat. */
function withRequestId(req: Request, res: Response): void {
  req.requestId = `req_${randomToken(16)}`;
  res.set('Request-Id', req.requestId);
}

/** What a worker-only process serves on its port: operations, nothing of the API. */
export function createOperationsApp(ctx: Context): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  // Every response carries a Request-Id, and an error has the one shape (API.md), here too.
  app.use((req: Request, res: Response, next: NextFunction) => {
    withRequestId(req, res);
    next();
  });
  app.use(refuseUnservable);
  app.use(operationsRouter(ctx));
  app.use((req: Request, _res: Response, next: NextFunction) =>
    next(
      new ApiError(
        'not_found',
        'route_missing',
        `no route for ${req.method} ${req.path}: this process is a worker (health and metrics only)`,
      ),
    ),
  );
  app.use(answerError(ctx));
  return app;
}

/**
 * Express would answer OPTIONS itself, in plain text: like any other method no route takes, it is
 * 404. An HTTP/1.1 request without Host must be refused (RFC 9112, 3.2): Node leaves that to us.
 */
function refuseUnservable(req: Request, _res: Response, next: NextFunction): void {
  if (req.method === 'OPTIONS')
    next(new ApiError('not_found', 'route_missing', `no route for ${req.method} ${req.path}`));
  else if (req.httpVersion === '1.1' && req.headers.host === undefined)
    next(
      new ApiError('invalid_request', 'malformed_request', 'an HTTP/1.1 request must carry a Host header'),
    );
  else next();
}

function decodableQuery(url: string): boolean {
  const at = url.indexOf('?');
  if (at < 0) return true;
  try {
    decodeURIComponent(url.slice(at + 1).replace(/\+/g, ' '));
    return true;
  } catch {
    return false;
  }
}

export function createApp(ctx: Context): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');

  app.use((req: Request, res: Response, next: NextFunction) => {
    withRequestId(req, res);
    const stop = ctx.metrics.httpDuration.startTimer({ method: req.method });
    // 'close', not 'finish': a request whose connection closed before its answer (a till that gave
    // up, whose sale may still go through; or one a stop cut off) is logged and counted too, as
    // 499, nginx's "client closed request".
    res.on('close', () => {
      // A label from the documented patterns only: one holding a raw path (express leaves a
      // mounted handler's baseUrl as the path it matched) would let anybody add series at will.
      const route =
        documentedRoute(req.method, req.originalUrl.split('?')[0]) ??
        (req.route?.path && !req.baseUrl ? String(req.route.path) : 'unmatched');
      const status = res.writableFinished ? res.statusCode : CLIENT_CLOSED_REQUEST;
      const seconds = stop({ route, status: String(status) });
      // The access log: one line a request, its Request-Id the thread to the till's report.
      const line = {
        request_id: req.requestId,
        method: req.method,
        route,
        status,
        ms: Math.round(seconds * 1000),
      };
      if (status >= 500) ctx.log.error(line, 'request failed');
      else if (status === CLIENT_CLOSED_REQUEST) ctx.log.info(line, 'request closed before its answer');
      // Probes come every few seconds: their lines would drown the requests'.
      else if (PROBES.has(route) && status < 400) ctx.log.debug(line, 'request');
      else ctx.log.info(line, 'request');
    });
    next();
  });
  app.use(refuseUnservable);

  app.use(operationsRouter(ctx));
  app.get('/openapi.json', (_req, res) => {
    res.json(
      openApiDocument({ baseUrl: ctx.config.publicBaseUrl, maxAmountMinor: ctx.config.maxAmountMinor }),
    );
  });

  // Provider callbacks first, with their raw-body parser, before any JSON parsing.
  app.use(inboundWebhooksRouter(ctx));

  const jsonParser = express.json({
    type: () => true,
    limit: '100kb',
    strict: true,
    // Bytes that are not UTF-8 would be read as U+FFFD and stored so.
    verify: (req, _res, body) => {
      if (!isUtf8(body))
        throw Object.assign(new Error('the request body is not valid UTF-8'), {
          status: 400,
          type: 'encoding.unsupported',
        });
      // JSON.parse makes 1999 of `1999.0` and 1000 of `1e3`: such bodies are read once more below,
      // as the parser read them: without a byte-order mark (which some Windows tills write).
      const text = body.toString('utf8').replace(/^\uFEFF/, '');
      if (MAYBE_FRACTION.test(text)) (req as BodyText).jsonText = text;
    },
  });
  // Who is asking comes first: a request without a valid key is 401 whatever its body holds.
  app.use('/v1', authenticator(ctx), rateLimiter(ctx));
  app.use('/v1', (req, res, next) => {
    // A body on GET/DELETE is ignored; on POST/PUT it must be JSON.
    // Settlement files are streamed raw into PostgreSQL by their route, never parsed here (the
    // router matches paths case-insensitively and with a trailing slash, and so does this).
    // Read as it is, an undecodable escape would become U+FFFD and filter on that.
    if (!decodableQuery(req.originalUrl))
      return next(
        new ApiError(
          'invalid_request',
          'invalid_query',
          'the query string is not valid percent-encoded UTF-8',
        ),
      );
    // Whichever route it would reach: some read an id's prefix before they look it up (404).
    if (req.path.includes('%00'))
      return next(new ApiError('invalid_request', 'invalid_path', 'the URL path holds a NUL byte'));
    // PostgreSQL refuses a NUL byte: the parameter that holds one is named here, as a schema would.
    const holdsNul = Object.keys(req.query).find((key) => JSON.stringify(req.query[key]).includes('\\u0000'));
    if (holdsNul !== undefined) return next(unstorable(holdsNul));
    if (req.method === 'POST' && /^\/settlements\/imports\/?$/i.test(req.path)) return next();
    // Only reads take query parameters: one on a write would be silently ignored (a refund of
    // everything for `?amount=100`).
    const unknown = req.method === 'GET' || req.method === 'HEAD' ? undefined : Object.keys(req.query)[0];
    if (unknown !== undefined)
      return next(
        new ApiError('invalid_request', 'parameter_unknown', `unknown query parameter ${unknown}`, unknown),
      );
    if (req.method === 'POST' || req.method === 'PUT') {
      const charset = CHARSET.exec(req.headers['content-type'] ?? '')?.[1];
      if (charset !== undefined) {
        if (charset.replace(/[-_]/g, '').toLowerCase() !== 'utf8')
          return next(
            new ApiError('invalid_request', 'unsupported_encoding', 'the request body must be UTF-8 JSON'),
          );
        // The parser knows UTF-8 by one name only ("utf8" would be "another charset"), and reads
        // UTF-8 when none is named.
        req.headers['content-type'] = req.headers['content-type']?.replace(CHARSET, '');
      }
      return jsonParser(req, res, (error?: unknown) => {
        // Called from the body stream's end: nothing here may throw past next().
        try {
          const text = (req as BodyText).jsonText;
          next(error ?? bodyFault(req.body) ?? (text === undefined ? undefined : fractionFault(text)));
        } catch (fault) {
          next(fault);
        }
      });
    }
    next();
  });
  app.use(setupRouter(ctx));
  app.use(paymentsRouter(ctx));
  for (const router of extraRouters(ctx)) app.use(router);

  app.use((req: Request) => {
    throw new ApiError('not_found', 'route_missing', `no route for ${req.method} ${req.path}`);
  });

  app.use(answerError(ctx));

  return app;
}

/**
 * Every error in API.md's error shape, in the API and in a worker's operations app alike: an
 * ApiError as it is, what body parsing, the router or the ledger refused as its 4xx, the rest a
 * logged 503 or 500.
 */
function answerError(ctx: Context) {
  return (error: unknown, req: Request, res: Response, _next: NextFunction) => {
    let apiError: ApiError;
    if (error instanceof ApiError) apiError = error;
    else if ((error as { type?: string }).type === 'entity.parse.failed') {
      apiError = isJson((error as { body?: unknown }).body)
        ? // `null` or `"x"`: JSON, only not an object (the strict parser refuses it as if it were not JSON).
          new ApiError('invalid_request', 'invalid_body', 'the request body must be a JSON object')
        : new ApiError('invalid_request', 'invalid_json', 'the request body is not valid JSON');
    } else if ((error as { type?: string }).type === 'entity.too.large') {
      // API.md gives every invalid_request the status 400 (not 413 or 415); the code says which.
      apiError = new ApiError('invalid_request', 'body_too_large', 'the request body is too large');
    } else if (
      (error as { type?: string }).type === 'encoding.unsupported' ||
      (error as { type?: string }).type === 'charset.unsupported'
    ) {
      apiError = new ApiError(
        'invalid_request',
        'unsupported_encoding',
        'the request body must be UTF-8 JSON',
      );
    } else if (error instanceof URIError) {
      // Before the body check: the router marks its undecodable path parameters 400 as well.
      apiError = new ApiError(
        'invalid_request',
        'invalid_path',
        'the URL path is not valid percent-encoded UTF-8',
      );
    } else if (isUnreadableBody(error)) {
      // A body that does not decompress (Content-Encoding gzip, deflate, br) or was cut off.
      apiError = new ApiError(
        'invalid_request',
        'unreadable_body',
        `the request body could not be read: ${(error as Error).message}`,
      );
    } else if (isDataException(error)) {
      // PostgreSQL refused a value it was given (a NUL byte, a lone surrogate in JSON, a number out
      // of range): whatever validation let through, it is the request's fault.
      ctx.log.warn({ err: error, request_id: req.requestId }, 'value refused by the ledger');
      apiError = unstorable();
    } else if (error instanceof CredentialsUnreadableError) {
      ctx.log.error({ err: error, request_id: req.requestId }, 'provider credentials unreadable');
      apiError = new ApiError(
        'unavailable',
        'credentials_unreadable',
        "the provider account's credentials do not open with this gateway's master key; an operator must restore the key they were stored under",
        undefined,
        503,
      );
    } else if (isInfrastructureError(error)) {
      ctx.log.error({ err: error, request_id: req.requestId }, 'storage unavailable');
      apiError = new ApiError(
        'unavailable',
        'storage_unavailable',
        'the gateway cannot reach its storage; retry shortly',
        undefined,
        503,
        {
          'Retry-After': '1',
        },
      );
    } else {
      ctx.log.error({ err: error, request_id: req.requestId }, 'unhandled error');
      apiError = new ApiError('internal', 'internal_error', 'an internal error occurred; it has been logged');
    }
    if (res.headersSent) return res.end();
    // JSON, whatever type the failed handler had already set (a report's CSV, /metrics' text).
    res
      .status(apiError.status)
      .type('application/json')
      .set(apiError.headers)
      .json(apiError.body(req.requestId));
  };
}

/** In unicode mode a class of surrogates matches only those not in a pair. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: a NUL byte is what it looks for.
const UNSTORABLE_TEXT = /[\u0000\uD800-\uDFFF]/u;
/** No request of the API nests deeper; a deeper body would only exhaust recursive code after us. */
const MAX_BODY_DEPTH = 32;

function isJson(text: unknown): boolean {
  if (typeof text !== 'string') return false;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * What is wrong with a parsed JSON body that no schema sees, if anything: nesting beyond
 * MAX_BODY_DEPTH, or text PostgreSQL cannot store as it is (a NUL byte, which it refuses, or an
 * unpaired surrogate, which node-postgres would store as U+FFFD, changing the value unseen), named
 * by its field. Walked with a stack of its own, so no body can exhaust the call stack.
 */
function bodyFault(body: unknown): ApiError | undefined {
  const pending: [value: unknown, depth: number, path: string][] = [[body, 0, '']];
  for (let next = pending.pop(); next; next = pending.pop()) {
    const [value, depth, path] = next;
    if (typeof value === 'string') {
      if (UNSTORABLE_TEXT.test(value)) return unstorable(path);
    } else if (value !== null && typeof value === 'object') {
      if (depth >= MAX_BODY_DEPTH)
        return new ApiError(
          'invalid_request',
          'body_too_deep',
          `the body nests deeper than ${MAX_BODY_DEPTH} levels`,
        );
      for (const [key, item] of Object.entries(value)) {
        const keyPath = path ? `${path}.${key}` : key;
        if (UNSTORABLE_TEXT.test(key)) return unstorable(path || undefined);
        // JSON.parse keeps it as a key, but any copy of the object makes it the prototype: it
        // would vanish from metadata without a word.
        if (key === '__proto__')
          return new ApiError(
            'invalid_request',
            'parameter_invalid',
            'a key named __proto__ is not accepted',
          );
        pending.push([item, depth + 1, keyPath]);
      }
    }
  }
  return undefined;
}

/** The charset parameter of a Content-Type, quoted or not. */
const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)"?/i;

interface BodyText {
  /** The body's text, kept only when it may write a number with a fraction or an exponent. */
  jsonText?: string;
}

/** A digit before `.`, `e` or `E`: perhaps a number such as `1999.0` or `1e3`, perhaps only text. */
const MAYBE_FRACTION = /\d[.eE]/;
/** JSON's strings and numbers, left to right, so that a number is never looked for inside a string. */
const JSON_TOKENS = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
const FRACTION_MARK = '\u0000fraction\u0000';

/**
 * A number written with a fraction or an exponent anywhere in the body: every number the API takes
 * (amounts in minor units, priorities) is an integer and must be written as one (API.md: floats
 * are rejected), which JSON.parse cannot tell. Found by reading the text again with each such
 * number turned into a marked string, so that the error names the field as a schema error would.
 */
function fractionFault(text: string): ApiError | undefined {
  let marked = false;
  const tokens = text.replace(JSON_TOKENS, (token) => {
    if (token.startsWith('"') || !/[.eE]/.test(token)) return token;
    marked = true;
    return JSON.stringify(FRACTION_MARK + token);
  });
  if (!marked) return undefined;
  const pending: [unknown, string][] = [[JSON.parse(tokens), '']];
  for (let next = pending.shift(); next; next = pending.shift()) {
    const [value, path] = next;
    if (typeof value === 'string' && value.startsWith(FRACTION_MARK))
      return new ApiError(
        'invalid_request',
        'parameter_invalid',
        `${path} must be an integer written without a fraction or exponent (got ${value.slice(FRACTION_MARK.length)})`,
        path,
      );
    if (value !== null && typeof value === 'object')
      for (const [key, item] of Object.entries(value)) pending.push([item, path ? `${path}.${key}` : key]);
  }
  return undefined;
}

/** A value the ledger cannot store or compare: found by bodyFault, or refused by PostgreSQL. */
const unstorable = (param?: string) =>
  new ApiError(
    'invalid_request',
    'invalid_value',
    param
      ? `${param} holds text the ledger cannot store (a NUL byte or an unpaired surrogate)`
      : 'the request holds a value the ledger cannot store or compare (out of range, a NUL byte or an unpaired surrogate)',
    param,
  );
