/** Alipay and the Alipay+ wallets through Antom's AMS in-store API (docs: providers/alipay.md). */
import type { ProviderModule } from '../contract.ts';
import { alipayAdapter } from './adapter.ts';
import { startAlipaySimulator } from './simulator/index.ts';
import { defaultJournalPath } from './simulator/journal.ts';

export const alipayProvider: ProviderModule = {
  adapter: alipayAdapter,
  startSimulator: (options) => startAlipaySimulator(options),
  simulatorPortFile: (seed) => `${defaultJournalPath(seed)}.port`,
};
