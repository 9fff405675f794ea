/**
 * The one HTTP transport adapters send through: keep-alive agents, a hard timeout, the raw
 * response body (signatures are verified over exact bytes), and an honest answer to the
 * question the core asks after a failure: did the request possibly reach the provider?
 */
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';

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

const NEVER_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

const agents = () => ({
  'http:': new http.Agent({ keepAlive: true, maxSockets: 256 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 256 }),
});
const plainAgents = agents();
/** Sockets opened through a `lookup` of the caller's are kept apart: none is reused without it. */
const lookupAgents = agents();

export interface TransportRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  timeoutMs: number;
  /** Resolves the host instead of the system's lookup (and may refuse it: nothing is sent then). */
  lookup?: LookupFunction;
}

export function send(request: TransportRequest): Promise<TransportResponse> {
  const url = new URL(request.url);
  const lib = url.protocol === 'https:' ? https : http;
  const agent = (request.lookup ? lookupAgents : plainAgents)[url.protocol as 'http:' | 'https:'];
  const body = request.body === undefined ? undefined : Buffer.from(request.body);
  return new Promise((resolve, reject) => {
    let sent = false;
    const req = lib.request(
      url,
      {
        method: request.method,
        agent,
        ...(request.lookup ? { lookup: request.lookup } : {}),
        headers: { ...request.headers, ...(body ? { 'content-length': String(body.length) } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
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
