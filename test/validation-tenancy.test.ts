import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ALIPAY_CODE,
  createPayment,
  createRefund,
  freePort,
  idempotencyKey,
  type Merchant,
  qrPayment,
  scanPayment,
  setupMerchant,
  startTestGateway,
  type TestGateway,
} from './helpers.ts';

let tg: TestGateway;
let merchant: Merchant;
let other: Merchant;

before(async () => {
  tg = await startTestGateway();
  merchant = await setupMerchant(tg);
  other = await setupMerchant(tg, 'Rival Store');
});
after(() => tg.stop());

const good = () => scanPayment(1999, { reference: 'R-BAD' });
const without = (field: string) => {
  const body: Record<string, unknown> = good();
  delete body[field];
  return body;
};

type Case = [name: string, body: unknown, status: number, param?: string, headers?: Record<string, string>];

const BAD_PAYMENTS: Case[] = [
  ['amount missing', without('amount'), 400, 'amount'],
  ['amount as a float', { ...good(), amount: { value: 19.99, currency: 'EUR' } }, 400, 'amount.value'],
  ['amount as a string', { ...good(), amount: { value: '1999', currency: 'EUR' } }, 400, 'amount.value'],
  ['negative amount', { ...good(), amount: { value: -5, currency: 'EUR' } }, 400, 'amount.value'],
  ['zero amount', { ...good(), amount: { value: 0, currency: 'EUR' } }, 400, 'amount.value'],
  [
    'amount above the maximum',
    { ...good(), amount: { value: 100_000_001, currency: 'EUR' } },
    400,
    'amount.value',
  ],
  [
    'amount beyond safe integers',
    { ...good(), amount: { value: 2 ** 60, currency: 'EUR' } },
    400,
    'amount.value',
  ],
  ['unknown currency', { ...good(), amount: { value: 100, currency: 'XYZ' } }, 400, 'amount.currency'],
  ['lower-case currency', { ...good(), amount: { value: 100, currency: 'eur' } }, 400, 'amount.currency'],
  ['currency missing', { ...good(), amount: { value: 100 } }, 400, 'amount.currency'],
  ['extra field in amount', { ...good(), amount: { value: 100, currency: 'EUR', fx: 1 } }, 400, 'amount.fx'],
  ['amount as a number', { ...good(), amount: 1999 }, 400, 'amount'],
  ['reference missing', without('reference'), 400, 'reference'],
  ['reference null (a required field)', { ...good(), reference: null }, 400, 'reference'],
  ['amount null (a required field)', { ...good(), amount: null }, 400, 'amount'],
  ['empty reference', { ...good(), reference: '' }, 400, 'reference'],
  ['reference too long', { ...good(), reference: 'R'.repeat(65) }, 400, 'reference'],
  ['reference with a control character', { ...good(), reference: 'R-1\u0007' }, 400, 'reference'],
  ['mode missing', without('mode'), 400, 'mode'],
  ['unknown mode', { ...good(), mode: 'nfc' }, 400, 'mode'],
  ['scan without payment code', without('payment_code'), 400, 'payment_code'],
  ['payment code with letters', { ...good(), payment_code: '28671433524611879A' }, 400, 'payment_code'],
  ['payment code too short', { ...good(), payment_code: '123456789' }, 400, 'payment_code'],
  ['payment code too long', { ...good(), payment_code: '1'.repeat(33) }, 400, 'payment_code'],
  [
    'qr without wallet',
    { amount: { value: 100, currency: 'EUR' }, reference: 'R', mode: 'qr' },
    400,
    'wallet',
  ],
  [
    'qr with a payment code',
    {
      amount: { value: 100, currency: 'EUR' },
      reference: 'R',
      mode: 'qr',
      wallet: 'alipay',
      payment_code: ALIPAY_CODE,
    },
    400,
    'payment_code',
  ],
  ['unknown wallet', { ...good(), wallet: 'paypal' }, 400, 'wallet'],
  ['wallet contradicting the code', { ...good(), wallet: 'wechatpay' }, 400, 'wallet'],
  ['unknown top-level field', { ...good(), tip: 100 }, 400, 'tip'],
  ['metadata with a number value', { ...good(), metadata: { till: 3 } }, 400, 'metadata.till'],
  [
    'metadata with 21 keys',
    { ...good(), metadata: Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`k${i}`, 'v'])) },
    400,
    'metadata',
  ],
  ['description too long', { ...good(), description: 'd'.repeat(257) }, 400, 'description'],
  ['store_id differing from the terminal key', { ...good(), store_id: 'paris-09' }, 400, 'store_id'],
  ['terminal_id differing from the terminal key', { ...good(), terminal_id: 'till-9' }, 400, 'terminal_id'],
  ['body is an array', [good()], 400],
  ['body is a string', 'pay me', 400],
  ['Idempotency-Key missing', good(), 400, 'Idempotency-Key', { 'Idempotency-Key': '' }],
  ['Idempotency-Key too long', good(), 400, 'Idempotency-Key', { 'Idempotency-Key': 'k'.repeat(256) }],
  ['Idempotency-Key not ASCII', good(), 400, 'Idempotency-Key', { 'Idempotency-Key': 'caf\u00e9' }],
];

