/** Antom response and notification bodies built from ledger records (alipay.md §4.5, §6, §8, §10). */
import type { Money } from '../../../src/payments/money.ts';
import { currencyFromCode } from '../../../src/payments/money.ts';
import type { Json } from '../mapping.ts';
import { isoTime } from '../signature.ts';
import { fxOf, type PaymentRecord, type RefundRecord } from './ledger.ts';
import type { SimulatorSwitches } from './switches.ts';

const NUMERIC: Record<string, string> = {};

function numericCode(alpha: string): string {
  if (!NUMERIC[alpha]) {
    // money.ts maps numeric → alpha; search the other way once per currency.
    for (let n = 1; n < 1000; n++) {
      if (currencyFromCode(String(n)) === alpha) {
        NUMERIC[alpha] = String(n).padStart(3, '0');
        break;
      }
    }
  }
  return NUMERIC[alpha] ?? alpha;
}

export class Renderer {
  constructor(private readonly switches: SimulatorSwitches) {}

  result(status: 'S' | 'F' | 'U', code: string, message: string): Json {
    return { resultCode: code, resultStatus: status, resultMessage: message };
  }

  amount(money: Money): Json {
    return {
      currency: money.currency,
      value: this.switches.json_numbers ? money.value : String(money.value),
    };
  }

  quote(from: string, to: string, price: string): Json {
    const pair = this.switches.numeric_pair ? `${numericCode(from)}/${numericCode(to)}` : `${from}/${to}`;
    return {
      guaranteed: this.switches.json_numbers ? false : 'false',
      quoteCurrencyPair: pair,
      quotePrice: this.switches.json_numbers ? Number(price) : price,
    };
  }

  /** The payment's facts as Antom reports them once paid. */
  paidFacts(record: PaymentRecord): Json {
    if (!record.paidAt) return {};
    const fx = fxOf(record);
    return {
      paymentTime: isoTime(record.paidAt),
      actualPaymentAmount: this.amount(fx.customer),
      paymentQuote: this.quote(record.amount.currency, fx.customer.currency, fx.rate),
      grossSettlementAmount: this.amount(fx.settlement),
      ...(record.settlementCurrency !== record.amount.currency
        ? {
            settlementQuote: this.quote(record.amount.currency, record.settlementCurrency, fx.settlementRate),
          }
        : {}),
      pspCustomerInfo: {
        pspName: fx.psp,
        pspCustomerId: `2088${record.paymentId.slice(-12)}`,
        displayCustomerId: 'tou***@sandbox.example',
      },
    };
  }

  base(record: PaymentRecord): Json {
    return {
      paymentRequestId: record.paymentRequestId,
      paymentId: record.paymentId,
      paymentAmount: this.amount(record.amount),
      paymentCreateTime: isoTime(record.createdAt),
    };
  }

  /** The `pay` answer for the record's current state. */
  pay(record: PaymentRecord, walletUrl: string): Json {
    if (record.scenario === 'OrderCode' && record.status !== 'CANCELLED') {
      if (this.switches.order_code_unknown)
        return {
          result: this.result('U', 'PAYMENT_IN_PROCESS', 'The payment is being processed.'),
          ...this.base(record),
        };
      return {
        result: this.result('S', 'SUCCESS', 'success.'),
        ...this.base(record),
        orderCodeForm: {
          codeDetails: [{ codeValue: walletUrl, codeValueType: 'QRCODE', displayType: 'TEXT' }],
          ...(record.expiresAt ? { expireTime: isoTime(record.expiresAt) } : {}),
        },
      };
    }
    switch (record.status) {
      case 'SUCCESS':
        return {
          result: this.result('S', 'SUCCESS', 'success.'),
          ...this.base(record),
          ...this.paidFacts(record),
        };
      case 'PROCESSING':
        return {
          result: this.result('U', 'PAYMENT_IN_PROCESS', 'The payment is being processed.'),
          ...this.base(record),
        };
      default:
        return { result: this.result('F', record.resultCode, record.resultMessage), ...this.base(record) };
    }
  }

  inquiry(record: PaymentRecord): Json {
    return {
      result: this.result('S', 'SUCCESS', 'Success'),
      paymentStatus: record.status,
      paymentResultCode: record.status === 'PROCESSING' ? 'PAYMENT_IN_PROCESS' : record.resultCode,
      paymentResultMessage: record.resultMessage,
      ...this.base(record),
      ...this.paidFacts(record),
    };
  }

  cancel(record: PaymentRecord): Json {
    return {
      result: this.result('S', 'SUCCESS', 'success'),
      paymentId: record.paymentId,
      paymentRequestId: record.paymentRequestId,
      cancelTime: isoTime(record.cancelledAt ?? new Date()),
    };
  }

  refund(refund: RefundRecord): Json {
    if (refund.status === 'FAIL') {
      return {
        result: this.result('F', refund.resultCode, refund.resultMessage),
        refundRequestId: refund.refundRequestId,
      };
    }
    return {
      result: this.result('S', 'SUCCESS', 'success'),
      paymentId: refund.paymentId,
      refundId: refund.refundId,
      refundRequestId: refund.refundRequestId,
      refundAmount: this.amount(refund.amount),
      ...(refund.status === 'PROCESSING'
        ? { isAsyncRefund: true }
        : {
            refundTime: isoTime(refund.refundedAt ?? new Date()),
            grossSettlementAmount: this.amount(refund.amount),
          }),
    };
  }

  refundInquiry(refund: RefundRecord): Json {
    return {
      result: this.result('S', 'SUCCESS', 'success'),
      refundId: refund.refundId,
      refundRequestId: refund.refundRequestId,
      refundAmount: this.amount(refund.amount),
      refundStatus: refund.status,
      ...(refund.status === 'FAIL'
        ? { refundResultCode: refund.resultCode, refundResultMessage: refund.resultMessage }
        : {}),
      ...(refund.refundedAt ? { refundTime: isoTime(refund.refundedAt) } : {}),
    };
  }

  /**
   * notifyPayment body (§10) `PAYMENT_PENDING`: the customer has scanned and is confirming. Its
   * result is S, which with this notifyType means "being processed", not "paid"
   * (https://docs.antom.com/ac/autodebit_en/notifications).
   */
  pendingNotification(record: PaymentRecord): Json {
    return {
      notifyType: 'PAYMENT_PENDING',
      result: this.result('S', 'SUCCESS', 'success'),
      ...this.base(record),
    };
  }

  /** notifyPayment body (§10): `PAYMENT_RESULT` with result S (paid) or F (failed). */
  notification(record: PaymentRecord): Json {
    const paid = record.status === 'SUCCESS';
    return {
      notifyType: 'PAYMENT_RESULT',
      result: paid
        ? this.result('S', 'SUCCESS', 'success.')
        : this.result('F', record.resultCode, record.resultMessage),
      ...this.base(record),
      ...this.paidFacts(record),
    };
  }
}
