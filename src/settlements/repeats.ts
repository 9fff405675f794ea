/**
 * The transactions a settlement file may name more than once, noticed while it is parsed, so that
 * the reconcile job looks for duplicates among these few lines instead of grouping every line of
 * the file (a hash aggregate of a million text keys costs more than matching them to payments).
 *
 * A Bloom filter of fixed size: a key whose bits were all set already may have come before. Every
 * key that does repeat is reported (no false negatives), with a few that do not, which the job's
 * exact count weeds out. Past LIMIT candidates (a file with many repeats, or one so large that the
 * filter fills up) the list stops and the job groups every line instead, as it would without it.
 */
const BITS_LOG2 = 26; // 2^26 bits, 8 MiB: ~100 false candidates at a million lines
const MASK = (1 << BITS_LOG2) - 1;
const PROBES = 3;
const LIMIT = 100_000;

export class RepeatFilter {
  private readonly bits = new Int32Array(1 << (BITS_LOG2 - 5));
  readonly types: string[] = [];
  readonly references: string[] = [];
  /** Too many candidates to list: the job must look at every line. */
  overflowed = false;

  constructor(private readonly limit = LIMIT) {}

  add(type: string, reference: string): void {
    if (this.overflowed) return;
    // Two independent 32-bit hashes (FNV-1a and a multiply-xorshift), the probes spread by double hashing.
    let h1 = 0x811c9dc5 ^ type.charCodeAt(0);
    let h2 = 0x9747b28c ^ type.length;
    for (let i = 0; i < reference.length; i++) {
      const c = reference.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 ^= h2 >>> 15;
    }
    h2 |= 1;
    let seen = true;
    for (let probe = 0; probe < PROBES; probe++) {
      const bit = (h1 + Math.imul(probe, h2)) & MASK;
      const word = bit >>> 5;
      const flag = 1 << (bit & 31);
      if ((this.bits[word] & flag) === 0) {
        seen = false;
        this.bits[word] |= flag;
      }
    }
    if (!seen) return;
    if (this.types.length >= this.limit) {
      this.overflowed = true;
      this.types.length = 0;
      this.references.length = 0;
      return;
    }
    this.types.push(type);
    this.references.push(reference);
  }
}
