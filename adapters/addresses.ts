/**
 * In production the gateway's own requests (a merchant's webhooks, a merchant's provider endpoint)
 * go to the public internet only: an address on loopback or a private network would let any
 * merchant key make the gateway POST to the services beside it (its own Redis and PostgreSQL among
 * them) and read what they answer. A name is checked when it is resolved for the request, not only
 * when the URL is configured, since its DNS may change afterwards.
 */
import { lookup as dnsLookup } from 'node:dns';
import net, { type LookupFunction } from 'node:net';

const notPublic = new net.BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  notPublic.addSubnet(network, prefix, 'ipv4');
for (const [network, prefix] of [
  // Unspecified, loopback and IPv4-compatible (::127.0.0.1), then IPv6 forms that carry an IPv4
  // address a gateway may route to: NAT64 and 6to4.
  ['::', 96],
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const)
  notPublic.addSubnet(network, prefix, 'ipv6');

/** Whether `address` (an IP address) is one a merchant's webhook may not be sent to. */
export function isNonPublicAddress(address: string): boolean {
  const family = net.isIP(address);
  if (family === 4) return notPublic.check(address, 'ipv4');
  if (family !== 6) return false;
  // An IPv4 address written as IPv6 (::ffff:127.0.0.1) reaches the IPv4 host.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? notPublic.check(mapped[1], 'ipv4') : notPublic.check(address, 'ipv6');
}

/** A URL's host that is plainly not public: localhost, or a literal non-public address. */
export function nonPublicHost(url: URL): boolean {
  // `localhost.` is localhost: a trailing dot only makes the name absolute.
  const host = url.hostname
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '')
    .toLowerCase();
  return host === 'localhost' || host.endsWith('.localhost') || isNonPublicAddress(host);
}

export class NonPublicAddressError extends Error {
  readonly code = 'EADDRNOTPUBLIC';
}

/** A DNS lookup for net.connect that refuses a name resolving to any non-public address. */
export const publicOnlyLookup: LookupFunction = (hostname, options, callback) => {
  dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, '', 0);
    const refused = addresses.find((a) => isNonPublicAddress(a.address));
    if (refused)
      return callback(
        new NonPublicAddressError(
          `${hostname} resolves to ${refused.address}, which is not a public address`,
        ),
        '',
        0,
      );
    if (options.all) return (callback as (e: null, a: typeof addresses) => void)(null, addresses);
    callback(null, addresses[0].address, addresses[0].family);
  });
};
