/**
 * GET /dashboard: the merchant's settlement report in a browser.
 *
 * A browser navigation cannot send `Authorization: Bearer`, and putting a secret key in a URL
 * would leak it into logs and history. So the page itself holds no data and needs no auth: it
 * asks for the secret key, keeps it in sessionStorage (gone when the tab closes), and calls the
 * JSON API with the header like any other client. A strict Content-Security-Policy allows only
 * this page's own script, so injected markup cannot run code that reads the key.
 */
import { Router } from 'express';
import { DASHBOARD_HTML, DASHBOARD_JS } from './assets.ts';

const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
};

export function dashboardRouter(): Router {
  const router = Router();
  router.get('/dashboard', (_req, res) => {
    res.set(SECURITY_HEADERS).type('html').send(DASHBOARD_HTML);
  });
  router.get('/dashboard/app.js', (_req, res) => {
    res.set(SECURITY_HEADERS).type('application/javascript').send(DASHBOARD_JS);
  });
  return router;
}
