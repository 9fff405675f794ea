/** Provider accounts: stored encrypted, decrypted and loaded into their adapter once, then cached. */
import type { AccountContext, ProviderModule, Wallet } from '../../adapters/contract.ts';
import { providerModule } from '../../adapters/index.ts';
import type { Config } from '../config.ts';
import type { Db } from '../ledger/db.ts';
import { tryOpen } from '../secrets.ts';
import type { SandboxRuntime } from './sandbox.ts';

export interface ProviderAccountRow {
  id: string;
  merchant_id: string;
  provider: string;
  wallets: Wallet[];
  currencies: string[] | null;
  priority: number;
  sandbox: boolean;
  credentials: Buffer;
  public_view: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
  deleted_at: Date | null;
}

/** An account row as ACCOUNT_ROWS reads it, with its merchant's settlement currency and name. */
type AccountWithMerchant = ProviderAccountRow & {
  merchant_settlement_currency: string;
  merchant_name: string;
};

const ACCOUNT_ROWS = `SELECT a.*, m.settlement_currency AS merchant_settlement_currency, m.name AS merchant_name
  FROM provider_accounts a JOIN merchants m ON m.id = a.merchant_id`;

export interface LoadedAccount {
  row: ProviderAccountRow;
  module: ProviderModule;
  context: AccountContext<unknown>;
}

/** How long a merchant's routing table is reused before it is read again. */
const ROUTE_CACHE_MS = 5000;

export function credentialsContext(accountId: string): string {
  return `provider-account:${accountId}`;
}

/** What a webhook endpoint's signing secret is sealed under, beside its id. */
export function webhookSecretContext(endpointId: string): string {
  return `webhook-endpoint:${endpointId}`;
}

export function webhookPath(provider: string, accountId: string): string {
  return `/webhooks/${provider}/${accountId}`;
}

/** The master key in use is not the one the account's credentials were sealed with. */
export class CredentialsUnreadableError extends Error {
  constructor(readonly accountId: string) {
    super(
      `the credentials of provider account ${accountId} do not open with this gateway's master key: they were stored under another`,
    );
  }
}

export class ProviderAccounts {
  private readonly cache = new Map<string, { updatedAt: number; loaded: LoadedAccount }>();
  private readonly routes = new Map<string, { until: number; accounts: LoadedAccount[] }>();
  private readonly byId = new Map<string, { until: number; account: LoadedAccount }>();

  constructor(
    private readonly db: Db,
    private readonly config: Config,
    private readonly sandbox: SandboxRuntime,
  ) {}

  /**
   * Loads an account, including a deleted one: payments made through it must still resolve.
   * Reused for ROUTE_CACHE_MS, like the routing table: callbacks and jobs ask for it constantly.
   */
  async get(accountId: string): Promise<LoadedAccount | undefined> {
    const hit = this.byId.get(accountId);
    if (hit && hit.until > Date.now()) return hit.account;
    const { rows } = await this.db.query<AccountWithMerchant>(`${ACCOUNT_ROWS} WHERE a.id = $1`, [accountId]);
    const account = rows[0] ? this.load(rows[0]) : undefined;
    if (this.byId.size > 10_000) this.byId.clear();
    if (account) this.byId.set(accountId, { until: Date.now() + ROUTE_CACHE_MS, account });
    return account;
  }

  load(row: AccountWithMerchant): LoadedAccount {
    const cached = this.cache.get(row.id);
    if (cached && cached.updatedAt === row.updated_at.getTime()) {
      cached.loaded.row = row;
      return cached.loaded;
    }
    const module = providerModule(row.provider);
    if (!module) throw new Error(`account ${row.id} names unknown provider ${row.provider}`);
    const sealedText = tryOpen(this.config.masterKey, row.credentials, credentialsContext(row.id));
    if (sealedText === undefined) throw new CredentialsUnreadableError(row.id);
    const stored = JSON.parse(sealedText);
    const notifyUrl = `${this.config.publicBaseUrl}${webhookPath(row.provider, row.id)}`;
    const loaded: LoadedAccount = {
      row,
      module,
      context: {
        account_id: row.id,
        merchant_id: row.merchant_id,
        credentials: module.adapter.load(stored, this.sandbox.env(row.provider), {
          publicOnly: this.config.production,
        }),
        sandbox: row.sandbox,
        notify_url: notifyUrl,
        // What the provider signs: the whole path it calls, with PUBLIC_BASE_URL's own path in
        // front of ours when a proxy strips it before us (alipay.md §3.8).
        notify_path: new URL(notifyUrl).pathname,
        merchant_settlement_currency: row.merchant_settlement_currency,
        merchant_name: row.merchant_name,
      },
    };
    this.cache.set(row.id, { updatedAt: row.updated_at.getTime(), loaded });
    return loaded;
  }

