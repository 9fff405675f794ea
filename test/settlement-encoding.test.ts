/**
 * The UTF-8 guard in front of every settlement parser: files are streamed, so a character may be
 * cut in two by a chunk boundary, and must pass; bytes that are not UTF-8 must stop the file.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { test } from 'node:test';
import { Utf8Guard } from '../src/settlements/encoding.ts';

/** Streams `bytes` through a guard in chunks cut at the given offsets; what came out, and the guard's error. */
async function guarded(bytes: Buffer, cuts: number[]): Promise<{ out: string; error?: string }> {
  const chunks: Buffer[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    chunks.push(bytes.subarray(start, cut));
    start = cut;
  }
  const guard = new Utf8Guard();
  const out = await text(Readable.from(chunks, { objectMode: false }).pipe(guard));
  return { out, error: guard.error?.message };
}

test('characters of two, three and four bytes pass whole when any chunk boundary cuts them', async () => {
  const file = Buffer.from('store,München,€,😀,ok\n');
  for (let cut = 1; cut < file.length; cut++) {
    const { out, error } = await guarded(file, [cut]);
    assert.equal(error, undefined, `cut at byte ${cut}`);
    assert.equal(out, file.toString(), `cut at byte ${cut}`);
  }
  // Every byte its own chunk.
  const { out, error } = await guarded(file, [...file.keys()].slice(1));
  assert.equal(error, undefined);
  assert.equal(out, file.toString());
});

test('bytes that are not UTF-8 stop the file, wherever the chunks are cut', async () => {
  const cases: [string, Buffer, RegExp][] = [
    // The offset is the bad byte's, wherever the chunk it came in began.
    ['Latin-1', Buffer.from('store,M\xfcnchen\n', 'latin1'), /not valid UTF-8 \(byte offset 7\)/],
    ['a lone continuation byte', Buffer.from([0x61, 0x80, 0x62, 0x0a]), /not valid UTF-8 \(byte offset 1\)/],
    ['an overlong encoding', Buffer.from([0x61, 0xc0, 0xaf, 0x0a]), /not valid UTF-8 \(byte offset 1\)/],
    ['a surrogate', Buffer.from([0x61, 0xed, 0xa0, 0x80, 0x0a]), /not valid UTF-8 \(byte offset 1\)/],
    [
      'a character cut off at the end',
      Buffer.from([0x61, 0x2c, 0xe2, 0x82]),
      /ends inside a UTF-8 character/,
    ],
    // Latin-1 "ÿ" and "À" last in the file: bytes that start no UTF-8 character, not a cut-off one.
    ['a Latin-1 byte last', Buffer.from('a,\xff', 'latin1'), /not valid UTF-8 \(byte offset 2\)/],
    ['an overlong lead byte last', Buffer.from('a,\xc0', 'latin1'), /not valid UTF-8 \(byte offset 2\)/],
    ['a NUL byte', Buffer.from('a,\u0000,b\n'), /NUL byte at offset 2/],
  ];
  for (const [name, bytes, message] of cases)
    for (let cut = 1; cut < bytes.length; cut++) {
      const { error } = await guarded(bytes, [cut]);
      assert.match(error ?? '(passed)', message, `${name}, cut at byte ${cut}`);
    }
});
