/**
 * The Antom settlement details parser (alipay.md §12; PROVIDERS.md "Decisions"): header row,
 * rows, `<END>`; columns by name in any order; unknown columns tolerated and reported; a missing
 * required column or a missing `<END>` fails with a clear message. Streams.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { alipayAdapter } from '../adapters/alipay/adapter.ts';
import { type OtherType, parseSettlementFile } from '../adapters/alipay/settlement.ts';
import { SettlementFormatError, type SettlementLine } from '../adapters/contract.ts';

const HEADER =
  'settlementBatchId,customerId,PSP,ARN,referenceMerchantId,referenceStoreId,transactionId,originalTransactionId,transactionRequestId,referenceTransactionId,transactionType,paymentTime,settlementTime,transactionAmountValue,transactionCurrency,settlementAmountValue,settlementCurrency,quoteCurrencyPair,quotePrice,feeAmountValue,feeCurrency,pspName';

const GOOD = [
  HEADER,
  'B20240501,cust1,ALIPAYCN,,shop-1,berlin-01,202405011940108001001881I0204295953,,pay_abc,,PAYMENT,2024-05-01T10:00:02+02:00,2024-05-03T00:00:00+00:00,1999,EUR,1999,EUR,EUR/EUR,1,36,EUR,ALIPAYCN',
  'B20240501,cust1,ALIPAYHK,,shop-1,berlin-01,202405011940108001001881R0204295954,202405011940108001001881I0204295953,re_abc,,REFUND,2024-05-01T11:00:00+02:00,2024-05-03 00:00:00,-500,EUR,-500,EUR,,,0,EUR,',
  '"B20240501","cust1","","","shop-1","hamburg, 2","T3",,"pay_def",,"cancel",,2024-05-03T00:00:00Z,12000,JPY,7300,EUR,392/978,0.0062,,,',
  '<END>',
  '',
].join('\n');

function stream(text: string, chunk = 7): Readable {
  // Small chunks, so rows and quoted fields straddle chunk boundaries.
  const parts: string[] = [];
  for (let i = 0; i < text.length; i += chunk) parts.push(text.slice(i, i + chunk));
  return Readable.from(parts);
}

async function collect(
  text: string,
  onUnknownColumns?: (names: string[]) => void,
  onOtherTypes?: (types: OtherType[]) => void,
): Promise<SettlementLine[]> {
  const lines: SettlementLine[] = [];
  for await (const line of parseSettlementFile(stream(text), { onUnknownColumns, onOtherTypes }))
    lines.push(line);
  return lines;
}

async function failure(text: string): Promise<SettlementFormatError> {
  try {
    await collect(text);
  } catch (error) {
    assert.ok(error instanceof SettlementFormatError, `expected SettlementFormatError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected the parse to fail');
}

describe('Antom settlement details parser', () => {
  it('parses a good file into settlement lines', async () => {
    const lines = await collect(GOOD);
    assert.equal(lines.length, 3);
    assert.deepEqual(lines[0], {
      line_no: 2,
      batch_id: 'B20240501',
      type: 'payment',
      provider_reference: '202405011940108001001881I0204295953',
      provider_request_id: 'pay_abc',
      transaction_amount: { value: 1999, currency: 'EUR' },
      settlement_amount: { value: 1999, currency: 'EUR' },
      fee: { value: 36, currency: 'EUR' },
      exchange_rate: '1',
      settled_at: new Date('2024-05-03T00:00:00Z'),
      transacted_at: new Date('2024-05-01T08:00:02Z'),
      store_id: 'berlin-01',
      wallet_psp: 'ALIPAYCN',
    });
    // A refund written signed: unsigned amounts, the type carries the direction.
    assert.equal(lines[1].type, 'refund');
    assert.equal(lines[1].original_provider_reference, '202405011940108001001881I0204295953');
    assert.deepEqual(lines[1].transaction_amount, { value: 500, currency: 'EUR' });
    assert.equal(lines[1].wallet_psp, undefined, 'the PSP column names the acquirer, not the wallet');
    assert.deepEqual(lines[1].settled_at, new Date('2024-05-03T00:00:00Z'));
    // Quoted cells with commas; lower-case type; fee defaulting to zero in the settlement currency.
    assert.equal(lines[2].type, 'cancel');
    assert.equal(lines[2].store_id, 'hamburg, 2');
    assert.deepEqual(lines[2].fee, { value: 0, currency: 'EUR' });
    assert.deepEqual(lines[2].transaction_amount, { value: 12000, currency: 'JPY' });
  });

  it('finds columns by name in any order, and reports unknown columns without failing', async () => {
    const columns = HEADER.split(',');
    const order = [...columns.keys()].reverse();
    const reorder = (line: string) => {
      const cells = line.split(',');
      return [...order.map((i) => cells[i]), 'X'].join(',');
    };
    const text = [
      `${order.map((i) => columns[i]).join(',')},riskLevel`,
      reorder(GOOD.split('\n')[1]),
      '<END>',
    ].join('\n');
    let unknown: string[] = [];
    const lines = await collect(text, (names) => {
      unknown = names;
    });
    assert.deepEqual(unknown, ['riskLevel']);
    assert.equal(lines.length, 1);
    assert.equal(lines[0].provider_request_id, 'pay_abc');
    assert.deepEqual(lines[0].fee, { value: 36, currency: 'EUR' });
  });

  it('fails naming a missing required column', async () => {
    const text = GOOD.replace('transactionAmountValue', 'transactionAmount');
    const error = await failure(text);
    assert.match(error.message, /lacks required column transactionAmountValue/);
  });

  it('refuses a PAYMENT row written negative (only refunds and cancels may be signed)', async () => {
    const error = await failure(GOOD.replace(',1999,EUR,1999,EUR,', ',-1999,EUR,-1999,EUR,'));
    assert.equal(error.line_no, 2);
    assert.match(error.message, /transactionAmountValue "-1999" is negative on a payment line/);
  });

  it('refuses a row with fewer or more cells than the header names, but not empty padding', async () => {
    const [header, row] = GOOD.split('\n');
    const cells = row.split(',');
    const short = await failure(`${header}\n${cells.slice(0, -3).join(',')}\n<END>\n`);
    assert.equal(short.line_no, 2);
    assert.match(short.message, /line 2: the row has 19 cells, the header names 22/);
    assert.match(
      (await failure(`${header}\n${row},EXTRA\n<END>\n`)).message,
      /line 2: the row has 23 cells, the header names 22/,
    );
    // A spreadsheet pads the header and the rows alike.
    const padded = await collect(`${header},,\n${row},,\n${cells.join(',')}\n<END>\n`);
    assert.equal(padded.length, 2);
    assert.deepEqual(padded[0].fee, { value: 36, currency: 'EUR' });
  });

  it('refuses a header naming a column twice, and a date that is not on the calendar', async () => {
    assert.match(
      (await failure(GOOD.replace(',pspName', ',feeAmountValue'))).message,
      /names column feeAmountValue more than once/,
    );
    const february = await failure(GOOD.replace('2024-05-03T00:00:00+00:00', '2026-02-30T00:00:00+00:00'));
    assert.match(february.message, /line 2: settlementTime "2026-02-30T00:00:00\+00:00" is not a date-time/);
    assert.match(
      (await failure(GOOD.replace('2024-05-03 00:00:00', '2024-04-31 00:00:00'))).message,
      /line 3: settlementTime "2024-04-31 00:00:00"/,
    );
  });

  it('passes over lines of other transaction types (fees, reserves, disputes), counting them and their amounts', async () => {
    const [header, payment, refund, cancel] = GOOD.split('\n');
    const fee = payment
      .replace(',PAYMENT,', ',SETTLEMENT_FEE,')
      .replace(',1999,EUR,1999,EUR,', ',-120,EUR,-120,EUR,');
    const reserve = payment.replace(',PAYMENT,', ',RESERVE_WITHHOLDING,');
    let told: OtherType[] = [];
    const lines = await collect(
      [header, fee, payment, fee, refund, reserve, cancel, '<END>'].join('\n'),
      undefined,
      (types) => {
        told = types;
      },
    );
    assert.deepEqual(
      lines.map((l) => [l.line_no, l.type]),
      [
        [3, 'payment'],
        [5, 'refund'],
        [7, 'cancel'],
      ],
    );
    assert.deepEqual(told, [
      { type: 'SETTLEMENT_FEE', lines: 2, first_line: 2, settled: new Map([['EUR', -240]]) },
      { type: 'RESERVE_WITHHOLDING', lines: 1, first_line: 6, settled: new Map([['EUR', 1999]]) },
    ]);
  });

  it("adds the tax on Antom's fee to the fee", async () => {
    const [header, payment] = GOOD.split('\n');
    const text = [`${header},taxFeeAmountValue,taxFeeCurrency`, `${payment},7,EUR`, '<END>'].join('\n');
    const [line] = await collect(text, (names) => assert.fail(`unknown columns ${names}`));
    assert.deepEqual(line.fee, { value: 43, currency: 'EUR' });
    const usdTax = [`${header},taxFeeAmountValue,taxFeeCurrency`, `${payment},7,USD`, '<END>'].join('\n');
    assert.match((await failure(usdTax)).message, /line 2: the tax on the fee is in USD, the fee in EUR/);
  });

  it("names a refund by our refundRequestId where Antom's transactionId is the payment's (its Chinese page)", async () => {
    const paymentId = '202405011940108001001881I0204295953';
    const [header, payment, refund] = GOOD.split('\n');
    const second = refund.replace('R0204295954', 'I0204295953').replace(',re_abc,', ',re_def,');
    const first = refund.replace('R0204295954', 'I0204295953');
    const lines = await collect([header, payment, first, second, '<END>'].join('\n'));
    assert.deepEqual(
      lines.map((l) => [l.type, l.provider_reference, l.original_provider_reference ?? null]),
      [
        ['payment', paymentId, null],
        ['refund', 're_abc', paymentId],
        ['refund', 're_def', paymentId],
      ],
    );
    // Its own id stays its name where Antom gives it.
    assert.equal((await collect(GOOD))[1].provider_reference, '202405011940108001001881R0204295954');
  });

  it("reads a time without a zone as UTC in every form, whatever the server's zone", async () => {
    const zone = process.env.TZ;
    process.env.TZ = 'Asia/Shanghai';
    try {
      for (const written of ['2024-05-03 10:00', '2024-05-03T10:00', '2024-05-03 10:00:00.5']) {
        const [line] = await collect(GOOD.replace('2024-05-03T00:00:00+00:00', written));
        assert.equal(line.settled_at.toISOString().slice(0, 16), '2024-05-03T10:00', written);
      }
      for (const written of ['2024-05-03 1:00 PM', 'May 3 2024 10:00', '2024-05-03T10']) {
        assert.match(
          (await failure(GOOD.replace('2024-05-03T00:00:00+00:00', written))).message,
          /settlementTime .* is not a date-time/,
          written,
        );
      }
    } finally {
      if (zone === undefined) delete process.env.TZ;
      else process.env.TZ = zone;
    }
  });

  it('takes a trailer padded with commas, as a spreadsheet saves it', async () => {
    assert.equal((await collect(GOOD.replace('<END>\n', '<END>,,,,,,\n'))).length, 3);
  });

  it('refuses CSV it cannot read (an unclosed quote, text after a closing quote) as a format error', async () => {
    const unclosed = await failure(GOOD.replace(',shop-1,berlin-01,2024', ',"shop-1,berlin-01,2024'));
    assert.match(unclosed.message, /unreadable CSV/);
    const truncated = await failure(GOOD.replace('<END>\n', '"B20240501,cust1\n'));
    assert.match(truncated.message, /^line 5: a quoted cell opened on this line is never closed/);
    // A stray quote mid-file is named where it is, not where the file ends.
    const stray = GOOD.split('\n').filter((_, i) => i !== 3);
    stray[1] = stray[1].replace(',shop-1,', ',"shop-1,');
    assert.match(
      (await failure(stray.join('\n'))).message,
      /^line 2: a quoted cell opened on this line is never closed/,
    );
    const spaced = await failure(
      GOOD.replace('settlementBatchId,customerId', '"settlementBatchId" ,customerId'),
    );
    assert.match(spaced.message, /line 1: unreadable CSV/);
    // Named by the line it is on, though the parser reads ahead of the records taken.
    const rows = GOOD.split('\n');
    rows[3] = rows[3].replace('"T3"', '"T"3');
    const later = await failure(rows.join('\n'));
    assert.match(later.message, /^line 4: unreadable CSV: Invalid Closing Quote/);
  });

  it('refuses a record of megabytes rather than buffering it', async () => {
    const huge = GOOD.replace(',ALIPAYCN\n', `,${'A'.repeat(100_000)}\n`);
    assert.match((await failure(huge)).message, /unreadable CSV: .*maximum.*line 2/i);
  });

  it('fails when the <END> trailer is missing (truncated file)', async () => {
    const error = await failure(GOOD.replace('<END>\n', ''));
    assert.match(error.message, /without the <END> trailer/);
  });

  it('rejects data after <END>, decimal amounts, unknown types and currencies, empty files, naming the line', async () => {
    assert.match((await failure(`${GOOD}${GOOD.split('\n')[1]}\n`)).message, /line 6: data after the <END>/);
    const decimalAmount = GOOD.replace(',1999,EUR,1999,', ',19.99,EUR,1999,');
    const error = await failure(decimalAmount);
    assert.equal(error.line_no, 2);
    assert.match(error.message, /line 2: transactionAmountValue "19.99" is not an integer amount/);
    // Past 2^53 a Number is not the amount written (9999999999999999 would read 10000000000000000).
    assert.match(
      (await failure(GOOD.replace(',1999,EUR,1999,', ',9999999999999999,EUR,1999,'))).message,
      /line 2: transactionAmountValue "9999999999999999" is out of range/,
    );
    assert.match(
      (await failure(GOOD.replace(',1999,EUR,1999,EUR,', ',1999,EUX,1999,EUR,'))).message,
      /unknown currency EUX/,
    );
    assert.match((await failure('')).message, /empty/);
    assert.match(
      (await failure(GOOD.replace('2024-05-03T00:00:00+00:00', 'soon'))).message,
      /settlementTime "soon"/,
    );
  });

  it('tolerates a UTF-8 BOM and CRLF line ends, through the adapter entry point', async () => {
    const text = `\uFEFF${GOOD.replace(/\n/g, '\r\n')}`;
    const lines: SettlementLine[] = [];
    for await (const chunk of alipayAdapter.parseSettlement(stream(text, 13))) lines.push(...chunk);
    assert.equal(lines.length, 3);
    assert.equal(lines[0].batch_id, 'B20240501');
  });

  it('streams a large file without holding it', async () => {
    const row = GOOD.split('\n')[1];
    const count = 50_000;
    async function* generate() {
      yield `${HEADER}\n`;
      for (let i = 0; i < count; i++) yield `${row.replace('pay_abc', `pay_${i}`)}\n`;
      yield '<END>\n';
    }
    let seen = 0;
    let last = '';
    for await (const line of parseSettlementFile(Readable.from(generate()))) {
      seen++;
      last = line.provider_request_id ?? '';
    }
    assert.equal(seen, count);
    assert.equal(last, `pay_${count - 1}`);
  });
});
