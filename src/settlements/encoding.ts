/**
 * Settlement files must be UTF-8. csv-parse would quietly turn invalid bytes into U+FFFD, so a
 * Latin-1 or UTF-16 export would be imported with mangled store names and references; this guard
 * checks the bytes on their way to the adapter's parser and stops the file at the first bad one.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { SettlementFormatError } from '../../adapters/contract.ts';

export class Utf8Guard extends Transform {
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
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
    try {
      this.decoder.decode(chunk, { stream: true });
    } catch {
      return this.stop(`the file is not valid UTF-8 (near byte offset ${this.offset}); export it as UTF-8`);
    }
    this.offset += chunk.length;
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (!this.error) {
      try {
        this.decoder.decode();
      } catch {
        this.error = new SettlementFormatError('the file ends inside a UTF-8 character (truncated?)');
      }
    }
    done();
  }

  /** Ends the stream early rather than erroring it: not every parser forwards errors of its source. */
  private stop(message: string): void {
    this.error = new SettlementFormatError(message);
    this.push(null);
  }
}
