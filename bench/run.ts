/**
 * `npm run bench [-- name...]`: runs the benchmarks in bench/ one after another (checkout,
 * signing, and reconcile when bench/reconcile.ts exists), or only those named.
 * Each module exports `run()` (or a default function) that prints its own table, or runs when
 * imported. Arguments that are not benchmark names are passed on (`npm run bench -- reconcile 100000`).
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const ALL = ['checkout', 'signing', 'wakeup', 'reconcile'];

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const asked = args.filter((a) => ALL.includes(a));
  // Whatever is not a benchmark name is left for the benchmarks (e.g. `reconcile 100000`).
  process.argv = [process.argv[0], process.argv[1], ...args.filter((a) => !ALL.includes(a))];
  const unknown = process.argv.slice(2).filter((a) => /^[a-z]+$/.test(a));
  if (unknown.length > 0) {
    console.error(`unknown benchmark ${unknown.join(', ')}; known: ${ALL.join(', ')}`);
    process.exit(2);
  }
  const names = (asked.length > 0 ? asked : ALL).filter((name) => {
    const present = existsSync(join(HERE, `${name}.ts`));
    if (!present && asked.includes(name)) {
      console.error(`bench/${name}.ts does not exist`);
      process.exitCode = 2;
    }
    return present;
  });
  const [l1, l5] = os.loadavg();
  console.log(
    `tillbridge bench — ${new Date().toISOString()} — ${os.cpus().length}× ${os.cpus()[0]?.model.trim()}, node ${process.version}, loadavg ${l1.toFixed(2)}/${l5.toFixed(2)}\n`,
  );
  for (const name of names) {
    const mod = (await import(pathToFileURL(join(HERE, `${name}.ts`)).href)) as {
      run?: () => Promise<void> | void;
      default?: unknown;
    };
    const entry = typeof mod.run === 'function' ? mod.run : mod.default;
    if (typeof entry === 'function') await (entry as () => Promise<void> | void)();
    console.log('');
  }
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
