/** Alipay and the Alipay+ wallets through Antom's AMS in-store API (docs: providers/alipay.md). */
import type { ProviderModule } from '../contract.ts';
import { alipayAdapter } from './adapter.ts';
import { startAlipaySimulator } from './simulator/index.ts';

export const alipayProvider: ProviderModule = {
  adapter: alipayAdapter,
  startSimulator: (options) => startAlipaySimulator(options),
};
