/**
 * Checkout benchmark (DESIGN.md "Performance targets", issue 3): autocannon against
 * `POST /v1/payments` of a real gateway (sandbox provider, zero simulated latency, a unique
 * Idempotency-Key per request) and, in the same run, against a bare Express 5 handler doing one
 * PostgreSQL insert. Both servers run as child processes (autocannon stays in this process), each
 * with a pool of 20 connections to the same throw-away database `tb_bench_<random>`.
 *
 * Targets at 50 connections: gateway throughput ≥ 0.5× bare, gateway p99 ≤ 2× bare.
 *
 * Knobs (environment): BENCH_DURATION_S (10), BENCH_WARMUP_S (3), BENCH_CONNECTIONS ("50,200"),
 * BENCH_ROUNDS (1; the median round is reported), BENCH_DATABASE_URL (a URL of the postgres
 * database to create the bench database from), BENCH_REDIS_URL, BENCH_CPU_PROF=<dir> (writes a
 * V8 CPU profile of each server child there).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type autocannon from 'autocannon';
import { Redis } from 'ioredis';
import pg from 'pg';
import { freePort } from '../test/services.ts';
import { adminQuery, databaseUrl, dropRedisKeys, REDIS_URL } from './db.ts';

const ALIPAY_CODE = '286714335246118790';
const CHILD_ENV = 'TB_BENCH_CHILD';
const POOL_MAX = 20; // the gateway's createPool default; the bare server gets the same

type ServerKind = 'gateway' | 'bare' | 'candidate';
type ChildKind = ServerKind | 'simulator';

export interface Measurement {
  kind: ServerKind;
  connections: number;
  rps: number;
  p50: number;
  p99: number;
  total: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  /** CPU used by the server child during the run, in cores (1.0 = one core busy). */
  serverCores: number;
  /** CPU used by this process (autocannon) during the run, in cores. */
  loaderCores: number;
  /** CPU used by all PostgreSQL processes during the run, in cores. */
  postgresCores: number;
  /** CPU used by the provider simulator's own process during the run, in cores (0 when inside the gateway). */
  simulatorCores: number;
  /** CPU used by Redis during the run, in cores. */
  redisCores: number;
  /** Whole machine busy during the run, in cores (of os.cpus().length). */
  machineCores: number;
  loadavg1: number;
}

