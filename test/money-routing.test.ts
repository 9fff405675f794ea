import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { sandboxAdapter } from '../adapters/sandbox/adapter.ts';
import {
  currencyExponent,
  currencyFromCode,
  isCurrency,
  majorToMinor,
  minorToMajor,
} from '../src/payments/money.ts';
import { walletForPaymentCode } from '../src/payments/routing.ts';
import { resolutionWindowS } from '../src/payments/service.ts';

describe('money', () => {
  test('ISO 4217 exponents', () => {
    assert.equal(currencyExponent('EUR'), 2);
    assert.equal(currencyExponent('JPY'), 0);
    assert.equal(currencyExponent('KRW'), 0);
    assert.equal(currencyExponent('KWD'), 3);
    assert.equal(currencyExponent('BHD'), 3);
    assert.equal(currencyExponent('CLF'), 4);
    assert.ok(!isCurrency('XYZ'));
    assert.ok(!isCurrency('XAU'), 'metals have no minor unit and are not payment currencies');
  });

  test('every currency in use is known: the ones ICU knows, less units of account and the kuna', () => {
    // ICU lists the currencies in circulation; XDR and XSU are units of account, not paid in, and
    // HRK left ISO 4217 when Croatia took the euro (2023).
    const notPaidIn = new Set(['XDR', 'XSU', 'HRK']);
    const unknown = Intl.supportedValuesOf('currency').filter(
      (code) => !notPaidIn.has(code) && !isCurrency(code),
    );
    assert.deepEqual(unknown, []);
    assert.equal(currencyExponent('TRY'), 2);
    assert.equal(currencyFromCode('949'), 'TRY');
  });

  test('numeric and alphabetic codes', () => {
    assert.equal(currencyFromCode('446'), 'MOP');
    assert.equal(currencyFromCode('156'), 'CNY');
    assert.equal(currencyFromCode('978'), 'EUR');
    assert.equal(currencyFromCode('36'), 'AUD');
    assert.equal(currencyFromCode('hkd'), 'HKD');
    assert.equal(currencyFromCode('999'), undefined);
  });

  test('major ⇄ minor without floats', () => {
    assert.equal(majorToMinor('19.99', 'EUR'), 1999);
    assert.equal(majorToMinor('0.1', 'EUR'), 10);
    assert.equal(majorToMinor('500', 'JPY'), 500);
    assert.equal(majorToMinor('1.250', 'KWD'), 1250);
    assert.equal(majorToMinor('-3.50', 'EUR'), -350);
    assert.equal(majorToMinor('1.10', 'EUR'), 110);
    assert.throws(() => majorToMinor('1.5', 'JPY'), /more decimals/);
    assert.throws(() => majorToMinor('1.999', 'EUR'), /more decimals/);
    assert.throws(() => majorToMinor('1e3', 'EUR'), /not a decimal/);
    assert.equal(minorToMajor(1999, 'EUR'), '19.99');
    assert.equal(minorToMajor(5, 'EUR'), '0.05');
    assert.equal(minorToMajor(500, 'JPY'), '500');
    assert.equal(minorToMajor(1250, 'KWD'), '1.250');
    assert.equal(minorToMajor(-350, 'EUR'), '-3.50');
    for (const value of [0, 1, 99, 100, 123456789, 9007199254740991]) {
      assert.equal(majorToMinor(minorToMajor(value, 'EUR'), 'EUR'), value);
    }
  });
});

describe('routing', () => {
  test('wallet detection from the payment code', () => {
    assert.equal(walletForPaymentCode('134567890123456789'), 'wechatpay');
    assert.equal(walletForPaymentCode('154567890123456789'), 'wechatpay');
    assert.equal(walletForPaymentCode('164567890123456789'), 'alipayplus', '16 is not a WeChat prefix');
    assert.equal(walletForPaymentCode('286714335246118790'), 'alipay');
    assert.equal(walletForPaymentCode('2567143352461187'), 'alipay', '16 digits');
    assert.equal(walletForPaymentCode('301234567890123456789012'), 'alipay', '24 digits');
    assert.equal(walletForPaymentCode('3012345678901234567890123'), 'alipayplus', '25 digits is not Alipay');
    assert.equal(walletForPaymentCode('2412345678901234'), 'alipayplus');
    assert.equal(walletForPaymentCode('1345678901234567'), 'alipayplus', 'WeChat codes have 18 digits');
  });

  test('the resolution window is clamped to the provider’s bounds', () => {
    const policy = sandboxAdapter.resolution;
    assert.equal(resolutionWindowS(policy, 'scan', undefined), policy.window_s.default);
    assert.equal(resolutionWindowS(policy, 'scan', 1), policy.window_s.min);
    assert.equal(resolutionWindowS(policy, 'scan', 100_000), policy.window_s.max);
    assert.equal(resolutionWindowS(policy, 'qr', 5), policy.qr_window_s);
  });
});
