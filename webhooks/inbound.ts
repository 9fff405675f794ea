/**
 * Inbound provider callbacks: raw body → the adapter verifies and parses → deduplicated →
 * applied as a forward-only state change → answered in the provider's own form.
 * A callback that fails verification changes nothing.
 */
import express, { type Request, type Response, Router } from 'express';
import type { NotificationEvent, ProviderAck } from '../adapters/contract.ts';
import { providerModule } from '../adapters/index.ts';
import type { Context } from '../src/context.ts';
import { isDataException, isUnreadableBody } from '../src/errors.ts';
import { hasPrefix } from '../src/ids.ts';
import { prepared } from '../src/ledger/db.ts';
import type { PaymentRow } from '../src/ledger/payments.ts';
import type { LoadedAccount } from '../src/payments/accounts.ts';
import { applyRefundOutcome } from '../src/payments/refunds.ts';
import { applyOutcome } from '../src/payments/service.ts';

function answer(res: Response, ack: ProviderAck): void {
  res.status(ack.status);
  if (ack.headers) res.set(ack.headers);
  if (ack.error) res.json({ error: { ...ack.error, request_id: res.req.requestId } });
  else if (ack.body === undefined) res.end();
  else res.type(ack.headers?.['content-type'] ?? 'application/json').send(ack.body);
}

async function apply(ctx: Context, account: LoadedAccount, event: NotificationEvent): Promise<void> {
  if (event.kind === 'ignored') return;
  if (event.kind === 'payment') {
    const { rows } = await ctx.db.query<PaymentRow>(
      'SELECT * FROM payments WHERE provider_request_id = $1 AND provider_account_id = $2',
      [event.provider_request_id, account.row.id],
    );
    if (!rows[0]) {
      // Acknowledged anyway: refusing only brings retries (PROVIDERS.md rule 5).
      ctx.log.warn(
        { account: account.row.id, provider_request_id: event.provider_request_id },
        'notification for an unknown payment',
      );
      return;
    }
    await applyOutcome(ctx, rows[0], account, event.outcome, 'notification');
    return;
  }
  const { rows } = await ctx.db.query<{ id: string }>(
    `SELECT r.id FROM refunds r JOIN payments p ON p.id = r.payment_id
      WHERE r.provider_request_id = $1 AND p.provider_account_id = $2`,
    [event.provider_request_id, account.row.id],
  );
  if (!rows[0]) {
    ctx.log.warn(
      { account: account.row.id, provider_request_id: event.provider_request_id },
      'notification for an unknown refund',
    );
    return;
  }
  await applyRefundOutcome(ctx, rows[0].id, event.outcome, 'notification');
}

/** Notifications are a few kB (Antom's, the sandbox's); anything near this is not one. */
const NOTIFICATION_LIMIT = '256kb';
/** A notification's body arrives at once; one still coming after this is dropped, connection and all. */
const NOTIFICATION_BODY_MS = 10_000;

export function inboundWebhooksRouter(ctx: Context): Router {
  const router = Router();
  // Signatures are over the exact bytes received: no JSON parser may touch these bodies.
  router.post(
    '/webhooks/:provider/:account',
    // The account first, and the body only for one that exists, within a deadline: anyone may call
    // this URL, and a body read for nobody (or trickled in) would hold memory for nothing.
    async (req: Request, res: Response, next: (error?: unknown) => void) => {
      const provider = String(req.params.provider);
      const accountId = String(req.params.account);
      const account = hasPrefix(accountId, 'pva') ? await ctx.accounts.get(accountId) : undefined;
      if (!account || account.row.provider !== provider) {
        const module = providerModule(provider);
        if (module) answer(res, module.adapter.notificationRefusal(404, 'no such provider account'));
        else
          res.status(404).json({
            error: {
              type: 'not_found',
              code: 'resource_missing',
              message: 'no such provider account',
              request_id: req.requestId,
            },
          });
        return;
      }
      res.locals.account = account;
      const deadline = setTimeout(() => req.destroy(), NOTIFICATION_BODY_MS);
      req.once('end', () => clearTimeout(deadline)).once('close', () => clearTimeout(deadline));
      next();
    },
    express.raw({ type: () => true, limit: NOTIFICATION_LIMIT }),
    async (req: Request, res: Response) => {
      const account = res.locals.account as LoadedAccount;
      const { provider, id: accountId } = account.row;
      const result = await account.module.adapter.handleNotification(account.context, {
        method: req.method,
        path: req.originalUrl.split('?')[0],
        headers: req.headers,
        raw_body: Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0),
        received_at: new Date(),
      });
      if (!result.ok) {
        ctx.log.warn(
          { request_id: req.requestId, provider, account: accountId, reason: result.reason },
          'rejected provider notification',
        );
        answer(res, result.ack);
        return;
      }
      const key = [account.row.id, result.event.dedupe_key];
      const seen = await ctx.db.query(
        prepared('SELECT 1 FROM inbound_notifications WHERE account_id = $1 AND dedupe_key = $2', key),
      );
      if (seen.rowCount) {
        answer(res, result.ack);
        return;
      }
      // Applied first (a forward-only compare-and-set, harmless when a twin races it), marked after:
      // the till is woken one commit sooner, and a failed apply leaves no mark, so the retry applies.
      await apply(ctx, account, result.event);
      await ctx.db.query(
        prepared(
          `INSERT INTO inbound_notifications (account_id, dedupe_key, provider, kind) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING`,
          [...key, provider, result.event.kind],
        ),
      );
      answer(res, result.ack);
    },
  );
  // Whatever failed around the adapter is answered in the provider's form too: a body too large or
  // not decodable, a value the ledger refuses (a NUL byte) are the sender's fault; anything else is
  // ours, and a 5xx tells the provider to send the notification again.
  router.use(
    '/webhooks/:provider/:account',
    (error: unknown, req: Request, res: Response, next: (error: unknown) => void) => {
      const module = providerModule(String(req.params.provider));
      if (!module || res.headersSent) return next(error);
      const unreadable = isUnreadableBody(error);
      if (unreadable || isDataException(error)) {
        const reason = unreadable ? (error as Error).message : 'it holds a value that cannot be stored';
        // The sender's fault, and anyone may send: its reason, not our stack, once a request.
        ctx.log.warn(
          { request_id: req.requestId, provider: req.params.provider, reason },
          'unreadable provider notification',
        );
        answer(res, module.adapter.notificationRefusal(400, `unreadable notification: ${reason}`));
        return;
      }
      ctx.log.error(
        { err: error, request_id: req.requestId, provider: req.params.provider },
        'provider notification failed',
      );
      answer(
        res,
        module.adapter.notificationRefusal(500, 'the notification could not be processed; send it again'),
      );
    },
  );
  return router;
}
