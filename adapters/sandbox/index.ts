import type { ProviderModule } from '../contract.ts';
import { sandboxAdapter } from './adapter.ts';
import { sandboxSimulatorPortFile, startSandboxSimulator } from './simulator.ts';

export const sandboxProvider: ProviderModule = {
  adapter: sandboxAdapter,
  startSimulator: startSandboxSimulator,
  simulatorPortFile: sandboxSimulatorPortFile,
};
