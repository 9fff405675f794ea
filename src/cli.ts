/** npm run cli -- migrate | create-merchant <name> <currency> <country> | create-terminal <merchant_id> <store_id> <terminal_id> [--can-refund] */
import type { z } from 'zod';
import { ConfigError, databaseUrlFrom } from './config.ts';
import { ApiError } from './errors.ts';
import { createMerchant, createTerminal } from './http/routes/setup.ts';
import { createMerchantSchema, createTerminalSchema } from './http/schemas.ts';
import { parse } from './http/validate.ts';
import { asDatabaseConfigError, createPool, ensureDatabase, migrate } from './ledger/db.ts';

const USAGE = `usage:
  npm run cli -- migrate
  npm run cli -- create-merchant <name> <settlement_currency> <country>
  npm run cli -- create-terminal <merchant_id> <store_id> <terminal_id> [--can-refund]`;

/** The positional arguments and flags each command takes. */
const COMMANDS: Record<string, { positional: number; flags: string[] }> = {
  migrate: { positional: 0, flags: [] },
  'create-merchant': { positional: 3, flags: [] },
  'create-terminal': { positional: 3, flags: ['--can-refund'] },
};

/** Arguments that do not fit the command: a usage error (exit 2), before any database work. */
function checkArguments(command: string | undefined, args: string[]): string | undefined {
  const spec = command === undefined ? undefined : COMMANDS[command];
  if (!spec) {
    if (command === '--help' || command === 'help') return '';
    return command === undefined ? 'a command is required' : `unknown command ${command}`;
  }
  const flags = args.filter((a) => a.startsWith('--'));
  const unknown = flags.find((f) => !spec.flags.includes(f));
  if (unknown) return `${command} takes no option ${unknown}`;
  const positional = args.length - flags.length;
  if (positional !== spec.positional)
    return `${command} takes ${spec.positional} argument(s), got ${positional}`;
  return undefined;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const misuse = checkArguments(command, args);
  if (misuse !== undefined) {
    if (misuse) console.error(`error: ${misuse}`);
    console.error(USAGE);
    return misuse ? 2 : 0;
  }
  // Flags may stand anywhere; the positional arguments keep their order.
  const positional = args.filter((a) => !a.startsWith('--'));
  // Checked before any database work, as the argument count is.
  const merchant =
    command === 'create-merchant'
      ? valid(createMerchantSchema, {
          name: positional[0],
          settlement_currency: positional[1],
          country: positional[2],
        })
      : undefined;
  const terminal =
    command === 'create-terminal'
      ? valid(createTerminalSchema, {
          store_id: positional[1],
          terminal_id: positional[2],
          can_refund: args.includes('--can-refund'),
        })
      : undefined;
  const databaseUrl = databaseUrlFrom();
  const db = createPool(databaseUrl, { max: 2 });
  try {
    const applied = await ensureDatabase(databaseUrl)
      .then(() => migrate(db))
      .catch((error) => {
        throw asDatabaseConfigError(error, databaseUrl);
      });
    const ctx = { db };
    if (merchant) console.log(JSON.stringify(await createMerchant(ctx, merchant), null, 2));
    else if (terminal) {
      const merchantId = positional[0];
      const exists = await db.query('SELECT 1 FROM merchants WHERE id = $1', [merchantId]);
      if (exists.rowCount === 0) throw new UsageError(`no merchant ${merchantId}`);
      console.log(JSON.stringify(await createTerminal(ctx, merchantId, terminal), null, 2));
    } else console.log(applied.length ? `applied: ${applied.join(', ')}` : 'database is up to date');
    return 0;
  } finally {
    await db.end();
  }
}

/** An argument the command cannot take: said, with exit code 2, as a wrong number of them is. */
class UsageError extends Error {}

/** The schema's output, or a usage error naming the first bad argument, in the API's words. */
function valid<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  try {
    return parse(schema, input);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    throw new UsageError(error.message);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`error: ${(error as Error).message}`);
    // As the gateway does: 2 for what the operator must change (arguments, DATABASE_URL), a
    // terminal that already exists among them.
    const operators =
      error instanceof UsageError || error instanceof ConfigError || error instanceof ApiError;
    process.exit(operators ? 2 : 1);
  },
);
