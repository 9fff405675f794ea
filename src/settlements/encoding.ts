/**
 * Settlement files must be UTF-8. csv-parse would quietly turn invalid bytes into U+FFFD, so a
 * Latin-1 or UTF-16 export would be imported with mangled store names and references; this guard
 * checks the bytes on their way to the adapter's parser and stops the file at the first bad one.
 */
import { isUtf8 } from 'node:buffer';
import { Transform, type TransformCallback } from 'node:stream';
import { SettlementFormatError } from '../../adapters/contract.ts';

/**
 * Where a UTF-8 character cut off by the end of `bytes` begins (bytes.length when none is): that
 * tail waits for the next chunk, everything before it is checked now.
 */
function completeLength(bytes: Buffer): number {
  let lead = bytes.length - 1;
  // Back over at most three continuation bytes (10xxxxxx) to the character's first byte.
  while (lead >= 0 && bytes.length - lead <= 3 && (bytes[lead] & 0xc0) === 0x80) lead--;
  // Only C2..F4 start a character; any other byte is refused by isUtf8 at once, not held back.
  if (lead < 0 || bytes[lead] < 0xc2 || bytes[lead] > 0xf4) return bytes.length;
  const needed = bytes[lead] >= 0xf0 ? 4 : bytes[lead] >= 0xe0 ? 3 : 2;
  return bytes.length - lead < needed ? lead : bytes.length;
}

/** The offset of the first byte that is not part of valid UTF-8 (only looked for once isUtf8 said no). */
function firstInvalid(bytes: Buffer): number {
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i];
    if (lead < 0x80) {
      i++;
      continue;
    }
    const more =
      lead >= 0xc2 && lead <= 0xdf
        ? 1
        : lead >= 0xe0 && lead <= 0xef
          ? 2
          : lead >= 0xf0 && lead <= 0xf4
            ? 3
            : 0;
    if (!more || i + more >= bytes.length) return i;
    const second = bytes[i + 1];
    // Overlong forms, surrogates and code points past U+10FFFF, as isUtf8 refuses them.
    if ((lead === 0xe0 && second < 0xa0) || (lead === 0xed && second > 0x9f)) return i;
    if ((lead === 0xf0 && second < 0x90) || (lead === 0xf4 && second > 0x8f)) return i;
    for (let k = 1; k <= more; k++) if ((bytes[i + k] & 0xc0) !== 0x80) return i;
    i += more + 1;
  }
  return bytes.length;
}

export class Utf8Guard extends Transform {
  /** The start of a character whose remaining bytes are in the next chunk. */
  private carry: Buffer = Buffer.alloc(0);
  private offset = 0;
  private first = true;
  /** Set when the file was stopped; the importer reports it in preference to what the parser says next. */
  error?: SettlementFormatError;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    if (this.error) return done();
    if (this.first) {
      this.first = false;
      if (
        chunk.length >= 2 &&
        ((chunk[0] === 0xff && chunk[1] === 0xfe) || (chunk[0] === 0xfe && chunk[1] === 0xff))
      )
        return this.stop('the file is UTF-16 encoded; settlement files must be UTF-8');
    }
    const nul = chunk.indexOf(0);
    if (nul >= 0)
      return this.stop(`the file contains a NUL byte at offset ${this.offset + nul}; it is not UTF-8 text`);
    // Checked without decoding: the parser decodes the text itself.
    const bytes = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const complete = completeLength(bytes);
    if (!isUtf8(bytes.subarray(0, complete)))
      return this.stop(
        `the file is not valid UTF-8 (byte offset ${this.offset - this.carry.length + firstInvalid(bytes.subarray(0, complete))}); export it as UTF-8`,
      );
    this.carry = Buffer.from(bytes.subarray(complete));
    this.offset += chunk.length;
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (!this.error && this.carry.length)
      this.error = new SettlementFormatError('the file ends inside a UTF-8 character (truncated?)');
    done();
  }

  /** Ends the stream early rather than erroring it: not every parser forwards errors of its source. */
  private stop(message: string): void {
    this.error = new SettlementFormatError(message);
    this.push(null);
  }
}