describe('bad payment requests: each a 4xx with the error shape, and nothing stored', () => {
  for (const [name, body, status, param, headers] of BAD_PAYMENTS) {
    test(name, async () => {
      const before = await tg.gateway.ctx.db.query('SELECT count(*)::int AS n FROM payments');
      let req = tg.http
        .post('/v1/payments')
        .set('Authorization', `Bearer ${merchant.terminalKey}`)
        .set('Content-Type', 'application/json');
      const idem = headers?.['Idempotency-Key'];
      if (idem === undefined) req = req.set('Idempotency-Key', idempotencyKey());
      else if (idem !== '') req = req.set('Idempotency-Key', idem);
      const res = await req.send(typeof body === 'string' ? JSON.stringify(body) : (body as object));
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal(res.body.error.type, 'invalid_request');
      assert.equal(typeof res.body.error.code, 'string');
      assert.ok(res.body.error.message.length > 0);
      assert.match(res.body.error.request_id, /^req_/);
      assert.equal(res.body.error.request_id, res.headers['request-id']);
      if (param) assert.equal(res.body.error.param, param);
      const afterCount = await tg.gateway.ctx.db.query('SELECT count(*)::int AS n FROM payments');
      assert.equal(afterCount.rows[0].n, before.rows[0].n);
    });
  }

  test('malformed JSON is a 400 invalid_json', async () => {
    const res = await tg.http
      .post('/v1/payments')
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .set('Idempotency-Key', idempotencyKey())
      .set('Content-Type', 'application/json')
      .send('{"amount": {"value": 10,');
    assert.equal(res.status, 400);
    assert.equal(res.body.error.code, 'invalid_json');
  });

  test('a number written with a fraction or an exponent is refused even where its value is whole', async () => {
    const send = (text: string) =>
      tg.http
        .post('/v1/payments')
        .set('Authorization', `Bearer ${merchant.terminalKey}`)
        .set('Idempotency-Key', idempotencyKey())
        .set('Content-Type', 'application/json')
        .send(text);
    const body = (value: string, extra = '') =>
      `{"amount": {"currency": "EUR", "value": ${value}}, "reference": "R-FRAC", "mode": "scan", "payment_code": "${ALIPAY_CODE}"${extra}}`;
    const before = await tg.gateway.ctx.db.query('SELECT count(*)::int AS n FROM payments');
    for (const [value, extra, param] of [
      ['1999.0', '', 'amount.value'],
      ['1e3', '', 'amount.value'],
      ['2E+3', '', 'amount.value'],
      ['1999', ', "metadata": {"till": 3.0}', 'metadata.till'],
    ]) {
      for (const bom of ['', '\ufeff']) {
        // A byte-order mark, as some Windows tills write one, changes nothing.
        const res = await send(bom + body(value, extra));
        assert.equal(res.status, 400, `${value}${extra}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error.type, 'invalid_request');
        assert.equal(res.body.error.param, param);
      }
    }
    const afterCount = await tg.gateway.ctx.db.query('SELECT count(*)::int AS n FROM payments');
    assert.equal(afterCount.rows[0].n, before.rows[0].n);
    // Text that only looks like such a number is not one.
    await send(body('1900', ', "description": "1999.0 \\" 1e3", "metadata": {"v1.5": "2.5e3"}')).expect(201);
    await send(`\ufeff${body('1901')}`).expect(201);
  });

  test('a body that is not UTF-8 is a 400 unsupported_encoding, not text stored with U+FFFD', async () => {
    // Sent as bytes (supertest would write a Buffer as JSON).
    const res = await fetch(`${tg.url}/v1/terminals`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${merchant.secretKey}`, 'Content-Type': 'application/json' },
      body: Buffer.from('{"store_id":"lat\xe9","terminal_id":"t-latin1"}', 'latin1'),
    });
    const body = await res.json();
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(body.error.code, 'unsupported_encoding');
    const { rows } = await tg.gateway.ctx.db.query("SELECT 1 FROM terminals WHERE terminal_id = 't-latin1'");
    assert.equal(rows.length, 0);
  });

  test('a currency no provider account serves is 422 and stores nothing', async () => {
    const outside = await setupMerchant(tg, 'EUR only');
    await tg.http
      .put('/v1/providers/sandbox')
      .set('Authorization', `Bearer ${outside.secretKey}`)
      .send({ wallets: ['alipay'], currencies: ['EUR'] })
      .expect(200);
    const res = await createPayment(
      tg,
      outside.terminalKey,
      scanPayment(100, { amount: { value: 100, currency: 'USD' } }),
    ).expect(422);
    assert.equal(res.body.error.type, 'unprocessable');
    assert.equal(res.body.error.code, 'no_provider_account');
    const { rows } = await tg.gateway.ctx.db.query('SELECT 1 FROM payments WHERE merchant_id = $1', [
      outside.id,
    ]);
    assert.equal(rows.length, 0);
  });

  test('other bad inputs: list filters, wait, set-up bodies', async () => {
    const auth = { Authorization: `Bearer ${merchant.secretKey}` };
    // A payment that exists: a wait read as a number would be answered 200, not 404.
    const { id } = (await createPayment(tg, merchant.terminalKey, scanPayment(100)).expect(201)).body;
    const cases: [string, () => Promise<{ status: number; body: { error: { type: string } } }>][] = [
      ['limit 0', () => tg.http.get('/v1/payments?limit=0').set(auth)],
      ['limit 101', () => tg.http.get('/v1/payments?limit=101').set(auth)],
      ['unknown status filter', () => tg.http.get('/v1/payments?status=lost').set(auth)],
      ['bad created_gte', () => tg.http.get('/v1/payments?created_gte=yesterday').set(auth)],
      [
        'created_gte without a time zone',
        () => tg.http.get('/v1/payments?created_gte=2026-11-26T10:00:00').set(auth),
      ],
      [
        'created_lt on a day that does not exist',
        () => tg.http.get('/v1/payments?created_lt=2026-02-30T10:00:00Z').set(auth),
      ],
      ['created_lt at hour 24', () => tg.http.get('/v1/payments?created_lt=2026-11-26T24:00:00Z').set(auth)],
      ['unknown query parameter', () => tg.http.get('/v1/payments?colour=red').set(auth)],
      [
        // Ignored, it made a refund of everything that was left.
        'a query parameter on a refund',
        () =>
          tg.http
            .post(`/v1/payments/${id}/refunds?amount=1`)
            .set(auth)
            .set('Idempotency-Key', `k-${id}-query`)
            .send({}),
      ],
      ['wait above 60', () => tg.http.get('/v1/payments/pay_x?wait=61').set(auth)],
      // Number() would read these as 0, 2, 1 and 2 seconds.
      ['wait empty', () => tg.http.get(`/v1/payments/${id}?wait=`).set(auth)],
      ['wait in hexadecimal', () => tg.http.get(`/v1/payments/${id}?wait=0x2`).set(auth)],
      ['wait in exponent notation', () => tg.http.get(`/v1/payments/${id}?wait=1e0`).set(auth)],
      ['wait with a leading space', () => tg.http.get(`/v1/payments/${id}?wait=%202`).set(auth)],
      ['limit in exponent notation', () => tg.http.get('/v1/payments?limit=1e1').set(auth)],
      // Inputs that once reached PostgreSQL or the URL decoder and came back as 500s.
      ['a path that is not UTF-8', () => tg.http.get('/v1/payments/%ff').set(auth)],
      ['a NUL byte in a path', () => tg.http.get('/v1/payments/pay_%00').set(auth)],
      // Read as U+FFFD once: a filter on a store no till has, answered with an empty list.
      ['a query that is not UTF-8', () => tg.http.get('/v1/payments?store_id=%FF').set(auth)],
      ['a lone surrogate in a query', () => tg.http.get('/v1/payments?store_id=%ED%A0%80').set(auth)],
      // Express answered it itself, in plain text.
      ['OPTIONS', () => tg.http.options('/v1/payments').set(auth)],
      ['OPTIONS outside /v1', () => tg.http.options('/healthz')],
      [
        // Node joins the two: taken once as the key "a1, b2".
        'an Idempotency-Key sent twice',
        () =>
          tg.http
            .post('/v1/payments')
            .set('Authorization', `Bearer ${merchant.terminalKey}`)
            .set('Idempotency-Key', ['a1', 'b2'] as unknown as string)
            .send(scanPayment(100)),
      ],
      [
        'a NUL byte in metadata',
        () => createPayment(tg, merchant.terminalKey, scanPayment(100, { metadata: { k: 'a\u0000' } })),
      ],
      [
        'a metadata key __proto__ (dropped without a word once)',
        () =>
          tg.http
            .post('/v1/payments')
            .set('Authorization', `Bearer ${merchant.terminalKey}`)
            .set('Idempotency-Key', idempotencyKey())
            .set('Content-Type', 'application/json')
            .send(JSON.stringify(scanPayment(100)).replace(/}$/, ',"metadata":{"__proto__":"x","a":"b"}}')),
      ],
      [
        'an unpaired surrogate in a metadata key',
        () => createPayment(tg, merchant.terminalKey, scanPayment(100, { metadata: { 'k\ud800': 'a' } })),
      ],
      [
        'an unpaired surrogate in the reference (would be stored as U+FFFD)',
        () => createPayment(tg, merchant.terminalKey, scanPayment(100, { reference: 'R-\ud800' })),
      ],
      [
        'a WeChat Pay wallet for a code that is neither Alipay nor WeChat Pay',
        () =>
          createPayment(
            tg,
            merchant.terminalKey,
            scanPayment(100, { payment_code: '5012345678901234', wallet: 'wechatpay' }),
          ),
      ],
      [
        // Once exhausted the call stack where nothing caught it, and ended the process.
        'a body nested 40,000 levels deep, without a key',
        () =>
          tg.http
            .post('/v1/payments')
            .set('Content-Type', 'application/json')
            .send(`${'['.repeat(40_000)}${']'.repeat(40_000)}`),
      ],
      [
        'an object nested 33 levels deep',
        () =>
          createPayment(tg, merchant.terminalKey, {
            ...scanPayment(100),
            metadata: JSON.parse(`${'{"a":'.repeat(33)}1${'}'.repeat(33)}`),
          }),
      ],
      // A compressed body that does not decompress: the parsers' own 400, not a 500.
      ...(['gzip', 'deflate', 'br'] as const).map(
        (encoding): [string, () => ReturnType<typeof tg.http.post>] => [
          `a ${encoding} body that does not decompress`,
          () =>
            tg.http
              .post('/v1/terminals')
              .set(auth)
              .set('Content-Type', 'application/json')
              .set('Content-Encoding', encoding)
              .send('{"store_id":"s","terminal_id":"t"}'),
        ],
      ),
      ['terminal without store_id', () => tg.http.post('/v1/terminals').set(auth).send({ terminal_id: 't' })],
      [
        'a provider account naming a wallet twice',
        () =>
          tg.http
            .put('/v1/providers/sandbox')
            .set(auth)
            .send({ wallets: ['alipay', 'alipay'] }),
      ],
      [
        'a provider account naming a currency twice',
        () =>
          tg.http
            .put('/v1/providers/sandbox')
            .set(auth)
            .send({ wallets: ['alipay'], currencies: ['EUR', 'EUR'] }),
      ],
      [
        'a terminal whose ids are blank',
        () => tg.http.post('/v1/terminals').set(auth).send({ store_id: ' ', terminal_id: ' ' }),
      ],
      [
        'a merchant whose name is blank',
        () =>
          tg.http
            .post('/v1/admin/merchants')
            .set('Authorization', `Bearer ${tg.adminKey}`)
            .send({ name: '   ', settlement_currency: 'EUR', country: 'DE' }),
      ],
      [
        'providers listed with a limit that is no number',
        () => tg.http.get('/v1/providers?limit=abc').set(auth),
      ],
      [
        'providers listed after an account that does not exist',
        () => tg.http.get('/v1/providers?starting_after=pva_nope').set(auth),
      ],
      [
        'merchant with a bad country',
        () =>
          tg.http
            .post('/v1/admin/merchants')
            .set('Authorization', `Bearer ${tg.adminKey}`)
            .send({ name: 'x', settlement_currency: 'EUR', country: 'Germany' }),
      ],
      [
        'merchant with a country code no country has',
        () =>
          tg.http
            .post('/v1/admin/merchants')
            .set('Authorization', `Bearer ${tg.adminKey}`)
            .send({ name: 'x', settlement_currency: 'EUR', country: 'ZZ' }),
      ],
      [
        'merchant with an unknown currency',
        () =>
          tg.http
            .post('/v1/admin/merchants')
            .set('Authorization', `Bearer ${tg.adminKey}`)
            .send({ name: 'x', settlement_currency: 'EURO', country: 'DE' }),
      ],
      [
        'webhook endpoint with a relative url',
        () =>
          tg.http
            .post('/v1/webhook-endpoints')
            .set(auth)
            .send({ url: '/hook', events: ['payment.succeeded'] }),
      ],
      // Each was taken once, to fail every delivery or to show its password in every listing.
      ...[
        'http:x',
        'http://127.0.0.1:3000/a b',
        'https://user:secret@example.com/hook',
        'http://a/\u0001',
        'http://127.0.0.1/hook\u007f',
      ].map((url): [string, () => ReturnType<typeof tg.http.post>] => [
        `webhook endpoint url ${url}`,
        () =>
          tg.http
            .post('/v1/webhook-endpoints')
            .set(auth)
            .send({ url, events: ['payment.succeeded'] }),
      ]),
      [
        'webhook endpoint with an unknown event',
        () =>
          tg.http
            .post('/v1/webhook-endpoints')
            .set(auth)
            .send({ url: 'http://127.0.0.1/h', events: ['payment.lost'] }),
      ],
      [
        'provider account with an unknown wallet',
        () =>
          tg.http
            .put('/v1/providers/sandbox')
            .set(auth)
            .send({ wallets: ['paypal'] }),
      ],
      [
        'sandbox provider with credentials',
        () =>
          tg.http
            .put('/v1/providers/sandbox')
            .set(auth)
            .send({ wallets: ['alipay'], secret: 'x' }),
      ],
      [
        'refund with a float amount',
        () =>
          tg.http
            .post('/v1/payments/pay_x/refunds')
            .set(auth)
            .set('Idempotency-Key', idempotencyKey())
            .send({ amount: { value: 1.5, currency: 'EUR' } }),
      ],
    ];
    for (const [name, send] of cases) {
      const res = await send();
      assert.ok(res.status >= 400 && res.status < 500, `${name}: ${res.status} ${JSON.stringify(res.body)}`);
      assert.ok(res.body.error?.type, `${name}: error shape`);
    }
    // JSON that is not an object is a body of the wrong kind, not JSON that does not parse.
    for (const [body, code] of [
      ['null', 'invalid_body'],
      ['"x"', 'invalid_body'],
      ['{"a":', 'invalid_json'],
    ]) {
      const res = await tg.http
        .post('/v1/terminals')
        .set(auth)
        .set('Content-Type', 'application/json')
        .send(body);
      assert.deepEqual([res.status, res.body.error.code], [400, code], body);
    }
    // A cursor that is no alert is said as every list says it (it was a ledger error, logged).
    const alerts = await tg.http
      .get('/v1/admin/alerts?starting_after=mer_x')
      .set('Authorization', `Bearer ${tg.adminKey}`);
    assert.deepEqual([alerts.status, alerts.body.error.code], [400, 'parameter_invalid']);
    // A provider's callback is refused in that provider's form (the sandbox's: API.md's error shape).
    for (const webhook of [
      await tg.http.post('/webhooks/sandbox/pva_%00').send('{}'),
      await tg.http
        .post(`/webhooks/sandbox/${merchant.accountId}`)
        .set('Content-Encoding', 'gzip')
        .send('{"event":"x"}'),
    ]) {
      assert.ok(webhook.status >= 400 && webhook.status < 500, `webhook: ${webhook.status}`);
      assert.equal(JSON.parse(webhook.text).error.type, 'invalid_request', webhook.text);
    }
  });

  test('concurrent first PUTs of a provider account: one is created (201), the others update it (200)', async () => {
    const created = await tg.http
      .post('/v1/admin/merchants')
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .send({ name: 'Racing Drugstore', settlement_currency: 'EUR', country: 'DE' })
      .expect(201);
    const auth = { Authorization: `Bearer ${created.body.secret_key}` };
    for (const [provider, body] of [
      ['sandbox', { wallets: ['alipay'] }],
      ['alipay', { sandbox: true, wallets: ['alipay'] }],
    ] as const) {
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => tg.http.put(`/v1/providers/${provider}`).set(auth).send(body)),
      );
      const statuses = answers.map((a) => a.status).sort();
      assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200, 200, 201], JSON.stringify(answers[0].body));
      assert.equal(new Set(answers.map((a) => a.body.id)).size, 1, 'one account');
    }
  });

  test('an oversized body and a body in another charset are 400 invalid_request, as API.md types them', async () => {
    const huge = await tg.http
      .post('/v1/payments')
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .set('Idempotency-Key', idempotencyKey())
      .set('Content-Type', 'application/json')
      .send(JSON.stringify({ ...scanPayment(100), description: 'x'.repeat(200_000) }));
    assert.equal(huge.status, 400);
    assert.deepEqual([huge.body.error.type, huge.body.error.code], ['invalid_request', 'body_too_large']);
    const sendAs = (contentType: string) =>
      tg.http
        .post('/v1/payments')
        .set('Authorization', `Bearer ${merchant.terminalKey}`)
        .set('Idempotency-Key', idempotencyKey())
        .set('Content-Type', contentType)
        .send(JSON.stringify(scanPayment(100)));
    // Another charset is refused as such, also one whose decoding would have made the body garbage.
    for (const other of ['application/json; charset=latin1', 'application/json; charset=utf-16']) {
      const refused = await sendAs(other);
      assert.equal(refused.status, 400, other);
      assert.deepEqual(
        [refused.body.error.type, refused.body.error.code],
        ['invalid_request', 'unsupported_encoding'],
        other,
      );
    }
    // UTF-8 by any of its names.
    for (const utf8 of [
      'application/json; charset=utf8',
      'application/json;charset="UTF-8"',
      'text/plain; charset=utf_8',
    ])
      await sendAs(utf8).expect(201);
  });

  test('a parameter sent with a wrong value is invalid, not missing', async () => {
    const auth = { Authorization: `Bearer ${merchant.secretKey}` };
    const notANumber = await tg.http.get('/v1/payments?limit=abc').set(auth).expect(400);
    assert.equal(notANumber.body.error.code, 'parameter_invalid');
    assert.equal(notANumber.body.error.param, 'limit');
    const twice = await tg.http
      .get('/v1/reports/settlements?from=2030-01-01&from=2030-01-02&to=2030-01-31')
      .set(auth);
    assert.equal(twice.status, 400);
    assert.equal(twice.body.error.code, 'parameter_invalid');
    assert.equal(twice.body.error.param, 'from');
    const absent = await tg.http.get('/v1/reports/settlements?to=2030-01-31').set(auth).expect(400);
    assert.equal(absent.body.error.code, 'parameter_missing');
    // Left out, a field of a fixed set of values is missing too; a rule of its own says when.
    const { mode: _mode, ...noMode } = scanPayment(1000);
    const modeless = await createPayment(tg, merchant.secretKey, noMode).expect(400);
    assert.deepEqual([modeless.body.error.code, modeless.body.error.param], ['parameter_missing', 'mode']);
    const { wallet: _wallet, ...noWallet } = qrPayment(1000);
    const walletless = await createPayment(tg, merchant.secretKey, noWallet).expect(400);
    assert.deepEqual(
      [walletless.body.error.code, walletless.body.error.param],
      ['parameter_missing', 'wallet'],
    );
    assert.match(walletless.body.error.message, /wallet is required with mode "qr"/);
  });

  test('text the ledger cannot store is refused naming the field or parameter that holds it', async () => {
    const auth = { Authorization: `Bearer ${merchant.secretKey}` };
    const bodies: Array<[change: Record<string, unknown>, param: string]> = [
      [{ metadata: { till: 'a\u0000b' } }, 'metadata.till'],
      [{ metadata: { 'ti\u0000ll': 'a' } }, 'metadata'],
      [{ description: 'half \ud800' }, 'description'],
    ];
    for (const [change, param] of bodies) {
      const res = await createPayment(tg, merchant.secretKey, { ...scanPayment(1000), ...change }).expect(
        400,
      );
      assert.deepEqual([res.body.error.code, res.body.error.param], ['invalid_value', param]);
    }
    for (const path of [
      '/v1/payments?starting_after=pay_%00',
      '/v1/reconciliation/discrepancies?settlement_id=stl_%00',
    ]) {
      const res = await tg.http.get(path).set(auth).expect(400);
      assert.deepEqual([res.body.error.code, res.body.error.param], ['invalid_value', path.split(/[?=]/)[1]]);
    }
  });

  test('a wrong value is answered with what the field must be, in plain words', async () => {
    const messages: Array<[body: Record<string, unknown>, message: string]> = [
      [
        { amount: { value: '1999', currency: 'EUR' } },
        'amount.value must be an integer count of minor units',
      ],
      [{ reference: 42 }, 'reference must be a string'],
      [{ reference: 'R'.repeat(65) }, 'reference must be at most 64 characters long'],
      [{ mode: 'nfc' }, 'mode must be one of "scan", "qr"'],
      [{ metadata: ['till-3'] }, 'metadata must be an object'],
    ];
    for (const [change, message] of messages) {
      const res = await createPayment(tg, merchant.secretKey, { ...scanPayment(1000), ...change }).expect(
        400,
      );
      assert.equal(res.body.error.message, message);
    }
    const auth = { Authorization: `Bearer ${merchant.secretKey}` };
    const hook = await tg.http
      .post('/v1/webhook-endpoints')
      .set(auth)
      .send({ url: 'https://example.org/h', events: [] });
    assert.deepEqual([hook.status, hook.body.error.message], [400, 'events must have at least 1 item']);
  });

  test('a cancel takes no parameters: an array or a field in its body is a 400 and cancels nothing', async () => {
    const sale = await createPayment(tg, merchant.terminalKey, scanPayment(1057)).expect(201);
    assert.equal(sale.body.status, 'processing');
    const cancel = (body: unknown) =>
      tg.http
        .post(`/v1/payments/${sale.body.id}/cancel`)
        .set('Authorization', `Bearer ${merchant.terminalKey}`)
        .set('Content-Type', 'application/json')
        .send(JSON.stringify(body));
    const array = await cancel([]);
    assert.deepEqual([array.status, array.body.error?.code], [400, 'invalid_body']);
    const field = await cancel({ reason: 'x' });
    assert.deepEqual(
      [field.status, field.body.error?.code, field.body.error?.param],
      [400, 'parameter_unknown', 'reason'],
    );
    const still = await tg.http
      .get(`/v1/payments/${sale.body.id}`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    assert.equal(still.body.status, 'processing');
    assert.equal((await cancel({})).status, 200);
  });

  test('an optional field sent as null is taken as left out, as many JSON serialisers write it', async () => {
    const key = idempotencyKey();
    const nulls = {
      ...scanPayment(1999, { reference: 'R-NULLS' }),
      wallet: null,
      description: null,
      metadata: null,
      store_id: null,
      terminal_id: null,
    };
    const sale = await createPayment(tg, merchant.refundTerminalKey, nulls, key).expect(201);
    assert.equal(sale.body.status, 'succeeded');
    assert.equal(sale.body.wallet, 'alipay');
    assert.equal(sale.body.description, undefined);
    // The same request with the nulls left out is its replay, not another request.
    const replay = await createPayment(
      tg,
      merchant.refundTerminalKey,
      scanPayment(1999, { reference: 'R-NULLS' }),
      key,
    );
    assert.equal(replay.status, 200, JSON.stringify(replay.body));
    assert.equal(replay.body.id, sale.body.id);
    const refund = await createRefund(tg, merchant.refundTerminalKey, sale.body.id, {
      amount: null,
      reason: null,
    }).expect(201);
    assert.deepEqual(refund.body.amount, { value: 1999, currency: 'EUR' }, 'the default: the rest');
  });
});

