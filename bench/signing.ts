/**
 * Signing benchmark (DESIGN.md "Performance targets"): RSA-2048 PKCS#1 v1.5 SHA-256 signatures with
 * node:crypto (a KeyObject) against node-forge, side by side in alternating slices, on the same key
 * and message. Target: node:crypto at least 5× node-forge's signatures per second.
 *
 * Knobs: BENCH_SIGNING_S (total seconds per implementation, default 3).
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import forge from 'node-forge';

export interface SigningResult {
  date: string;
  machine: string;
  nodeOps: number;
  forgeOps: number;
  ratio: number;
  loadavg1: number;
}

/** A request body of the size an Antom payment request has. */
const MESSAGE = `POST /ams/api/v1/payments/pay\nclient.id.2024.01.01T00:00:00Z.${JSON.stringify({
  productCode: 'IN_STORE_PAYMENT',
  paymentRequestId: 'pay_0123456789abcdef',
  order: { orderAmount: { currency: 'EUR', value: '1999' }, orderDescription: 'R-0042-000123' },
  paymentAmount: { currency: 'EUR', value: '1999' },
  paymentMethod: { paymentMethodType: 'CONNECT_WALLET', paymentMethodId: '286714335246118790' },
  paymentFactor: { inStorePaymentScenario: 'PaymentCode' },
})}`;

/** Runs `fn` in slices of `sliceMs` until `totalMs` has been spent in it; returns ops/s. */
function timeSlice(fn: () => void, sliceMs: number): { ops: number; ms: number } {
  let ops = 0;
  const start = performance.now();
  let now = start;
  while (now - start < sliceMs) {
    fn();
    ops += 1;
    now = performance.now();
  }
  return { ops, ms: now - start };
}

export function runSigning(): SigningResult {
  const totalS = Number(process.env.BENCH_SIGNING_S ?? 3);
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(pem);
  const data = Buffer.from(MESSAGE, 'utf8');

  const viaNode = () => sign('sha256', data, privateKey);
  const viaForge = () => {
    const md = forge.md.sha256.create();
    md.update(MESSAGE, 'utf8');
    return Buffer.from(forgeKey.sign(md), 'binary');
  };
  // PKCS#1 v1.5 is deterministic: both must produce the very same signature.
  if (!viaNode().equals(viaForge())) throw new Error('node:crypto and node-forge signatures differ');

  const loadavg1 = os.loadavg()[0];
  timeSlice(viaNode, 200); // warm-up
  timeSlice(viaForge, 200);
  const slices = 6;
  const sliceMs = (totalS * 1000) / slices;
  const totals = { node: { ops: 0, ms: 0 }, forge: { ops: 0, ms: 0 } };
  for (let i = 0; i < slices; i++) {
    for (const [name, fn] of [
      ['node', viaNode],
      ['forge', viaForge],
    ] as const) {
      const { ops, ms } = timeSlice(fn, sliceMs);
      totals[name].ops += ops;
      totals[name].ms += ms;
    }
  }
  const nodeOps = (totals.node.ops / totals.node.ms) * 1000;
  const forgeOps = (totals.forge.ops / totals.forge.ms) * 1000;
  return {
    date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    machine: `${os.cpus().length}× ${os.cpus()[0]?.model.trim()}, node ${process.version}`,
    nodeOps,
    forgeOps,
    ratio: nodeOps / forgeOps,
    loadavg1,
  };
}

export function formatSigning(r: SigningResult): string {
  return [
    `signing: RSA-2048 SHA-256 (PKCS#1 v1.5), one thread, ${r.date}, loadavg ${r.loadavg1.toFixed(2)} before`,
    '',
    '| implementation | signatures/s | ms/signature |',
    '| --- | ---: | ---: |',
    `| node:crypto | ${r.nodeOps.toFixed(0)} | ${(1000 / r.nodeOps).toFixed(2)} |`,
    `| node-forge | ${r.forgeOps.toFixed(0)} | ${(1000 / r.forgeOps).toFixed(2)} |`,
    `| ratio (≥ 5) | ${r.ratio.toFixed(1)}× ${r.ratio >= 5 ? '✓' : '✗'} | |`,
  ].join('\n');
}

export async function run(): Promise<void> {
  process.stderr.write('  signing: node:crypto vs node-forge…\n');
  console.log(formatSigning(runSigning()));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await run();