export interface CheckoutResult {
  date: string;
  machine: string;
  durationS: number;
  simulator: 'own process' | 'inside the gateway';
  rows: { connections: number; bare: Measurement; gateway: Measurement; candidate?: Measurement }[];
  payments: Record<string, number>;
  /** BENCH_COMPARE_SRC: the other source tree measured as "candidate". */
  candidateSrc?: string;
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/**
 * BENCH_SQL_STATS=1: counts and times every query the gateway sends (from the moment a pooled
 * client sends it to its answer) and the waits for a pooled client; printed when the child stops.
 */
function instrumentSql(): () => string {
  const stats = new Map<string, { n: number; ms: number }>();
  const poolWait = { n: 0, ms: 0 };
  const note = (text: string, ms: number) => {
    const key = text.replace(/\s+/g, ' ').trim().slice(0, 110);
    const entry = stats.get(key) ?? { n: 0, ms: 0 };
    entry.n += 1;
    entry.ms += ms;
    stats.set(key, entry);
  };
  type AnyFn = (...args: unknown[]) => unknown;
  const clientProto = pg.Client.prototype as unknown as { query: AnyFn };
  const original = clientProto.query;
  clientProto.query = function (this: unknown, ...args: unknown[]) {
    const config = args[0] as string | { text?: string };
    const text = typeof config === 'string' ? config : (config?.text ?? '?');
    const started = performance.now();
    const callback = args.find((a, i) => i > 0 && typeof a === 'function') as AnyFn | undefined;
    if (callback) {
      const index = args.indexOf(callback);
      args[index] = (...cbArgs: unknown[]) => {
        note(text, performance.now() - started);
        return callback(...cbArgs);
      };
      return original.apply(this, args);
    }
    const result = original.apply(this, args) as Promise<unknown> | undefined;
    if (result && typeof result.then === 'function') {
      return result.then(
        (value) => {
          note(text, performance.now() - started);
          return value;
        },
        (error) => {
          note(`(failed) ${text}`, performance.now() - started);
          throw error;
        },
      );
    }
    return result;
  };
  const poolProto = pg.Pool.prototype as unknown as { connect: AnyFn };
  const connect = poolProto.connect;
  poolProto.connect = function (this: unknown, ...args: unknown[]) {
    const started = performance.now();
    const done = () => {
      poolWait.n += 1;
      poolWait.ms += performance.now() - started;
    };
    if (typeof args[0] === 'function') {
      const callback = args[0] as AnyFn;
      return connect.call(this, (...cbArgs: unknown[]) => {
        done();
        return callback(...cbArgs);
      });
    }
    return (connect.apply(this, args) as Promise<unknown>).then((client) => {
      done();
      return client;
    });
  };
  const redisCommands = new Map<string, number>();
  const redisProto = Redis.prototype as unknown as { sendCommand: AnyFn };
  const sendCommand = redisProto.sendCommand;
  redisProto.sendCommand = function (this: unknown, ...args: unknown[]) {
    const name = (args[0] as { name?: string })?.name ?? '?';
    redisCommands.set(name, (redisCommands.get(name) ?? 0) + 1);
    return sendCommand.apply(this, args);
  };
  return () => {
    const redisLine = [...redisCommands]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([name, n]) => `${name} ${n}`)
      .join(', ');
    const rows = [...stats].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((sum, [, v]) => sum + v.n, 0);
    return [
      `sql stats: ${total} queries; pool waits ${poolWait.n}, mean ${(poolWait.ms / Math.max(1, poolWait.n)).toFixed(2)} ms`,
      `redis commands: ${redisLine}`,
      ...rows
        .slice(0, 25)
        .map(
          ([text, v]) =>
            `${String(v.n).padStart(7)} × ${(v.ms / v.n).toFixed(2).padStart(7)} ms = ${(v.ms / 1000).toFixed(1).padStart(6)} s  ${text}`,
        ),
    ].join('\n');
  };
}

async function serveGateway(): Promise<void> {
  const report = process.env.BENCH_SQL_STATS ? instrumentSql() : undefined;
  // BENCH_SRC: another checkout's src/ (BENCH_COMPARE_SRC), with its own adapters/ and webhooks/ beside it.
  const src = process.env.BENCH_SRC ?? '../src';
  const { loadConfig } = (await import(`${src}/config.ts`)) as typeof import('../src/config.ts');
  const { startGateway } = (await import(`${src}/runtime.ts`)) as typeof import('../src/runtime.ts');
  const gateway = await startGateway(loadConfig(process.env));
  process.send?.({ ready: true, url: gateway.url });
  const stop = async () => {
    await gateway.stop();
    if (report) console.error(report());
    process.exit(0);
  };
  process.on('message', (m: { stop?: boolean }) => m.stop && void stop());
  process.on('disconnect', () => void stop());
}

/** The sandbox provider's simulator on its own (a real provider is another machine, not our event loop). */
async function serveSimulator(): Promise<void> {
  const { loadConfig } = await import('../src/config.ts');
  const { SandboxRuntime } = await import('../src/payments/sandbox.ts');
  const { providerModule } = await import('../adapters/index.ts');
  const config = loadConfig(process.env);
  const seed = new SandboxRuntime(config).seed; // the same seed the gateway derives
  const start = providerModule('sandbox')?.startSimulator;
  if (!start) throw new Error('the sandbox provider has no simulator');
  const handle = await start({
    seed,
    latency_ms: config.sandboxLatencyMs,
    time_scale: config.sandboxTimeScale,
  });
  process.send?.({ ready: true, url: handle.url });
  const stop = () => void handle.close().then(() => process.exit(0));
  process.on('message', (m: { stop?: boolean }) => m.stop && stop());
  process.on('disconnect', stop);
}

