import * as cedarWasm from '@cedar-policy/cedar-wasm/nodejs';
import { describe, expect, it } from 'vitest';
import { CairnError } from '../../core/errors.js';
import {
  authorize,
  cedarEntityType,
  cedarSchema,
  checkPolicies,
  DEFAULT_POLICY_ID,
  policySetHash,
  type AuthzRequest,
  type PolicyDiagnostic,
  type PolicyInput,
} from './cedar.js';

const types = [
  { type: 'go-fn', category: 'actions' },
  { type: 'sql', category: 'data' },
  { type: 'hitl', category: 'flows' },
  { type: 'workflow', category: 'flows' },
];
const schema = cedarSchema(types);

function errorOf(fn: () => unknown): CairnError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CairnError) return e;
    throw e;
  }
  throw new Error('expected a CairnError');
}

function diagnosticsOf(e: CairnError): PolicyDiagnostic[] {
  return (e.details as { diagnostics: PolicyDiagnostic[] }).diagnostics;
}

const NOW = Date.UTC(2025, 0, 15, 14, 30) / 1000;

function request(over: Partial<AuthzRequest> = {}, context: Record<string, unknown> = {}): AuthzRequest {
  return {
    principal: { kind: 'token', name: 'ci', role: 'editor' },
    action: 'run',
    resource: {
      circle: 'acme',
      type: 'go-fn',
      slug: 'resize',
      category: 'actions',
      price: 100,
      side_effects: true,
    },
    ...over,
    context: {
      trigger: 'api',
      mode: 'live',
      operation: 'invoke',
      estimated_cost: 100,
      now: NOW,
      hour_utc: 14,
      input: { limit: 5, name: 'x' },
      ...context,
    },
  };
}

/** A policy element as the caller hands it over, after checkPolicies accepted it. */
function element(slug: string, text: string, patches: PolicyInput['patches'] = {}): PolicyInput {
  checkPolicies(text, patches, schema);
  return { element: slug, text, patches };
}

describe('cedarSchema', () => {
  it('names element entity types in PascalCase', () => {
    expect(cedarEntityType('go-fn')).toBe('GoFn');
    expect(cedarEntityType('sql')).toBe('Sql');
    expect(cedarEntityType('hitl')).toBe('Hitl');
    expect(cedarEntityType('go_fn')).toBe('GoFn');
  });

  it('is a schema Cedar accepts, with the entity types and actions of the design', () => {
    expect(cedarWasm.checkParseSchema(schema as cedarWasm.Schema)).toEqual({ type: 'success' });
    const text = cedarWasm.schemaToText(schema as cedarWasm.Schema);
    expect(text.type).toBe('success');
    const ns = (schema as Record<string, { entityTypes: Record<string, unknown>; actions: object }>).Cairn!;
    expect(Object.keys(ns.entityTypes).sort()).toEqual(
      ['Circle', 'GoFn', 'Hitl', 'Role', 'Sql', 'Token', 'Trigger', 'Workflow'].sort(),
    );
    expect(Object.keys(ns.actions).sort()).toEqual(['replay', 'retry', 'run']);
    expect(cedarWasm.checkParseSchema(cedarSchema([]) as cedarWasm.Schema)).toEqual({ type: 'success' });
  });

  it('refuses element types that collide with a fixed entity type or with each other', () => {
    expect(errorOf(() => cedarSchema([{ type: 'circle', category: 'data' }])).errorClass).toBe('internal');
    expect(
      errorOf(() =>
        cedarSchema([
          { type: 'go-fn', category: 'actions' },
          { type: 'go_fn', category: 'actions' },
        ]),
      ).message,
    ).toContain('already taken');
    expect(errorOf(() => cedarSchema([{ type: '9lives', category: 'data' }])).errorClass).toBe('internal');
  });
});

