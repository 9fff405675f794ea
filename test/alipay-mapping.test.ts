/**
 * Antom's documented sample payloads (alipay.md §4–§10, from `alipay/ams-java-sdk` api_mocks)
 * parse into our outcomes; our pay body carries what the docs require; one table classifies.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AlipayCredentials } from '../adapters/alipay/credentials.ts';
import {
  cancelOutcome,
  decimal,
  inquiryOutcome,
  type Json,
  money,
  payBody,
  payOutcome,
  quote,
  refundInquiryOutcome,
  refundOutcome,
  resultOf,
} from '../adapters/alipay/mapping.ts';
import { paymentRequest } from '../adapters/alipay/simulator/harness.ts';
import type { PaymentRequest } from '../adapters/contract.ts';

const UPCP_S = {
  result: { resultCode: 'SUCCESS', resultStatus: 'S', resultMessage: 'success.' },
  paymentRequestId: 'Kai202003163001',
  paymentId: '202003151940108001001881I0204295953',
  paymentAmount: { currency: 'MOP', value: '100' },
  actualPaymentAmount: { currency: 'CNY', value: '88' },
  paymentQuote: { guaranteed: false, quoteCurrencyPair: '446/156', quotePrice: 0.88156063 },
  grossSettlementAmount: { currency: 'HKD', value: '98' },
  settlementQuote: { guaranteed: false, quoteCurrencyPair: '344/446', quotePrice: 1.02487562 },
  paymentCreateTime: '2020-03-15T20:06:00-07:00',
  paymentTime: '2020-03-15T20:06:02-07:00',
  pspCustomerInfo: {
    pspName: 'ALIPAYCN',
    pspCustomerId: '20882027863621B1',
    displayCustomerId: 'san***@mock.com',
  },
};
const UPCP_F = {
  result: { resultCode: 'ORDER_NOT_EXIST', resultMessage: 'order not exist', resultStatus: 'F' },
};
const UPCP_U = {
  result: {
    resultCode: 'UNKNOWN_EXCEPTION',
    resultMessage: 'API failed due to unknown reason.',
    resultStatus: 'U',
  },
};
const ORDER_CODE_S = {
  result: { resultCode: 'SUCCESS', resultStatus: 'S', resultMessage: 'success.' },
  paymentId: '20200316194010800100188030204239271',
  paymentRequestId: 'PR-OC-1',
  paymentAmount: { currency: 'JPY', value: '1000' },
  paymentCreateTime: '2020-03-16T01:56:13-07:00',
  orderCodeForm: {
    codeDetails: [
      {
        codeValue: 'https://gqr.alipay.com/2810060413415931',
        codeValueType: 'QRCODE',
        displayType: 'BIGIMAGE',
      },
      { codeValue: 'https://gqr.alipay.com/2810060413415931', codeValueType: 'QRCODE', displayType: 'TEXT' },
      { codeValue: 'x', codeValueType: 'QRCODE', displayType: 'MIDDLEIMAGE' },
    ],
  },
};

function scan(): PaymentRequest {
  return paymentRequest();
}

function result(body: Record<string, unknown>) {
  const parsed = resultOf(body);
  assert.ok(parsed);
  return parsed;
}

describe('Antom sample payloads', () => {
  it('UPM success (upcp_s.json): paid, with ids, wallet and FX stored as sent', () => {
    const outcome = payOutcome(scan(), result(UPCP_S), UPCP_S);
    assert.deepEqual(outcome, {
      kind: 'succeeded',
      amount: { value: 100, currency: 'MOP' },
      provider_reference: '202003151940108001001881I0204295953',
      wallet_psp: 'ALIPAYCN',
      paid_at: new Date('2020-03-16T03:06:02.000Z'),
      customer_amount: { value: 88, currency: 'CNY' },
      exchange_rate: '0.88156063',
      settlement_amount: { value: 98, currency: 'HKD' },
      settlement_rate: '1.02487562',
    });
  });

  it('UPM failure and unknown (upcp_f.json, upcp_u.json)', () => {
    const failed = payOutcome(scan(), result(UPCP_F), UPCP_F);
    assert.equal(failed.kind, 'failed');
    assert.equal(failed.kind === 'failed' && failed.failure.provider_code, 'ORDER_NOT_EXIST');
    assert.equal(failed.kind === 'failed' && failed.failure.code, 'provider_error');
    const unknown = payOutcome(scan(), result(UPCP_U), UPCP_U);
    // Answered, though undecided: the pay arrived, and is never resent (§9).
    assert.deepEqual(unknown, {
      kind: 'unknown',
      reason: 'U UNKNOWN_EXCEPTION: API failed due to unknown reason.',
      reached: true,
      answered: true,
    });
  });

  it('Order Code success (order_code_s.json) is not paid: pending with the TEXT code as QR', () => {
    const payment = paymentRequest({ mode: 'qr', payment_code: undefined });
    const outcome = payOutcome(payment, result(ORDER_CODE_S), ORDER_CODE_S);
    assert.equal(outcome.kind, 'pending');
    assert.deepEqual(outcome.kind === 'pending' && outcome.qr_code, {
      data: 'https://gqr.alipay.com/2810060413415931',
      expires_at: payment.expires_at,
    });
    const noCode = { ...ORDER_CODE_S, orderCodeForm: { codeDetails: [] } };
    // Unknown, yet an answer: the order exists, and a cancel that cannot find it is no proof otherwise.
    assert.deepEqual(payOutcome(payment, result(noCode), noCode), {
      kind: 'unknown',
      reason: 'order code created but orderCodeForm has no code',
      reached: true,
      answered: true,
    });
  });

  it('inquiry fixtures: SUCCESS, PROCESSING (with UNKNOWN_EXCEPTION code), FAIL, CANCELLED, result F', () => {
    const ok = { result: { resultStatus: 'S', resultCode: 'SUCCESS', resultMessage: 'Success' } };
    assert.equal(
      inquiryOutcome(result(ok), { ...ok, ...UPCP_S, paymentStatus: 'SUCCESS' }).kind,
      'succeeded',
    );
    const processing = { ...ok, paymentStatus: 'PROCESSING', paymentResultCode: 'UNKNOWN_EXCEPTION' };
    assert.deepEqual(
      [inquiryOutcome(result(ok), processing)].map((o) => [o.kind, 'customer_acted' in o]),
      [['pending', false]],
    );
    // PENDING: the user has finished (scanned and confirmed); the result is still to come.
    const pending = inquiryOutcome(result(ok), { ...ok, paymentStatus: 'PENDING' });
    assert.deepEqual(
      [pending.kind, 'customer_acted' in pending && pending.customer_acted],
      ['pending', true],
    );
    const fail = {
      ...ok,
      paymentStatus: 'FAIL',
      paymentResultCode: 'USER_BALANCE_NOT_ENOUGH',
      paymentResultMessage: 'no money',
    };
    const failed = inquiryOutcome(result(ok), fail);
    assert.equal(failed.kind === 'failed' && failed.failure.code, 'insufficient_funds');
    assert.equal(inquiryOutcome(result(ok), { ...ok, paymentStatus: 'CANCELLED' }).kind, 'canceled');
    assert.equal(inquiryOutcome(result(ok), { ...ok, paymentStatus: 'WHATEVER' }).kind, 'unknown');
    const inquiryF = {
      result: { resultCode: 'PROCESS_FAIL', resultStatus: 'F', resultMessage: 'order not exist' },
    };
    assert.equal(inquiryOutcome(result(inquiryF), inquiryF).kind, 'unknown');
    assert.equal(inquiryOutcome(result(UPCP_F), UPCP_F).kind, 'not_found');
    assert.equal(inquiryOutcome(result(UPCP_U), UPCP_U).kind, 'unknown');
  });

  it('refund (refund_ss.json), async refunds and inquiryRefund statuses', () => {
    const ss = {
      result: { resultCode: 'SUCCESS', resultStatus: 'S', resultMessage: 'success' },
      paymentId: '2019...',
      refundId: '20190608114010800100188820200350001',
      refundRequestId: 'R-1_refund1',
      refundAmount: { currency: 'JPY', value: '111' },
      refundTime: '2019-06-08T02:45:41-07:00',
    };
    assert.deepEqual(refundOutcome(result(ss), ss), {
      kind: 'succeeded',
      provider_reference: '20190608114010800100188820200350001',
      settlement_amount: undefined,
      amount: { value: 111, currency: 'JPY' },
    });
    assert.equal(refundOutcome(result(ss), { ...ss, isAsyncRefund: true }).kind, 'pending');
    const exceed = {
      result: { resultCode: 'REFUND_AMOUNT_EXCEED', resultStatus: 'F', resultMessage: 'too much' },
    };
    const failed = refundOutcome(result(exceed), exceed);
    assert.equal(failed.kind === 'failed' && failed.failure.code, 'amount_limit_exceeded');
    assert.equal(refundOutcome(result(UPCP_U), UPCP_U).kind, 'unknown');
    const inquiry = (status: string) =>
      refundInquiryOutcome(result(ss), { ...ss, refundStatus: status }).kind;
    assert.deepEqual(['SUCCESS', 'PROCESSING', 'FAIL', '??'].map(inquiry), [
      'succeeded',
      'pending',
      'failed',
      'unknown',
    ]);
    const missing = { result: { resultCode: 'REFUND_NOT_EXIST', resultStatus: 'F', resultMessage: '' } };
    assert.equal(refundInquiryOutcome(result(missing), missing).kind, 'not_found');
  });
});

describe('the classification table', () => {
  const cases: [string, string, string][] = [
    ['F', 'USER_BALANCE_NOT_ENOUGH', 'failed:insufficient_funds'],
    ['F', 'INVALID_PAYMENT_CODE', 'failed:invalid_payment_code'],
    ['F', 'EXPIRED_CODE', 'failed:expired'],
    ['F', 'RISK_REJECT', 'failed:risk_rejected'],
    ['F', 'FRAUD_REJECT', 'failed:risk_rejected'],
    ['F', 'USER_PAYMENT_VERIFICATION_FAILED', 'failed:user_canceled'],
    ['F', 'PAYMENT_AMOUNT_EXCEED_LIMIT', 'failed:amount_limit_exceeded'],
    ['F', 'SIGNATURE_INVALID', 'failed:provider_error'],
    ['F', 'SOMETHING_NEW', 'failed:provider_error'],
    // An F that proves nothing about the customer's money is unknown, never a failure.
    ['F', 'REPEAT_REQ_INCONSISTENT', 'unknown'],
    ['F', 'SYSTEM_ERROR', 'unknown'],
    ['U', 'PAYMENT_IN_PROCESS', 'pending'],
    ['U', 'REQUEST_TRAFFIC_EXCEED_LIMIT', 'unknown'],
    ['X', 'SUCCESS', 'unknown'],
  ];
  for (const [status, code, expected] of cases) {
    it(`pay ${status} ${code} → ${expected}`, () => {
      const body = { result: { resultStatus: status, resultCode: code, resultMessage: '' } };
      const outcome = payOutcome(scan(), result(body), body);
      const label = outcome.kind === 'failed' ? `failed:${outcome.failure.code}` : outcome.kind;
      assert.equal(label, expected);
    });
  }

  it('cancel: S cancels; ORDER_NOT_EXIST is not found (the pay may be on its way); other F fails; U unknown', () => {
    const r = (resultStatus: string, resultCode: string) => ({ resultStatus, resultCode, resultMessage: '' });
    assert.equal(cancelOutcome(r('S', 'SUCCESS')).kind, 'canceled');
    assert.equal(cancelOutcome(r('F', 'ORDER_NOT_EXIST')).kind, 'not_found');
    assert.equal(cancelOutcome(r('F', 'ORDER_STATUS_INVALID')).kind, 'failed');
    assert.equal(cancelOutcome(r('U', 'UNKNOWN_EXCEPTION')).kind, 'unknown');
    assert.equal(cancelOutcome(r('F', 'SYSTEM_ERROR')).kind, 'unknown');
  });
});

describe('tolerant parsing of FX fields', () => {
  it('amounts as strings or numbers; decimals and garbage refused', () => {
    assert.deepEqual(money({ currency: 'CNY', value: '15420' }), { value: 15420, currency: 'CNY' });
    assert.deepEqual(money({ currency: 'CNY', value: 15420 }), { value: 15420, currency: 'CNY' });
    assert.deepEqual(money({ currency: '156', value: '1' }), { value: 1, currency: 'CNY' });
    assert.equal(money({ currency: 'CNY', value: '154.20' }), undefined);
    assert.equal(money({ currency: 'CNY', value: 154.2 }), undefined);
    assert.equal(money({ currency: 'XXQ', value: '1' }), undefined);
  });

  it('quote pairs numeric or alphabetic, prices as strings or numbers, never via float into money', () => {
    assert.deepEqual(quote({ quoteCurrencyPair: '446/156', quotePrice: 0.88156063, guaranteed: false }), {
      price: '0.88156063',
      from: 'MOP',
      to: 'CNY',
      guaranteed: false,
    });
    assert.deepEqual(quote({ quoteCurrencyPair: 'EUR/CNY', quotePrice: '7.7140', guaranteed: 'true' }), {
      price: '7.7140',
      from: 'EUR',
      to: 'CNY',
      guaranteed: true,
    });
    assert.equal(decimal(1e-7), '0.0000001');
    assert.equal(decimal('abc'), undefined);
    assert.equal(decimal(-1), undefined);
  });
});

describe('the pay body', () => {
  const credentials: AlipayCredentials = {
    sandbox: false,
    client_id: 'C1',
    private_key: '',
    alipay_public_key: '',
    key_version: '1',
    path_prefix: '/ams/api',
    mcc: '5912',
  };

  it('UPM carries everything the docs and the legacy SDK require, and is the same on every call', () => {
    const payment = paymentRequest();
    const body = payBody(credentials, payment, 'https://gw.example/webhooks/alipay/pva_1');
    assert.deepEqual(body, {
      productCode: 'IN_STORE_PAYMENT',
      paymentRequestId: payment.provider_request_id,
      paymentAmount: { currency: 'EUR', value: '1999' },
      paymentMethod: { paymentMethodType: 'CONNECT_WALLET', paymentMethodId: '286714335246118790' },
      paymentFactor: { inStorePaymentScenario: 'PaymentCode' },
      paymentExpiryTime: `${payment.expires_at.toISOString().slice(0, 19)}+00:00`,
      paymentNotifyUrl: 'https://gw.example/webhooks/alipay/pva_1',
      settlementStrategy: { settlementCurrency: 'EUR' },
      order: {
        referenceOrderId: 'R-0042-000123',
        orderDescription: 'Drugstore purchase',
        orderAmount: { currency: 'EUR', value: '1999' },
        merchant: {
          referenceMerchantId: 'mer_test',
          merchantName: 'mer_test',
          merchantMCC: '5912',
          store: { referenceStoreId: 'berlin-01', storeName: 'berlin-01', storeMCC: '5912' },
        },
        env: {
          storeTerminalId: 'till-3',
          storeTerminalRequestTime: `${payment.created_at.toISOString().slice(0, 19)}+00:00`,
        },
      },
    });
    assert.equal(
      JSON.stringify(payBody(credentials, payment, 'https://gw.example/webhooks/alipay/pva_1')),
      JSON.stringify(body),
    );
  });

  it('Order Code has no paymentMethodId; reference_merchant_id overrides our merchant id', () => {
    const body = payBody(
      {
        ...credentials,
        reference_merchant_id: 'shop-7',
        merchant_name: 'Drugstore',
        settlement_currency: 'USD',
      },
      paymentRequest({ mode: 'qr', payment_code: undefined }),
      'https://gw.example/n',
    );
    assert.deepEqual(body.paymentMethod, { paymentMethodType: 'CONNECT_WALLET' });
    assert.deepEqual(body.paymentFactor, { inStorePaymentScenario: 'OrderCode' });
    assert.deepEqual(body.settlementStrategy, { settlementCurrency: 'USD' });
    const order = body.order as { merchant: { referenceMerchantId: string; merchantName: string } };
    assert.equal(order.merchant.referenceMerchantId, 'shop-7');
    assert.equal(order.merchant.merchantName, 'Drugstore');
  });

  it("the wallet shows the merchant's name, not an id of ours, when the account names none", () => {
    const merchantOf = (body: Json) =>
      (body.order as { merchant: { referenceMerchantId: string; merchantName: string } }).merchant;
    const named = payBody(credentials, paymentRequest(), 'https://gw.example/n', { name: 'Drogerie Mitte' });
    assert.deepEqual(
      [merchantOf(named).referenceMerchantId, merchantOf(named).merchantName],
      ['mer_test', 'Drogerie Mitte'],
    );
    const own = payBody(
      { ...credentials, merchant_name: 'DM Berlin' },
      paymentRequest(),
      'https://gw.example/n',
      {
        name: 'Drogerie Mitte',
      },
    );
    assert.equal(merchantOf(own).merchantName, 'DM Berlin', "the account's own choice first");
  });
});