async function serveBare(): Promise<void> {
  const { default: express } = await import('express');
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: POOL_MAX });
  await pool.query(
    `CREATE TABLE IF NOT EXISTS bench_bare (
       id bigserial PRIMARY KEY,
       idempotency_key text NOT NULL,
       body jsonb NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now())`,
  );
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.use(express.json());
  app.post('/bare', async (req, res) => {
    const { rows } = await pool.query<{ id: string; created_at: Date }>(
      'INSERT INTO bench_bare (idempotency_key, body) VALUES ($1, $2) RETURNING id, created_at',
      [req.get('Idempotency-Key') ?? '', req.body],
    );
    res.status(201).json({ id: rows[0].id, created_at: rows[0].created_at });
  });
  const server = app.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as net.AddressInfo;
    process.send?.({ ready: true, url: `http://127.0.0.1:${port}` });
  });
  server.keepAliveTimeout = 65_000;
  const stop = () => {
    server.close();
    server.closeAllConnections();
    void pool.end().then(() => process.exit(0));
  };
  process.on('message', (m: { stop?: boolean }) => m.stop && stop());
  process.on('disconnect', stop);
}

interface Child {
  kind: ChildKind;
  proc: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

async function startChild(kind: ChildKind, env: NodeJS.ProcessEnv): Promise<Child> {
  const execArgv = ['--import', 'tsx'];
  const profDir = process.env.BENCH_CPU_PROF;
  // One directory per server: the main thread and tsx's loader thread each write a profile.
  if (profDir) execArgv.push('--cpu-prof', '--cpu-prof-dir', join(profDir, kind));
  const proc = spawn(process.execPath, [...execArgv, fileURLToPath(import.meta.url)], {
    env: { ...process.env, ...env, [CHILD_ENV]: kind },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const url = await new Promise<string>((resolve, reject) => {
    proc.once('message', (m: { url: string }) => resolve(m.url));
    proc.once('exit', (code) => reject(new Error(`${kind} server exited with ${code} before it was ready`)));
  });
  return {
    kind,
    proc,
    url,
    async stop() {
      if (proc.exitCode === null) proc.send({ stop: true });
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

const TICK = 100; // USER_HZ: /proc times are in 1/100 s
/** The simulator's own process, when it has one: its CPU is a provider's, yet it runs on these cores. */
let simulatorPid = 0;

/** CPU seconds (user + system) a process has used so far. */
function processCpuS(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICK;
  } catch {
    return 0;
  }
}

/** CPU seconds used so far by each process of a server (PostgreSQL, Redis: shared with whatever else uses it). */
function serverCpuS(command: string): Map<number, number> {
  const used = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (comm.startsWith(command)) used.set(Number(entry), processCpuS(Number(entry)));
    } catch {
      // gone meanwhile
    }
  }
  return used;
}

/**
 * CPU seconds PostgreSQL used between two readings, process by process: a sum over all processes
 * would lose the whole past of a backend that exits meanwhile (the previous run's connections).
 */
function cpuSince(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, cpu] of after) sum += cpu - (before.get(pid) ?? 0);
  return sum;
}

/** Machine-wide busy and total CPU seconds so far (all cores). */
function machineCpuS(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = v[3] + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    return { busy: (total - idle) / TICK, total: total / TICK };
  } catch {
    return { busy: 0, total: 0 };
  }
}

interface Target {
  kind: ServerKind;
  child: Child;
  path: string;
  headers: Record<string, string>;
}

let sequence = 0;
const runId = randomBytes(3).toString('hex');

function nextBody(): string {
  sequence += 1;
  // Last two minor digits 00–50: the sandbox succeeds at once.
  return JSON.stringify({
    amount: { value: 1000 + (sequence % 51), currency: 'EUR' },
    reference: `B-${runId}-${sequence}`,
    mode: 'scan',
    payment_code: ALIPAY_CODE,
  });
}