  /**
   * The merchant's live accounts that serve this wallet, currency and mode, best first. Cached
   * briefly: it is asked on every payment, and account changes are rare.
   */
  async candidates(
    merchantId: string,
    wallet: Wallet,
    currency: string,
    mode: 'scan' | 'qr',
  ): Promise<LoadedAccount[]> {
    const key = `${merchantId}|${wallet}|${currency}|${mode}`;
    const hit = this.routes.get(key);
    if (hit && hit.until > Date.now()) return hit.accounts;
    const { rows } = await this.db.query<AccountWithMerchant>(
      `${ACCOUNT_ROWS}
        WHERE a.merchant_id = $1 AND a.deleted_at IS NULL AND $2 = ANY(a.wallets)
          AND (a.currencies IS NULL OR $3 = ANY(a.currencies))
        ORDER BY a.priority DESC, a.created_at`,
      [merchantId, wallet, currency],
    );
    let unreadable: string | undefined;
    const accounts = rows
      // Accounts on a simulator, left from a run before NODE_ENV=production, take no sale there.
      .filter((row) => !(this.config.production && row.sandbox))
      .filter((row) => providerModule(row.provider)?.adapter.modes.includes(mode) ?? true)
      // One sealed under a lost master key takes no sale (start-up said so), but the others may.
      .flatMap((row) => {
        try {
          return [this.load(row)];
        } catch (error) {
          if (!(error instanceof CredentialsUnreadableError)) throw error;
          unreadable ??= row.id;
          return [];
        }
      });
    // When that leaves none, the operator has a key to restore (503), not the till a mistake (422).
    if (accounts.length === 0 && unreadable) throw new CredentialsUnreadableError(unreadable);
    if (this.routes.size > 10_000) this.routes.clear();
    this.routes.set(key, { until: Date.now() + ROUTE_CACHE_MS, accounts });
    return accounts;
  }

  /**
   * What no longer opens with this master key: provider accounts' credentials and webhook
   * endpoints' secrets sealed under another one (a lost `.tillbridge/master.key`, a new
   * TILLBRIDGE_MASTER_KEY on an old database).
   */
  async unreadable(): Promise<string[]> {
    // Production never uses an account on a simulator left from a sandbox run (candidates): its
    // key, the sandbox's generated one, is not wanted.
    const { rows } = await this.db.query<{ id: string; sealed: Buffer; endpoint: boolean }>(
      `SELECT id, credentials AS sealed, false AS endpoint FROM provider_accounts
        WHERE deleted_at IS NULL AND NOT (sandbox AND $1)
       UNION ALL
       SELECT id, secret_sealed, true FROM webhook_endpoints WHERE deleted_at IS NULL`,
      [this.config.production],
    );
    const contextOf = (r: { id: string; endpoint: boolean }) =>
      r.endpoint ? webhookSecretContext(r.id) : credentialsContext(r.id);
    return rows
      .filter((r) => tryOpen(this.config.masterKey, r.sealed, contextOf(r)) === undefined)
      .map((r) => r.id);
  }

  /**
   * After `PUT`/`DELETE /v1/providers/...`, here or announced by another process (without Redis,
   * other processes see the change within ROUTE_CACHE_MS).
   */
  forgetRoutes(merchantId: string): void {
    for (const key of this.routes.keys()) if (key.startsWith(`${merchantId}|`)) this.routes.delete(key);
    for (const [id, { account }] of this.byId)
      if (account.row.merchant_id === merchantId) this.byId.delete(id);
  }
}
