import type { ProviderModule } from '../contract.ts';
import { sandboxAdapter } from './adapter.ts';
import { startSandboxSimulator } from './simulator.ts';

export const sandboxProvider: ProviderModule = {
  adapter: sandboxAdapter,
  startSimulator: startSandboxSimulator,
};