async function load(target: Target, connections: number, durationS: number): Promise<autocannon.Result> {
  // Imported here, so the server children do not load the load generator.
  const { default: autocannon } = await import('autocannon');
  const instance = autocannon({
    url: target.child.url,
    connections,
    duration: durationS,
    requests: [
      {
        method: 'POST',
        path: target.path,
        setupRequest: (req) => ({
          ...req,
          headers: {
            ...target.headers,
            'content-type': 'application/json',
            'idempotency-key': `bench-${runId}-${++sequence}`,
          },
          body: nextBody(),
        }),
      },
    ],
  });
  return instance;
}

async function measure(target: Target, connections: number, durationS: number, warmupS: number) {
  if (warmupS > 0) await load(target, connections, warmupS);
  await new Promise((r) => setTimeout(r, 500));
  const loadavg1 = os.loadavg()[0];
  const server0 = processCpuS(target.child.proc.pid ?? 0);
  const simulator0 = simulatorPid ? processCpuS(simulatorPid) : 0;
  const loader0 = process.cpuUsage();
  const machine0 = machineCpuS();
  const postgres0 = serverCpuS('postgres');
  const redis0 = serverCpuS('redis-server');
  const started = process.hrtime.bigint();
  const result = await load(target, connections, durationS);
  const elapsedS = Number(process.hrtime.bigint() - started) / 1e9;
  const loader = process.cpuUsage(loader0);
  const machine1 = machineCpuS();
  const postgres1 = serverCpuS('postgres');
  const redis1 = serverCpuS('redis-server');
  const simulatorCores = simulatorPid ? (processCpuS(simulatorPid) - simulator0) / elapsedS : 0;
  const m: Measurement = {
    kind: target.kind,
    connections,
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    total: result.requests.total,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    serverCores: (processCpuS(target.child.proc.pid ?? 0) - server0) / elapsedS,
    loaderCores: (loader.user + loader.system) / 1e6 / elapsedS,
    postgresCores: cpuSince(postgres0, postgres1) / elapsedS, // backends that exit meanwhile are lost
    simulatorCores,
    redisCores: cpuSince(redis0, redis1) / elapsedS,
    machineCores: (machine1.busy - machine0.busy) / elapsedS,
    loadavg1,
  };
  if (m.non2xx > 0 || m.errors > 0) {
    console.error(
      `  ! ${target.kind} @${connections}: ${m.non2xx} non-2xx, ${m.errors} errors (${JSON.stringify(result.statusCodeStats)})`,
    );
  }
  return m;
}

async function api(url: string, key: string, method: string, path: string, body?: unknown) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, string>;
  if (!res.ok) throw new Error(`${method} ${path} → ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** A merchant with the sandbox provider and one terminal key (as test/helpers.ts setupMerchant). */
async function setupTerminal(url: string, adminKey: string): Promise<string> {
  const merchant = await api(url, adminKey, 'POST', '/v1/admin/merchants', {
    name: 'Bench Drugstore',
    settlement_currency: 'EUR',
    country: 'DE',
  });
  await api(url, merchant.secret_key, 'PUT', '/v1/providers/sandbox', {
    wallets: ['alipay', 'wechatpay', 'alipayplus'],
  });
  const terminal = await api(url, merchant.secret_key, 'POST', '/v1/terminals', {
    store_id: 'bench-01',
    terminal_id: 'till-1',
  });
  // One payment first, so the simulator is up before the clock starts.
  const res = await fetch(`${url}/v1/payments`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${terminal.terminal_key}`,
      'content-type': 'application/json',
      'idempotency-key': `bench-${runId}-setup`,
    },
    body: nextBody(),
  });
  const first = (await res.json()) as { status?: string };
  if (res.status !== 201 || first.status !== 'succeeded')
    throw new Error(`first payment: ${res.status} ${JSON.stringify(first)}`);
  return terminal.terminal_key;
}

function median(values: Measurement[]): Measurement {
  const sorted = [...values].sort((a, b) => a.rps - b.rps);
  return sorted[Math.floor(sorted.length / 2)];
}

const f0 = (n: number) => n.toFixed(0);
const f1 = (n: number) => n.toFixed(1);
const f2 = (n: number) => n.toFixed(2);