describe('checkPolicies', () => {
  it('answers the @ids of a valid text, in source order', () => {
    const text = `
      @id("no-night") @reason("no runs at night")
      forbid(principal, action == Cairn::Action::"run", resource is Cairn::GoFn)
      when { context.hour_utc < 6 };

      // editors may run cheap things
      @id("cheap")
      permit(principal in Cairn::Role::"editor", action in [Cairn::Action::"run", Cairn::Action::"retry"], resource in Cairn::Circle::"acme")
      when { resource.price <= 1000 && context.estimated_cost < 5000 && principal is Cairn::Token && principal.name like "ci*" };

      @id("replays")
      forbid(principal is Cairn::Trigger, action == Cairn::Action::"replay", resource)
      when { context.side_effects && context.original_age_s > 86400 && context.side_effect_tasks.contains("charge") && principal.type == "cron" };
    `;
    expect(checkPolicies(text, { cheap: [{ op: 'replace', path: '/limit', value: 10 }] }, schema)).toEqual({
      ids: ['no-night', 'cheap', 'replays'],
      warnings: [],
    });
  });

  it('maps Cedar’s policy numbers back to @ids beyond ten policies', () => {
    const many = Array.from(
      { length: 12 },
      (_, i) => `@id("p${i}") forbid(principal, action, resource) when { context.hour_utc == ${i} };`,
    );
    expect(checkPolicies(many.join('\n'), undefined, schema).ids).toEqual(many.map((_, i) => `p${i}`));
    many[11] = '@id("p11") forbid(principal, action, resource) when { resource.nope == 1 };';
    const d = diagnosticsOf(errorOf(() => checkPolicies(many.join('\n'), undefined, schema)));
    expect(d[0]).toMatchObject({ policy: 'p11', line: 12 });
    expect(d[0]!.message).toContain('`p11`');
    expect(d[0]!.message).not.toContain('policy11');
  });

  it('refuses a syntax error with its location', () => {
    const e = errorOf(() =>
      checkPolicies('@id("a")\npermit(principal, action, resource) when { 1 + };', undefined, schema),
    );
    expect(e.code).toBe('INVALID_POLICY');
    expect(e.errorClass).toBe('validation');
    expect(e.suggestion).toContain('@id');
    const d = diagnosticsOf(e);
    expect(d[0]).toMatchObject({ line: 2, column: 48 });
    expect(d[0]!.message).toContain('unexpected token');
    expect(e.message).toContain('line 2');
  });

  it('counts columns in characters though Cedar counts bytes', () => {
    const d = diagnosticsOf(
      errorOf(() =>
        checkPolicies(
          '// é\n@id("é") permit(principal, action, resource) when { "é" + };',
          undefined,
          schema,
        ),
      ),
    );
    expect(d[0]).toMatchObject({ line: 2, column: 59 });
  });

  it('refuses an unknown attribute, an unknown entity type and a type error (strict validation)', () => {
    const e = errorOf(() =>
      checkPolicies(
        `@id("a") forbid(principal, action, resource) when { resource.nope == 1 };
@id("b") permit(principal, action, resource is Cairn::Nope);
@id("c") permit(principal, action, resource) when { context.hour_utc == "3" };
@id("d") permit(principal, action == Cairn::Action::"run", resource) when { context.original_status == "succeeded" };`,
        undefined,
        schema,
      ),
    );
    expect(e.code).toBe('INVALID_POLICY');
    const d = diagnosticsOf(e);
    expect(new Set(d.map((x) => x.policy))).toEqual(new Set(['a', 'b', 'c', 'd']));
    expect(d.find((x) => x.policy === 'a')!.message).toContain('attribute `nope`');
    expect(d.find((x) => x.policy === 'd')!.message).toContain('original_status');
    expect(d.every((x) => x.line !== undefined)).toBe(true);
  });

  it('refuses open access to the input: it is input_json and input_keys', () => {
    const e = errorOf(() =>
      checkPolicies(
        '@id("a") forbid(principal, action, resource) when { context.input.limit > 10 };',
        undefined,
        schema,
      ),
    );
    expect(diagnosticsOf(e)[0]!.message).toContain('input');
  });

  it('refuses a policy without @id, a duplicate @id, an empty text and templates', () => {
    const missing = errorOf(() =>
      checkPolicies(
        '@id("a") permit(principal, action, resource);\npermit(principal, action, resource);',
        undefined,
        schema,
      ),
    );
    expect(missing.code).toBe('INVALID_POLICY');
    expect(diagnosticsOf(missing)[0]).toMatchObject({ line: 2, column: 1 });
    expect(diagnosticsOf(missing)[0]!.message).toContain('no @id');

    const dup = errorOf(() =>
      checkPolicies(
        '@id("a") permit(principal, action, resource);\n@id("a") forbid(principal, action, resource);',
        undefined,
        schema,
      ),
    );
    expect(dup.code).toBe('INVALID_POLICY');
    expect(diagnosticsOf(dup)[0]).toMatchObject({ policy: 'a', line: 2 });

    expect(errorOf(() => checkPolicies('// nothing', undefined, schema)).code).toBe('INVALID_POLICY');
    const tpl = errorOf(() =>
      checkPolicies('@id("t") permit(principal == ?principal, action, resource);', undefined, schema),
    );
    expect(tpl.code).toBe('INVALID_POLICY');
    expect(tpl.message).toContain('templates');
  });

  it('refuses a patch on a forbid, on an unknown id, and a bad patch', () => {
    const text =
      '@id("p") permit(principal, action, resource);\n@id("f") forbid(principal, action, resource) when { false };';
    const onForbid = errorOf(() => checkPolicies(text, { f: [] }, schema));
    expect(onForbid.code).toBe('INVALID_PATCH');
    expect(onForbid.message).toContain('forbid');
    const unknown = errorOf(() => checkPolicies(text, { nope: [] }, schema));
    expect(unknown.code).toBe('INVALID_PATCH');
    expect(unknown.suggestion).toContain('"p"');
    const bad = errorOf(() => checkPolicies(text, { p: [{ op: 'add', path: 'limit', value: 1 }] }, schema));
    expect(bad.code).toBe('INVALID_PATCH');
    expect(bad.message).toContain('"p"');
    expect(bad.details).toMatchObject({ policy: 'p', op_index: 0 });
    expect(checkPolicies(text, { p: [{ op: 'add', path: '/limit', value: 1 }] }, schema).ids).toEqual([
      'p',
      'f',
    ]);
  });

  it('answers Cedar’s warnings without refusing the text', () => {
    const r = checkPolicies(
      '@id("never") forbid(principal is Cairn::Trigger, action, resource) when { principal.type == "a" && false };',
      undefined,
      schema,
    );
    expect(r.ids).toEqual(['never']);
    expect(r.warnings.length).toBeGreaterThan(0);
    expect(r.warnings[0]!.policy).toBe('never');
  });
});

