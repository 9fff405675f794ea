import { ConfigError, loadConfig } from './config.ts';
import { startGateway } from './runtime.ts';

/** The sandbox walk-through. A key the operator set is not printed: logs travel further than a terminal. */
function walkthrough(base: string, adminKey: string, generated: boolean): string {
  return `
tillbridge is running at ${base} (sandbox: payments go to local simulators).
Admin key: ${generated ? `${adminKey} (a new one at each start; set ADMIN_API_KEY to keep one)` : 'the one in ADMIN_API_KEY (not printed)'}

Try it (copy-paste, needs curl and jq):

  ADMIN=${generated ? adminKey : '"$ADMIN_API_KEY"   # export it in this shell first'}
  SK=$(curl -s -X POST ${base}/v1/admin/merchants -H "Authorization: Bearer $ADMIN" \\
        -H 'Content-Type: application/json' \\
        -d '{"name":"Demo Drugstore","settlement_currency":"EUR","country":"DE"}' | jq -r .secret_key)
  curl -s -w '\\n' -X PUT ${base}/v1/providers/sandbox -H "Authorization: Bearer $SK" \\
        -H 'Content-Type: application/json' -d '{"wallets":["alipay","wechatpay","alipayplus"]}'
  TK=$(curl -s -X POST ${base}/v1/terminals -H "Authorization: Bearer $SK" \\
        -H 'Content-Type: application/json' \\
        -d '{"store_id":"berlin-01","terminal_id":"till-3","can_refund":true}' | jq -r .terminal_key)
  curl -s -w '\\n' -X POST ${base}/v1/payments -H "Authorization: Bearer $TK" \\
        -H 'Content-Type: application/json' -H "Idempotency-Key: $(date +%s%N)" \\
        -d '{"amount":{"value":1999,"currency":"EUR"},"reference":"R-0001","mode":"scan","payment_code":"286714335246118790"}'

Amounts ending in 51..57 play the other sandbox outcomes (declined, confirm on the phone, timeout, ...).
`;
}

async function main(): Promise<void> {
  const config = loadConfig();
  const gateway = await startGateway(config);
  const { log } = gateway.ctx;
  log.info({ role: config.role, url: gateway.url, production: config.production }, 'tillbridge started');
  // A worker that sends a sale itself (a permitted resend) hands the provider its callback address:
  // its own, which serves no webhooks, unless told the api's.
  if (config.role === 'worker' && !process.env.PUBLIC_BASE_URL)
    log.warn(
      { public_base_url: config.publicBaseUrl },
      "PUBLIC_BASE_URL is not set: providers would be told to call this worker back, which serves no webhooks; set it to the api's address",
    );
  if (!config.production && config.role !== 'worker') {
    // The address really listened on (PORT=0 picks one), unless providers are told another.
    const base = process.env.PUBLIC_BASE_URL ? config.publicBaseUrl : gateway.url;
    process.stdout.write(walkthrough(base, config.adminApiKey, config.adminKeyGenerated));
  } else if (config.adminKeyGenerated && config.role !== 'worker') {
    log.info('ADMIN_API_KEY not set: a key was generated for this run');
  }
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: no new requests, finishing in-flight work');
    await gateway.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((error) => {
  if (error instanceof ConfigError) {
    process.stderr.write(`tillbridge: configuration error: ${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`tillbridge: failed to start: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
