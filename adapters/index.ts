/** The provider registry: adding a provider is one line here. */
import { alipayProvider } from './alipay/index.ts';
import type { ProviderModule } from './contract.ts';
import { sandboxProvider } from './sandbox/index.ts';

export const providers: Record<string, ProviderModule> = {
  sandbox: sandboxProvider,
  alipay: alipayProvider,
};

export function providerModule(name: string): ProviderModule | undefined {
  return Object.hasOwn(providers, name) ? providers[name] : undefined;
}
