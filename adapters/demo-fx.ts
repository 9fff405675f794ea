/**
 * The simulators' exchange: customer amounts in CNY (or HKD for Alipay HK) and settlement amounts,
 * from fixed demo rates, rounded half up to the minor unit on integers (alipay.md §15.6).
 */
import { currencyExponent, type Money } from '../src/payments/money.ts';

/** Units of `to` per unit of `from`, as decimal strings. */
const RATES: Record<string, Record<string, string>> = {
  CNY: {
    EUR: '7.7140',
    USD: '7.1200',
    GBP: '9.0500',
    JPY: '0.0476',
    HKD: '0.9130',
    MOP: '0.8815',
    CHF: '8.1500',
  },
  HKD: {
    EUR: '8.4500',
    USD: '7.8000',
    GBP: '9.9100',
    JPY: '0.0521',
    CNY: '1.0953',
    MOP: '0.9655',
    CHF: '8.9200',
  },
  EUR: {
    USD: '0.9200',
    GBP: '1.1700',
    JPY: '0.0062',
    HKD: '0.1183',
    CNY: '0.1296',
    MOP: '0.1143',
    CHF: '1.0600',
  },
};

export function rateFor(from: string, to: string): string {
  if (from === to) return '1';
  return RATES[to]?.[from] ?? '1.0000';
}

/** amount × rate, converted between the currencies' exponents, rounded half up. */
export function convert(amount: Money, to: string, rate: string): Money {
  const [whole, fraction = ''] = rate.split('.');
  const rateDigits = BigInt(whole + fraction);
  let numerator = BigInt(amount.value) * rateDigits;
  let denominator = 10n ** BigInt(fraction.length);
  const shift = currencyExponent(to) - currencyExponent(amount.currency);
  if (shift > 0) numerator *= 10n ** BigInt(shift);
  if (shift < 0) denominator *= 10n ** BigInt(-shift);
  const rounded = (numerator * 2n + denominator) / (2n * denominator);
  return { value: Number(rounded), currency: to };
}
