/** Which wallet a scanned code belongs to, and which provider account takes the payment. */
import type { Wallet } from '../../adapters/contract.ts';

/**
 * WeChat Pay: 18 digits starting 10–15 (15 = Hong Kong users, who cannot pay cross-border but
 * are still WeChat codes). Alipay: 16–24 digits starting 25–30. Anything else goes to Antom,
 * which decides whether an Alipay+ wallet accepts it (PROVIDERS.md).
 */
export function walletForPaymentCode(code: string): Wallet {
  if (/^1[0-5]\d{16}$/.test(code)) return 'wechatpay';
  if (/^(2[5-9]|30)\d{14,22}$/.test(code)) return 'alipay';
  return 'alipayplus';
}
