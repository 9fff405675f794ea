/** The filter that lists a settlement file's possible repeats while it is parsed (repeats.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RepeatFilter } from '../src/settlements/repeats.ts';

test('every transaction seen twice is listed, by type, with few that were not', () => {
  const filter = new RepeatFilter();
  const repeated = new Set<string>();
  for (let i = 0; i < 200_000; i++) {
    filter.add('payment', `sbx_${i}`);
    // A refund shares its payment's id in some formats: another type is another transaction.
    if (i % 1000 === 0) filter.add('refund', `sbx_${i}`);
    if (i % 997 === 0) {
      filter.add('payment', `sbx_${i}`);
      repeated.add(`sbx_${i}`);
    }
  }
  const listed = filter.references.filter((_, n) => filter.types[n] === 'payment');
  for (const reference of repeated) assert.ok(listed.includes(reference), `${reference} is listed`);
  assert.ok(!filter.overflowed);
  const falseOnes = filter.references.length - repeated.size;
  assert.ok(falseOnes < 50, `${falseOnes} candidates that never repeated`);
});

test('past its limit the filter gives up its list, and says so', () => {
  const filter = new RepeatFilter(3);
  for (let i = 0; i < 3; i++) filter.add('payment', 'same');
  assert.deepEqual(filter.references, ['same', 'same']);
  assert.equal(filter.overflowed, false);
  filter.add('payment', 'same');
  filter.add('payment', 'same');
  assert.equal(filter.overflowed, true);
  assert.deepEqual(filter.references, []);
});
