import fc from 'fast-check';
import { expect, it } from 'vitest';
import { CairnError } from './core/errors.js';
import { parseElementsYaml } from './yaml.js';

it('any YAML text either parses into mappings or fails with a typed INVALID_YAML', () => {
  const yamlish = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc
      .array(
        fc.constantFrom(
          'element_type: sql',
          'slug: x',
          'spec:',
          '  query: "select 1"',
          '  - a',
          '---',
          ': :',
          '\t',
          '&a [*a]',
          '{',
          ']',
          '"',
          "'",
          '? x',
          '!!binary x',
          'a: &b c',
          'd: *b',
          '- - -',
        ),
        { maxLength: 12 },
      )
      .map((l) => l.join('\n')),
  );
  fc.assert(
    fc.property(yamlish, (text) => {
      try {
        const docs = parseElementsYaml(text, 'f.yaml');
        expect(docs.length).toBeGreaterThan(0);
        for (const d of docs) expect(typeof d === 'object' && d !== null && !Array.isArray(d)).toBe(true);
      } catch (e) {
        expect(e).toBeInstanceOf(CairnError);
        expect((e as CairnError).code).toBe('INVALID_YAML');
        expect((e as CairnError).suggestion.length).toBeGreaterThan(0);
      }
    }),
    { numRuns: 2000, seed: 7 },
  );
});

it('names the line of a YAML error and reads several documents', () => {
  expect(() => parseElementsYaml('element_type: sql\nslug: x\n  spec: [\n', 'bad.yaml')).toThrowError(
    /bad\.yaml:2:7: Nested mappings/,
  );
  expect(parseElementsYaml('a: 1\n---\nb: 2\n')).toEqual([{ a: 1 }, { b: 2 }]);
  const laughs = [
    'a: &a [x, x, x, x, x, x, x, x, x]',
    'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]',
    'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]',
    'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]',
    'e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]',
  ].join('\n');
  expect(() => parseElementsYaml(laughs)).toThrowError(/alias/i);
  expect(() => parseElementsYaml('a: *nope')).toThrowError(CairnError);
});
