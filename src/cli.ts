/** npm run cli -- migrate | create-merchant <name> <currency> <country> | create-terminal <merchant_id> <store_id> <terminal_id> [--can-refund] */
import { loadConfig } from './config.ts';
import type { Context } from './context.ts';
import { createMerchant, createTerminal } from './http/routes/setup.ts';
import { createMerchantSchema, createTerminalSchema } from './http/schemas.ts';
import { createPool, ensureDatabase, migrate } from './ledger/db.ts';

const USAGE = `usage:
  npm run cli -- migrate
  npm run cli -- create-merchant <name> <settlement_currency> <country>
  npm run cli -- create-terminal <merchant_id> <store_id> <terminal_id> [--can-refund]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const config = loadConfig();
  await ensureDatabase(config.databaseUrl);
  const db = createPool(config.databaseUrl, 2);
  try {
    const applied = await migrate(db);
    const ctx = { db, config } as Pick<Context, 'db' | 'config'> as Context;
    switch (command) {
      case 'migrate':
        console.log(applied.length ? `applied: ${applied.join(', ')}` : 'database is up to date');
        return 0;
      case 'create-merchant': {
        const input = createMerchantSchema.parse({
          name: args[0],
          settlement_currency: args[1],
          country: args[2],
        });
        console.log(JSON.stringify(await createMerchant(ctx, input), null, 2));
        return 0;
      }
      case 'create-terminal': {
        const [merchantId, storeId, terminalId] = args;
        const input = createTerminalSchema.parse({
          store_id: storeId,
          terminal_id: terminalId,
          can_refund: args.includes('--can-refund'),
        });
        const exists = await db.query('SELECT 1 FROM merchants WHERE id = $1', [merchantId]);
        if (exists.rowCount === 0) throw new Error(`no merchant ${merchantId}`);
        console.log(JSON.stringify(await createTerminal(ctx, merchantId, input), null, 2));
        return 0;
      }
      default:
        console.error(USAGE);
        return 2;
    }
  } finally {
    await db.end();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`error: ${(error as Error).message}`);
    process.exit(1);
  },
);