describe('authorize', () => {
  it('allows by default (cairn/default)', () => {
    const r = authorize([], request());
    expect(r).toMatchObject({
      decision: 'allow',
      deciding: [{ id: DEFAULT_POLICY_ID, element: 'cairn', effect: 'permit' }],
      patch: [],
      explicit_permit: false,
      errors: [],
    });
    expect(r.policy_set_hash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('denies by a forbid, with its id and @reason', () => {
    const set = [
      element(
        'guard',
        `@id("no-afternoon") @reason("no runs in the afternoon")
         forbid(principal, action == Cairn::Action::"run", resource is Cairn::GoFn) when { context.hour_utc >= 12 };`,
      ),
    ];
    const r = authorize(set, request());
    expect(r.decision).toBe('deny');
    expect(r.deciding).toEqual([
      {
        id: 'guard/no-afternoon',
        element: 'guard',
        effect: 'forbid',
        reason: 'no runs in the afternoon',
        actions: ['run'],
      },
    ]);
    expect(r.patch).toEqual([]);
    expect(r.explicit_permit).toBe(false);
    expect(authorize(set, request({}, { hour_utc: 3 })).decision).toBe('allow');
    expect(authorize(set, request({ action: 'retry' })).decision).toBe('allow');
  });

  it('answers the actions a deciding policy is scoped to (none: any action)', () => {
    const set = [
      element(
        'scopes',
        `@id("one") permit(principal, action == Cairn::Action::"replay", resource);
         @id("two") permit(principal, action in [Cairn::Action::"run", Cairn::Action::"retry"], resource);
         @id("any") permit(principal, action, resource);`,
      ),
    ];
    const replayCtx = {
      original_status: 'succeeded',
      original_age_s: 60,
      side_effects: true,
      side_effect_tasks: ['t'],
    };
    const actionsOf = (r: ReturnType<typeof authorize>) =>
      Object.fromEntries(r.deciding.map((d) => [d.id, d.actions]));
    const replay = actionsOf(authorize(set, request({ action: 'replay' }, replayCtx)));
    expect(replay['scopes/one']).toEqual(['replay']);
    expect(replay['scopes/any']).toBeUndefined();
    expect(actionsOf(authorize(set, request({ action: 'run' })))['scopes/two']).toEqual(['run', 'retry']);
  });

  it('puts a token in its role and every role below it (read < write < execute < admin)', () => {
    const set = [
      element(
        'roles',
        `@id("execute-or-more") @reason("run needs execute")
         forbid(principal, action == Cairn::Action::"run", resource) unless { principal in Cairn::Role::"execute" };`,
      ),
    ];
    const as = (role: string) =>
      authorize(set, request({ principal: { kind: 'token', name: `t-${role}`, role } })).decision;
    expect(as('admin')).toBe('allow');
    expect(as('execute')).toBe('allow');
    expect(as('write')).toBe('deny');
    expect(as('read')).toBe('deny');
  });

  it('answers the patches of the deciding permits in id order, and explicit_permit', () => {
    const set = [
      element('z-limits', '@id("cap") permit(principal, action, resource) when { context.mode == "live" };', {
        cap: [{ op: 'replace', path: '/limit', value: 10 }],
      }),
      element(
        'a-tags',
        `@id("tag") permit(principal in Cairn::Role::"editor", action, resource in Cairn::Circle::"acme");
         @id("plain") permit(principal, action, resource) when { resource.price > 10 };`,
        { tag: [{ op: 'add', path: '/tag', value: 'policy' }] },
      ),
    ];
    const r = authorize(set, request());
    expect(r.decision).toBe('allow');
    expect(r.deciding.map((d) => d.id)).toEqual([
      'a-tags/plain',
      'a-tags/tag',
      DEFAULT_POLICY_ID,
      'z-limits/cap',
    ]);
    expect(r.patch).toEqual([
      { op: 'add', path: '/tag', value: 'policy' },
      { op: 'replace', path: '/limit', value: 10 },
    ]);
    expect(r.explicit_permit).toBe(true);

    const viewer = authorize(
      set,
      request({ principal: { kind: 'token', name: 'ci', role: 'viewer' } }, { mode: 'dry_run' }),
    );
    expect(viewer.deciding.map((d) => d.id)).toEqual(['a-tags/plain', DEFAULT_POLICY_ID]);
    expect(viewer.patch).toEqual([]);
    expect(viewer.explicit_permit).toBe(true);
  });

  it('answers no patch when a forbid wins over a patching permit', () => {
    const set = [
      element(
        'p',
        '@id("cap") permit(principal, action, resource);\n@id("stop") forbid(principal, action, resource);',
        { cap: [{ op: 'replace', path: '/limit', value: 10 }] },
      ),
    ];
    const r = authorize(set, request());
    expect(r).toMatchObject({ decision: 'deny', patch: [], explicit_permit: false });
    expect(r.deciding).toEqual([{ id: 'p/stop', element: 'p', effect: 'forbid' }]);
  });

  it('reads the input through input_keys and input_json; floats do not break evaluation', () => {
    const set = [
      element(
        'input',
        `@id("has-limit") @reason("limit is set") forbid(principal, action, resource)
           when { context.input_keys.contains("limit") && context.input_json like "*\\"limit\\":50*" };
         @id("ratio") @reason("ratio") forbid(principal, action, resource) when { context.input_json like "*\\"ratio\\":0.5*" };`,
      ),
    ];
    expect(authorize(set, request({}, { input: { limit: 5 } })).decision).toBe('allow');
    const r = authorize(set, request({}, { input: { limit: 50, deep: { x: [1.5, null] } } }));
    expect(r.decision).toBe('deny');
    expect(r.deciding[0]!.id).toBe('input/has-limit');
    expect(authorize(set, request({}, { input: { ratio: 0.5 } })).deciding[0]!.id).toBe('input/ratio');
    expect(authorize(set, request({}, { input: [1, 2] })).decision).toBe('allow');
    expect(authorize(set, request({}, { input: undefined })).decision).toBe('allow');
  });

  it('evaluates trigger principals and replay contexts', () => {
    const set = [
      element(
        'replays',
        `@id("old") @reason("too old to replay with side effects")
         forbid(principal is Cairn::Trigger, action == Cairn::Action::"replay", resource)
         when { principal.type == "cron" && context.side_effects && context.original_age_s > 3600 && context.side_effect_tasks.contains("charge") };`,
      ),
    ];
    const replay = (age: number) =>
      authorize(
        set,
        request(
          { principal: { kind: 'trigger', type: 'cron', source: 'nightly' }, action: 'replay' },
          {
            original_status: 'succeeded',
            original_age_s: age,
            side_effects: true,
            side_effect_tasks: ['charge'],
          },
        ),
      );
    expect(replay(60).decision).toBe('allow');
    expect(replay(7200)).toMatchObject({ decision: 'deny', deciding: [{ id: 'replays/old' }] });
  });

  it('rounds non-integer Longs and fills now and hour_utc from the clock', () => {
    const set = [
      element(
        'cost',
        '@id("big") forbid(principal, action, resource) when { context.estimated_cost > 100 };',
      ),
    ];
    expect(authorize(set, request({}, { estimated_cost: 100.4 })).decision).toBe('allow');
    expect(authorize(set, request({}, { estimated_cost: 100.6 })).decision).toBe('deny');
    const clock = [
      element(
        'clock',
        '@id("now") forbid(principal, action, resource) when { context.now < 1000000000 || context.hour_utc < 0 || context.hour_utc > 23 };',
      ),
    ];
    expect(authorize(clock, request({}, { now: undefined, hour_utc: undefined })).decision).toBe('allow');
  });

  it('answers error on an evaluation error (fail closed)', () => {
    const overflow = [
      element(
        'math',
        '@id("overflow") forbid(principal, action, resource) when { context.estimated_cost * 9223372036854775807 > 0 };',
      ),
    ];
    const r = authorize(overflow, request());
    expect(r.decision).toBe('error');
    expect(r.errors[0]).toContain('math/overflow');
    expect(r.patch).toEqual([]);

    // A context attribute the caller did not send is an error too, not a silent skip of the forbid.
    const missing = [
      element('m', '@id("t") forbid(principal, action, resource) when { context.trigger == "cron" };'),
    ];
    const ctx = request();
    delete ctx.context.trigger;
    expect(authorize(missing, ctx).decision).toBe('error');

    expect(authorize([], request({}, { estimated_cost: Number.NaN })).decision).toBe('error');
    expect(authorize([], request({}, { now: 'soon' })).decision).toBe('error');
    const bad = authorize([{ element: 'x', text: 'permit(', patches: {} }], request());
    expect(bad.decision).toBe('error');
    expect(bad.policy_set_hash).toMatch(/^[0-9a-f]{64}$/);
    const clash = authorize(
      [
        { element: 'x', text: '@id("a") permit(principal, action, resource);', patches: {} },
        { element: 'x', text: '@id("a") permit(principal, action, resource);', patches: {} },
      ],
      request(),
    );
    expect(clash.decision).toBe('error');
    expect(clash.errors[0]).toContain('x/a');
  });

  it('hashes a set stably, whatever its order', () => {
    const a = { element: 'a', text: '@id("x") permit(principal, action, resource);', patches: {} };
    const b = {
      element: 'b',
      text: '@id("y") forbid(principal, action, resource) when { false };',
      patches: {},
    };
    expect(policySetHash([a, b])).toBe(policySetHash([b, a]));
    expect(authorize([a, b], request()).policy_set_hash).toBe(policySetHash([a, b]));
    expect(policySetHash([a])).not.toBe(policySetHash([a, b]));
    expect(policySetHash([a])).not.toBe(
      policySetHash([{ ...a, patches: { x: [{ op: 'remove', path: '/a' }] } }]),
    );
  });

  it('keeps answering right when more sets are evaluated than the cache holds', () => {
    const sets = Array.from({ length: 70 }, (_, i) => [
      {
        element: `e${i}`,
        text: `@id("only") forbid(principal, action, resource) when { context.estimated_cost == ${i} };`,
        patches: {},
      },
    ]);
    for (let round = 0; round < 2; round++) {
      for (const [i, set] of sets.entries()) {
        expect(authorize(set, request({}, { estimated_cost: i })).deciding[0]!.id).toBe(`e${i}/only`);
        expect(authorize(set, request({}, { estimated_cost: i + 1 })).decision).toBe('allow');
      }
    }
  });

  it('evaluates 100 policies fast (measured, not asserted)', () => {
    const text = Array.from(
      { length: 100 },
      (_, i) =>
        `@id("p${i}") forbid(principal, action == Cairn::Action::"run", resource is Cairn::GoFn) when { context.estimated_cost == ${1_000_000 + i} && principal is Cairn::Token && principal.role == "admin" };`,
    ).join('\n');
    const set = [element('bench', text)];
    const req = request();
    expect(authorize(set, req).decision).toBe('allow');
    const times: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const t0 = process.hrtime.bigint();
      authorize(set, req);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    times.sort((x, y) => x - y);
    const p = (q: number) => times[Math.floor(q * (times.length - 1))]!.toFixed(3);
    console.log(
      `cedar authorize, 100 policies (+ cairn/default), 1000 evaluations: p50 ${p(0.5)} ms, p90 ${p(0.9)} ms, p99 ${p(0.99)} ms`,
    );
  });
});
