/**
 * The sandbox: each provider's simulator, started on first use in this process (or shared
 * between processes through SANDBOX_SIMULATOR_URL_<PROVIDER>), and the stable seed every
 * sandbox key is derived from, so sandbox accounts survive a restart.
 */
import type { SandboxEnvironment, SimulatorHandle } from '../../adapters/contract.ts';
import { providerModule } from '../../adapters/index.ts';
import type { Config } from '../config.ts';
import { deriveSecret } from '../secrets.ts';

export class SandboxRuntime {
  private readonly simulators = new Map<string, Promise<SimulatorHandle>>();
  readonly seed: Buffer;

  constructor(private readonly config: Config) {
    this.seed = deriveSecret(config.masterKey, 'sandbox-seed');
  }

  env(provider: string): SandboxEnvironment {
    return {
      seed: this.seed,
      latency_ms: this.config.sandboxLatencyMs,
      simulatorUrl: () => this.simulatorUrl(provider),
    };
  }

  async simulatorUrl(provider: string): Promise<string> {
    const shared = this.config.simulatorUrls[provider];
    if (shared) return shared;
    let handle = this.simulators.get(provider);
    if (!handle) {
      const start = providerModule(provider)?.startSimulator;
      if (!start) throw new Error(`provider ${provider} has no simulator`);
      handle = start({
        seed: this.seed,
        latency_ms: this.config.sandboxLatencyMs,
        time_scale: this.config.sandboxTimeScale,
      });
      this.simulators.set(provider, handle);
      handle.catch(() => this.simulators.delete(provider));
    }
    return (await handle).url;
  }

  async close(): Promise<void> {
    const handles = [...this.simulators.values()];
    this.simulators.clear();
    await Promise.all(handles.map(async (h) => (await h.catch(() => undefined))?.close()));
  }
}