export function formatCheckout(result: CheckoutResult): string {
  const lines = [
    `checkout: POST /v1/payments (sandbox simulator: ${result.simulator}) vs bare express + 1 INSERT — ${result.durationS} s per run, ${result.date}, ${result.machine}`,
    '',
    '| conns | bare req/s | gateway req/s | ratio (≥ 0.5) | bare p50 | gateway p50 | bare p99 | gateway p99 | ratio (≤ 2) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const { connections, bare, gateway, candidate } of result.rows) {
    for (const [label, gw] of [
      [String(connections), gateway],
      [`${connections} candidate`, candidate],
    ] as const) {
      if (gw) lines.push(row(label, connections, bare, gw));
    }
  }
  if (result.candidateSrc) lines.push('', `candidate: the gateway built from ${result.candidateSrc}`);
  lines.push('');
  lines.push(
    `load during each run (cores busy of ${os.cpus().length}; 1-min load average before it; server CPU per request):`,
  );
  for (const { connections, bare, gateway, candidate } of result.rows) {
    for (const m of [bare, gateway, candidate]) {
      if (!m) continue;
      lines.push(
        `  ${m.kind.padEnd(9)} @${String(connections).padEnd(3)} server ${f2(m.serverCores)} (${f2((m.serverCores / m.rps) * 1000)} ms/req), postgres ${f2(m.postgresCores)} (${f2((m.postgresCores / m.rps) * 1000)} ms/req), ${m.kind !== 'bare' && simulatorPid ? `simulator ${f2(m.simulatorCores)} (${f2((m.simulatorCores / m.rps) * 1000)} ms/req), ` : ''}redis ${f2(m.redisCores)}, autocannon ${f2(m.loaderCores)}, whole machine ${f2(m.machineCores)}, loadavg ${f2(m.loadavg1)}; ${m.total} requests, ${m.non2xx} non-2xx, ${m.errors} errors`,
      );
    }
  }
  lines.push(
    `  payments stored: ${Object.entries(result.payments)
      .map(([s, n]) => `${s} ${n}`)
      .join(', ')}`,
  );
  return lines.join('\n');
}

function row(label: string, connections: number, bare: Measurement, gateway: Measurement): string {
  const tput = gateway.rps / bare.rps;
  const p99 = gateway.p99 / bare.p99;
  const at50 = connections === 50;
  return `| ${label} | ${f0(bare.rps)} | ${f0(gateway.rps)} | ${f2(tput)}${at50 ? (tput >= 0.5 ? ' ✓' : ' ✗') : ''} | ${f1(bare.p50)} ms | ${f1(gateway.p50)} ms | ${f1(bare.p99)} ms | ${f1(gateway.p99)} ms | ${f2(p99)}${at50 ? (p99 <= 2 ? ' ✓' : ' ✗') : ''} |`;
}

