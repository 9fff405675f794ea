/**
 * The one HTTP transport adapters send through: keep-alive agents, a hard timeout, the raw
 * response body (signatures are verified over exact bytes), and an honest answer to the
 * question the core asks after a failure: did the request possibly reach the provider?
 */
import http from 'node:http';
import https from 'node:https';
import { nonPublicHost, publicOnlyLookup } from './addresses.ts';

export interface TransportResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class TransportError extends Error {
  constructor(
    message: string,
    /** false only when the connection was refused or the host unresolvable: nothing was sent. */
    readonly reached: boolean,
  ) {
    super(message);
    this.name = 'TransportError';
  }
}

const NEVER_SENT = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  // publicOnly refused the address the name resolved to: nothing was sent.
  'EADDRNOTPUBLIC',
]);

/** An answer is read into memory: one longer than this is cut off, not allowed to fill the heap. */
export const MAX_RESPONSE_BYTES = 1 << 20;
/** A settlement file fetched over HTTP (the simulators serve theirs so) is held whole: up to this. */
export const MAX_FETCHED_FILE_BYTES = 256 << 20;

const agents = () => ({
  'http:': new http.Agent({ keepAlive: true, maxSockets: 256 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 256 }),
});
const plainAgents = agents();
/** Sockets opened under publicOnly are kept apart: none is reused by a request without it. */
const publicAgents = agents();

export interface TransportRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  timeoutMs: number;
  /**
   * Only to a public address (production): a literal loopback or private host is refused, and a
   * name is refused when it resolves to one. Nothing is sent then (`reached` false).
   */
  publicOnly?: boolean;
  /** The longest answer taken (MAX_RESPONSE_BYTES unless said): a longer one is a TransportError. */
  maxResponseBytes?: number;
  /**
   * Only the status and headers count: the answer comes as soon as they do, with an empty body, and
   * what the peer sends after them is drained (cut off past maxResponseBytes or the timeout).
   */
  statusOnly?: boolean;
}

export function send(request: TransportRequest): Promise<TransportResponse> {
  const url = new URL(request.url);
  // A literal address is connected to without a lookup: checked here.
  if (request.publicOnly && nonPublicHost(url))
    return Promise.reject(new TransportError(`${url.hostname} is not a public address`, false));
  const lib = url.protocol === 'https:' ? https : http;
  const agent = (request.publicOnly ? publicAgents : plainAgents)[url.protocol as 'http:' | 'https:'];
  const body = request.body === undefined ? undefined : Buffer.from(request.body);
  const maxBytes = request.maxResponseBytes ?? MAX_RESPONSE_BYTES;
  return new Promise((resolve, reject) => {
    let sent = false;
    const req = lib.request(
      url,
      {
        method: request.method,
        agent,
        ...(request.publicOnly ? { lookup: publicOnlyLookup } : {}),
        headers: { ...request.headers, ...(body ? { 'content-length': String(body.length) } : {}) },
      },
      (res) => {
        if (request.statusOnly) {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.alloc(0) });
          let drained = 0;
          res.on('data', (chunk: Buffer) => {
            drained += chunk.length;
            if (drained > maxBytes) req.destroy();
          });
          res.on('error', () => {});
          res.on('close', () => clearTimeout(timer));
          return;
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > maxBytes) {
            clearTimeout(timer);
            req.destroy(new TransportError(`the answer is longer than ${maxBytes} bytes`, true));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
        res.on('error', (error) => {
          clearTimeout(timer);
          reject(new TransportError(`response aborted: ${error.message}`, true));
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy(new TransportError(`no answer within ${request.timeoutMs} ms`, true));
    }, request.timeoutMs);
    req.on('socket', (socket) => {
      if (!socket.connecting) sent = true;
      else socket.once('connect', () => (sent = true));
    });
    req.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (error instanceof TransportError) return reject(error);
      const neverSent = !sent && error.code !== undefined && NEVER_SENT.has(error.code);
      reject(new TransportError(`${error.code ?? 'error'}: ${error.message}`, !neverSent));
    });
    req.end(body);
  });
}
