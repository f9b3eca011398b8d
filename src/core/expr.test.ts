import { describe, expect, it } from 'vitest';
import { compileExpr, compileTemplate, evalExpr, ExprError, exprsOf, renderTemplate } from './expr.js';

const scope = {
  parameters: { n: 3, name: 'ann', ratio: 0.5 },
  steps: {
    add: { output: { rows: [{ n: 12 }] }, files: { 'report.csv': 'sha256:ab' } },
    list: { output: { rows: [{ name: 'a' }, { name: 'b' }] } },
  },
  run: { id: 'r1' },
};

describe('expressions (CEL)', () => {
  it('keeps JSON types for a whole expression and interpolates inside a string', () => {
    expect(renderTemplate(compileTemplate('${{ parameters.n * 2 }}'), scope)).toBe(6);
    expect(renderTemplate(compileTemplate('${{ steps.add.output.rows[0].n > 10 }}'), scope)).toBe(true);
    expect(renderTemplate(compileTemplate('${{ steps.list.output.rows }}'), scope)).toEqual([
      { name: 'a' },
      { name: 'b' },
    ]);
    expect(
      renderTemplate(compileTemplate('n=${{ parameters.n }}, rows=${{ steps.list.output.rows }}'), scope),
    ).toBe('n=3, rows=[{"name":"a"},{"name":"b"}]');
    expect(renderTemplate(compileTemplate({ a: ['${{ parameters.name }}', 1], b: 'plain' }), scope)).toEqual({
      a: ['ann', 1],
      b: 'plain',
    });
    expect(renderTemplate(compileTemplate("${{ steps.add.files['report.csv'] }}"), scope)).toBe('sha256:ab');
    expect(renderTemplate(compileTemplate('${{ parameters.ratio * 2.0 }}'), scope)).toBe(1);
    expect(renderTemplate(compileTemplate('${{ steps.list.output.rows.map(r, r.name) }}'), scope)).toEqual([
      'a',
      'b',
    ]);
  });

  it('knows which steps an expression reads, by member or by index', () => {
    const e = compileExpr("steps.add.output.rows[0].n + size(steps['sign-off'].output) + parameters.n");
    expect([...e.steps].sort()).toEqual(['add', 'sign-off']);
    expect([...e.roots].sort()).toEqual(['parameters', 'steps']);
    const t = compileTemplate({ x: '${{ steps.a.output }}', y: ['${{ steps.b.output }} and ${{ item }}'] });
    expect(
      exprsOf(t)
        .flatMap((x) => [...x.steps])
        .sort(),
    ).toEqual(['a', 'b']);
    // A macro's own variable is not a root.
    expect([...compileExpr('steps.list.output.rows.map(r, r.name)').roots]).toEqual(['steps']);
  });

  it('refuses what it may not evaluate, at compile time', () => {
    for (const bad of [
      'parameters.n +', // does not parse
      'process.env.HOME', // not a root
      'this.constructor', // not a root
      'steps[parameters.name].output', // a computed step name
      'parameters.l.map(x, parameters.l.map(y, y))', // nested macros: unbounded work
      'parameters.n' + ' + 1'.repeat(400), // beyond the size limit
    ]) {
      expect(() => compileExpr(bad), bad).toThrow(ExprError);
    }
    expect(() => compileTemplate('${{ parameters.n')).toThrow(ExprError);
    expect(() => compileTemplate('${{   }}')).toThrow(ExprError);
  });

  it('fails a bad evaluation with a typed error, never with a prototype or a host value', () => {
    const missing = compileExpr('steps.nope.output');
    expect(() => evalExpr(missing, scope)).toThrow(ExprError);
    expect(() => evalExpr(compileExpr('parameters.__proto__'), scope)).toThrow(ExprError);
    expect(() => evalExpr(compileExpr('parameters.constructor'), scope)).toThrow(ExprError);
    expect(() => evalExpr(compileExpr('parameters.n + 1.5'), scope)).toThrow(ExprError); // int + double: no overload
    expect(() => evalExpr(compileExpr('9007199254740991 + 1'), scope)).toThrow(/2\^53/);
  });

  it('reads only the roots its use allows: a workflow its own, a trigger what it received', () => {
    expect(() => compileExpr('body.action')).toThrow(/reads "body"/);
    const hook = compileTemplate({ action: '${{ body.action }}', sig: "${{ headers['x-sig'] }}" }, [
      'body',
      'headers',
    ]);
    expect(renderTemplate(hook, { body: { action: 'opened' }, headers: { 'x-sig': 'v1' } })).toEqual({
      action: 'opened',
      sig: 'v1',
    });
    expect(() => compileTemplate('${{ steps.a.output }}', ['body'])).toThrow(
      /reads "steps", which is not body/,
    );
    expect(
      renderTemplate(compileTemplate('${{ upstream.output.n + 1 }}', ['upstream']), {
        upstream: { output: { n: 1 } },
      }),
    ).toBe(2);
  });
});
