/**
 * A built-in simulator listens where it listened before a restart, so that the URLs it handed out
 * (QR codes a till still shows) open again (API.md: "the sandbox survives a restart"). The port is
 * kept in a file beside the simulator's other state; another is taken if that one is busy now.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** Where the simulators keep what must outlive a restart (ALIPAY_SIMULATOR_STATE_DIR names it). */
export function simulatorStateDir(): string {
  return process.env.ALIPAY_SIMULATOR_STATE_DIR ?? join(tmpdir(), 'tillbridge-alipay-simulator');
}

/** A file of that directory named after the sandbox seed (one per gateway master key). */
export function seededStatePath(seed: Buffer, suffix: string): string {
  return join(
    simulatorStateDir(),
    `${createHash('sha256').update(seed).digest('hex').slice(0, 24)}${suffix}`,
  );
}

function readPort(file: string): number | undefined {
  try {
    const port = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Listens on `requested` if given (which must be free), else on the port `portFile` remembers, or
 * any. Returns the port. The file is written only for a port it did not name: a second live
 * simulator of the same state (an api and a worker process) must not take the first one's place.
 */
export async function listenRemembered(
  server: Server,
  portFile: string | undefined,
  requested?: number,
): Promise<number> {
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  const previous = requested ?? (portFile ? readPort(portFile) : undefined);
  try {
    await listen(previous ?? 0);
  } catch (error) {
    if (requested !== undefined || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    await listen(0);
  }
  const port = (server.address() as AddressInfo).port;
  if (portFile && (previous === undefined || port === previous)) {
    mkdirSync(dirname(portFile), { recursive: true });
    writeFileSync(portFile, String(port));
  }
  return port;
}