export async function runCheckout(): Promise<CheckoutResult> {
  const durationS = Number(process.env.BENCH_DURATION_S ?? 10);
  const warmupS = Number(process.env.BENCH_WARMUP_S ?? 3);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 1);
  const connectionsList = (process.env.BENCH_CONNECTIONS ?? '50,200').split(',').map(Number);
  const id = randomBytes(5).toString('hex');
  const dbName = `tb_bench_${id}`;
  const adminKey = `adm_bench_${randomBytes(12).toString('hex')}`;
  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl(dbName),
    REDIS_URL,
    REDIS_PREFIX: `tbbench:${id}`,
    ADMIN_API_KEY: adminKey,
    TILLBRIDGE_MASTER_KEY: randomBytes(32).toString('base64'),
    TILLBRIDGE_MASTER_KEY_FILE: join(mkdtempSync(join(os.tmpdir(), 'tb-bench-')), 'master.key'),
    PORT: String(await freePort()),
    RATE_LIMIT_PER_KEY_RPS: '100000000',
    SANDBOX_LATENCY_MS: '0',
    LOG_LEVEL: 'silent',
  };
  const children: Child[] = [];
  try {
    // By default the provider simulator runs in a process of its own, as a real provider would;
    // BENCH_SIMULATOR=inprocess leaves it inside the gateway (the gateway's default in sandbox).
    const separateSimulator = process.env.BENCH_SIMULATOR !== 'inprocess';
    if (separateSimulator) {
      const simulator = await startChild('simulator', env);
      children.push(simulator);
      simulatorPid = simulator.proc.pid ?? 0;
      env.SANDBOX_SIMULATOR_URL_SANDBOX = simulator.url;
    }
    // The gateway creates and migrates the database; the bare server then adds its own table.
    const gateway = await startChild('gateway', env);
    children.push(gateway);
    const bare = await startChild('bare', env);
    children.push(bare);
    const terminalKey = await setupTerminal(gateway.url, adminKey);
    const compareSrc = process.env.BENCH_COMPARE_SRC ? resolve(process.env.BENCH_COMPARE_SRC) : undefined;
    let candidate: Child | undefined;
    if (compareSrc) {
      candidate = await startChild('candidate', {
        ...env,
        DATABASE_URL: databaseUrl(`${dbName}_c`),
        REDIS_PREFIX: `${env.REDIS_PREFIX}c`,
        PORT: String(await freePort()),
        BENCH_SRC: compareSrc,
      });
      children.push(candidate);
    }
    const candidateKey = candidate ? await setupTerminal(candidate.url, adminKey) : '';
    const targets: Record<ServerKind, Target> = {
      candidate: {
        kind: 'candidate',
        child: candidate ?? gateway,
        path: '/v1/payments',
        headers: { authorization: `Bearer ${candidateKey}` },
      },
      bare: { kind: 'bare', child: bare, path: '/bare', headers: {} },
      gateway: {
        kind: 'gateway',
        child: gateway,
        path: '/v1/payments',
        headers: { authorization: `Bearer ${terminalKey}` },
      },
    };
    const rows: CheckoutResult['rows'] = [];
    for (const connections of connectionsList) {
      const seen: Record<ServerKind, Measurement[]> = { bare: [], gateway: [], candidate: [] };
      for (let round = 0; round < rounds; round++) {
        // Alternate which goes first, so a burst of outside load does not always hit the same one.
        const kinds: ServerKind[] = candidate ? ['bare', 'gateway', 'candidate'] : ['bare', 'gateway'];
        const order = round % 2 === 0 ? kinds : [...kinds].reverse();
        for (const kind of order) {
          process.stderr.write(`  checkout: ${kind} @${connections} connections, round ${round + 1}…\n`);
          seen[kind].push(await measure(targets[kind], connections, durationS, warmupS));
        }
      }
      rows.push({
        connections,
        bare: median(seen.bare),
        gateway: median(seen.gateway),
        candidate: candidate ? median(seen.candidate) : undefined,
      });
    }
    await new Promise((r) => setTimeout(r, 2000)); // let the last in-flight payments settle
    const client = new pg.Client({ connectionString: env.DATABASE_URL });
    await client.connect();
    const { rows: byStatus } = await client.query<{ status: string; n: number }>(
      'SELECT status, count(*)::int AS n FROM payments GROUP BY status ORDER BY status',
    );
    await client.end();
    return {
      date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
      machine: `${os.cpus().length}× ${os.cpus()[0]?.model.trim()}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
      durationS,
      candidateSrc: compareSrc,
      simulator: separateSimulator ? 'own process' : 'inside the gateway',
      rows,
      payments: Object.fromEntries(byStatus.map((r) => [r.status, r.n])),
    };
  } finally {
    await Promise.all(children.map((c) => c.stop().catch(() => {})));
    await dropRedisKeys(env.REDIS_PREFIX).catch(() => {});
    for (const name of [dbName, `${dbName}_c`]) {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).catch((error) =>
        console.error(`could not drop ${name}: ${(error as Error).message}`),
      );
    }
  }
}

export async function run(): Promise<void> {
  console.log(formatCheckout(await runCheckout()));
}

const childKind = process.env[CHILD_ENV];
if (childKind === 'gateway' || childKind === 'candidate') await serveGateway();
else if (childKind === 'simulator') await serveSimulator();
else if (childKind === 'bare') await serveBare();
else if (process.argv[1] === fileURLToPath(import.meta.url)) await run();