describe('authentication and tenancy', () => {
  test('no key, a wrong key and a malformed header are 401', async () => {
    for (const header of [undefined, 'Bearer sk_nope', 'Basic abc', 'Bearer tk_nope']) {
      let req = tg.http.get('/v1/payments');
      if (header) req = req.set('Authorization', header);
      const res = await req.expect(401);
      assert.equal(res.body.error.type, 'authentication');
    }
    // Who is asking is settled before what the body holds.
    const unreadable = await tg.http
      .post('/v1/payments')
      .set('Content-Type', 'application/json')
      .send('{"amount": {"value": 10,');
    assert.equal(unreadable.status, 401);
  });

  test('a provider account deleted on one API process takes no sale on another at once', async () => {
    const secondApi = await startTestGateway({ PORT: String(await freePort()) }, tg);
    try {
      const shop = await setupMerchant(tg, 'Two tills');
      // A sale on the other process: its caches now hold the account for its merchant.
      await createPayment(secondApi, shop.terminalKey, scanPayment(1000)).expect(201);
      await tg.http
        .delete('/v1/providers/sandbox')
        .set('Authorization', `Bearer ${shop.secretKey}`)
        .expect(200);
      // The announcement crosses Redis in a millisecond or so; the cache would keep it for 5 s.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const refused = await createPayment(secondApi, shop.terminalKey, scanPayment(1100));
      assert.equal(refused.status, 422, JSON.stringify(refused.body));
      assert.equal(refused.body.error.code, 'no_provider_account');
    } finally {
      await secondApi.stop({ keepDatabase: true });
    }
  });

  test('a revoked terminal key stops working at once; the terminal gets a new one', async () => {
    const shop = await setupMerchant(tg, 'Lost till');
    const as = (key: string) => tg.http.get('/v1/payments').set('Authorization', `Bearer ${key}`);
    await as(shop.terminalKey).expect(200);
    const terminals = await tg.http
      .get('/v1/terminals')
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(200);
    const till = terminals.body.data.find((t: { terminal_id: string }) => t.terminal_id === 'till-1');
    // Not another merchant's, nor a terminal's own business.
    await tg.http
      .delete(`/v1/terminals/${till.id}/key`)
      .set('Authorization', `Bearer ${other.secretKey}`)
      .expect(404);
    await tg.http
      .delete(`/v1/terminals/${till.id}/key`)
      .set('Authorization', `Bearer ${shop.terminalKey}`)
      .expect(403);
    const revoked = await tg.http
      .delete(`/v1/terminals/${till.id}/key`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(200);
    assert.equal(revoked.body.keys_revoked, 1);
    await as(shop.terminalKey).expect(401);
    await as(shop.refundTerminalKey).expect(200);
    await tg.http
      .post(`/v1/terminals/${till.id}/key`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .send(['x'])
      .expect(400);
    const renewed = await tg.http
      .post(`/v1/terminals/${till.id}/key`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(201);
    assert.match(renewed.body.terminal_key, /^tk_/);
    await as(shop.terminalKey).expect(401);
    const paid = await createPayment(tg, renewed.body.terminal_key, scanPayment(1000)).expect(201);
    assert.equal(paid.body.store_id, 'berlin-01');
    assert.equal(paid.body.terminal_id, 'till-1');
  });

  test('the admin replaces a leaked secret key; the old one stops working at once', async () => {
    const shop = await setupMerchant(tg, 'Leaky');
    await tg.http
      .post(`/v1/admin/merchants/${shop.id}/secret-key`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(403);
    // A body with a field (a mistyped call) revokes nothing.
    const mistyped = await tg.http
      .post(`/v1/admin/merchants/${shop.id}/secret-key`)
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .send({ merchant: shop.id })
      .expect(400);
    assert.equal(mistyped.body.error.code, 'parameter_unknown');
    await tg.http.get('/v1/payments').set('Authorization', `Bearer ${shop.secretKey}`).expect(200);
    const renewed = await tg.http
      .post(`/v1/admin/merchants/${shop.id}/secret-key`)
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(201);
    assert.match(renewed.body.secret_key, /^sk_/);
    await tg.http.get('/v1/payments').set('Authorization', `Bearer ${shop.secretKey}`).expect(401);
    await tg.http.get('/v1/payments').set('Authorization', `Bearer ${renewed.body.secret_key}`).expect(200);
    // Terminal keys are the terminals' own and keep working.
    await tg.http.get('/v1/payments').set('Authorization', `Bearer ${shop.terminalKey}`).expect(200);
    await tg.http
      .post('/v1/admin/merchants/mer_nobody/secret-key')
      .set('Authorization', `Bearer ${tg.adminKey}`)
      .expect(404);
  });

  test('the admin key only reaches /v1/admin, merchant keys never do', async () => {
    await tg.http.get('/v1/payments').set('Authorization', `Bearer ${tg.adminKey}`).expect(403);
    await tg.http.get('/v1/admin/merchants').set('Authorization', `Bearer ${merchant.secretKey}`).expect(403);
    await tg.http.get('/v1/admin/merchants').set('Authorization', `Bearer ${tg.adminKey}`).expect(200);
  });

  test('terminal keys cannot configure providers or create terminals', async () => {
    await tg.http
      .put('/v1/providers/sandbox')
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .send({})
      .expect(403);
    await tg.http
      .post('/v1/terminals')
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .send({ store_id: 's', terminal_id: 't' })
      .expect(403);
  });

  test('another merchant’s payment and refund are 404, as are listing and cancelling them', async () => {
    const mine = await createPayment(tg, merchant.secretKey, scanPayment(1100)).expect(201);
    const refund = await createRefund(tg, merchant.secretKey, mine.body.id).expect(201);
    const as = (key: string) => ({ Authorization: `Bearer ${key}` });
    await tg.http.get(`/v1/payments/${mine.body.id}`).set(as(other.secretKey)).expect(404);
    await tg.http.get(`/v1/payments/${mine.body.id}`).set(as(other.terminalKey)).expect(404);
    await tg.http.get(`/v1/refunds/${refund.body.id}`).set(as(other.secretKey)).expect(404);
    await tg.http.post(`/v1/payments/${mine.body.id}/cancel`).set(as(other.secretKey)).expect(404);
    await createRefund(tg, other.secretKey, mine.body.id).expect(404);
    const list = await tg.http.get('/v1/payments?limit=100').set(as(other.secretKey)).expect(200);
    assert.ok(!list.body.data.some((p: { id: string }) => p.id === mine.body.id));
  });

  test('a terminal sees only its own payments; the merchant key sees all', async () => {
    const a = await createPayment(tg, merchant.terminalKey, scanPayment(1200)).expect(201);
    const b = await createPayment(tg, merchant.refundTerminalKey, scanPayment(1200)).expect(201);
    await tg.http
      .get(`/v1/payments/${b.body.id}`)
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(404);
    const list = await tg.http
      .get('/v1/payments?limit=100')
      .set('Authorization', `Bearer ${merchant.terminalKey}`)
      .expect(200);
    const ids = list.body.data.map((p: { id: string }) => p.id);
    assert.ok(ids.includes(a.body.id));
    assert.ok(!ids.includes(b.body.id));
    assert.ok(list.body.data.every((p: { terminal_id: string }) => p.terminal_id === 'till-1'));
    await tg.http
      .get(`/v1/payments/${b.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(200);
  });
});

describe('a terminal’s payments', () => {
  test('are those of its store and till, whichever key created them; another till sees none of them', async () => {
    const forTill1 = { ...scanPayment(1200), store_id: 'berlin-01', terminal_id: 'till-1' };
    const started = await createPayment(tg, merchant.secretKey, forTill1).expect(201);
    const till1 = `Bearer ${merchant.terminalKey}`;
    const till2 = `Bearer ${merchant.refundTerminalKey}`;
    await tg.http.get(`/v1/payments/${started.body.id}`).set('Authorization', till1).expect(200);
    const list = await tg.http.get('/v1/payments?limit=100').set('Authorization', till1).expect(200);
    assert.ok(list.body.data.some((p: { id: string }) => p.id === started.body.id));
    await tg.http.get(`/v1/payments/${started.body.id}`).set('Authorization', till2).expect(404);
    const refund = await createRefund(tg, merchant.secretKey, started.body.id).expect(201);
    await tg.http.get(`/v1/refunds/${refund.body.id}`).set('Authorization', till1).expect(200);
    await tg.http.get(`/v1/refunds/${refund.body.id}`).set('Authorization', till2).expect(404);
    // One started by the back office for no till belongs to none.
    const noTill = await createPayment(tg, merchant.secretKey, scanPayment(1200)).expect(201);
    await tg.http.get(`/v1/payments/${noTill.body.id}`).set('Authorization', till1).expect(404);
  });
});

describe('listing', () => {
  test('a read of one object refuses a query parameter it would ignore', async () => {
    const shop = await setupMerchant(tg, 'Query Reader');
    for (const path of [
      '/v1/refunds/re_none',
      '/v1/jobs/job_none',
      '/v1/settlements/stl_none',
      '/v1/providers/sandbox',
      '/v1/webhook-endpoints/we_none',
    ]) {
      const res = await tg.http.get(`${path}?expand=all`).set('Authorization', `Bearer ${shop.secretKey}`);
      assert.equal(res.status, 400, path);
      assert.equal(res.body.error.code, 'parameter_unknown', path);
      assert.equal(res.body.error.param, 'expand', path);
    }
  });

  test('cursor pagination walks every payment once, newest first, with filters', async () => {
    const shop = await setupMerchant(tg, 'Pager');
    const created: string[] = [];
    for (let i = 0; i < 7; i++) {
      const res = await createPayment(
        tg,
        shop.secretKey,
        scanPayment(i % 2 ? 1051 : 1000, { store_id: 'pager-store' }),
      ).expect(201);
      created.push(res.body.id);
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    for (;;) {
      const res = await tg.http
        .get(`/v1/payments?limit=3${cursor ? `&starting_after=${cursor}` : ''}`)
        .set('Authorization', `Bearer ${shop.secretKey}`)
        .expect(200);
      seen.push(...res.body.data.map((p: { id: string }) => p.id));
      if (!res.body.has_more) break;
      cursor = seen[seen.length - 1];
    }
    assert.deepEqual(seen, [...created].reverse());
    const failed = await tg.http
      .get('/v1/payments?status=failed&store_id=pager-store')
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(200);
    assert.equal(failed.body.data.length, 3);
    const future = await tg.http
      .get(`/v1/payments?created_gte=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(200);
    assert.equal(future.body.data.length, 0);
  });

  test('a filtered page goes on after its last payment even when that payment no longer matches', async () => {
    const shop = await setupMerchant(tg, 'Pager 2');
    const older = await createPayment(tg, shop.secretKey, scanPayment(1057)).expect(201);
    const newer = await createPayment(tg, shop.secretKey, scanPayment(1057)).expect(201);
    const page = (after?: string) =>
      tg.http
        .get(`/v1/payments?status=processing&limit=1${after ? `&starting_after=${after}` : ''}`)
        .set('Authorization', `Bearer ${shop.secretKey}`)
        .expect(200);
    const first = await page();
    assert.deepEqual(
      first.body.data.map((p: { id: string }) => p.id),
      [newer.body.id],
    );
    assert.equal(first.body.has_more, true);
    await tg.http
      .post(`/v1/payments/${newer.body.id}/cancel`)
      .set('Authorization', `Bearer ${shop.secretKey}`)
      .expect(200);
    const second = await page(newer.body.id);
    assert.deepEqual(
      second.body.data.map((p: { id: string }) => p.id),
      [older.body.id],
    );
    assert.equal(second.body.has_more, false);
    // Another merchant's payment is still no cursor, nor is a payment another till cannot see.
    await tg.http
      .get(`/v1/payments?limit=1&starting_after=${newer.body.id}`)
      .set('Authorization', `Bearer ${merchant.secretKey}`)
      .expect(400);
    await tg.http
      .get(`/v1/payments?limit=1&starting_after=${newer.body.id}`)
      .set('Authorization', `Bearer ${shop.terminalKey}`)
      .expect(400);
  });
});
