import { performance } from 'node:perf_hooks';
import { CairnError, thrown } from '../../core/errors.js';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import { circleIdentity } from '../../store/circles.js';
import type { ExecContext, ExecResult } from '../types.js';
import type { SqlInvokeInput, SqlSpec } from './spec.js';
import { guardSql, interruptibleDriver } from './guard.js';
import { codeForSqlState, sqlError } from './errors.js';

export type { SqlSpec } from './spec.js';

const EMPTY_STREAM = { bytes: 0, sha256: 'sha256:' + sha256Hex(''), truncated: false };

/**
 * Runs the element's one statement as the circle's role, in the circle's
 * schema, inside a transaction that is rolled back on any error (a row cap or
 * timeout breach included, so a refused run leaves no writes behind).
 */
export async function invokeSql(ctx: ExecContext<SqlSpec, SqlInvokeInput>): Promise<ExecResult> {
  const spec = ctx.spec;
  // Again at execute time, against this driver: on PGlite what can only stall never starts.
  const g = guardSql(spec.query, { interruptible: interruptibleDriver(ctx.db.kind) });
  const params: unknown[] = ctx.input.params ?? spec.params ?? [];
  if (params.length !== g.params) {
    throw sqlError(
      'SQL_PARAMS_MISMATCH',
      `The query uses ${g.params} placeholder(s) ($1…$${g.params}) but ${params.length} param(s) were given.`,
      { expected: g.params, given: params.length },
    );
  }
  const values = params.map((p) => (p !== null && typeof p === 'object' ? JSON.stringify(p) : p));
  const t0 = performance.now();
  let rows: Record<string, unknown>[] = [];
  let rowCount = 0;
  try {
    await ctx.db.asCircle(
      circleIdentity(ctx.circle),
      async (q) => {
        if (g.cursorable) {
          await q.query(`DECLARE cairn_rows NO SCROLL CURSOR FOR ${spec.query}`, values);
          const r = await q.query(`FETCH FORWARD ${spec.max_rows + 1} FROM cairn_rows`);
          rows = r.rows;
          rowCount = r.rows.length;
        } else {
          const r = await q.query(spec.query, values);
          rows = r.rows ?? [];
          rowCount = g.kind === 'SelectStmt' ? rows.length : r.rowCount;
        }
        if (rows.length > spec.max_rows) {
          throw sqlError(
            'SQL_TOO_MANY_ROWS',
            `The query returned more than spec.max_rows (${spec.max_rows}) rows.`,
            {
              max_rows: spec.max_rows,
            },
          );
        }
        // PGlite runs in WebAssembly without timer signals, so statement_timeout
        // cannot interrupt it; an overrun is detected here and rolled back.
        const elapsed = performance.now() - t0;
        if (elapsed > spec.timeout_ms) {
          throw sqlError(
            'SQL_TIMEOUT',
            `The statement ran ${Math.round(elapsed)} ms, over spec.timeout_ms (${spec.timeout_ms}); its effects were rolled back.`,
          );
        }
      },
      { statementTimeoutMs: spec.timeout_ms, signal: ctx.signal },
    );
  } catch (caught) {
    const e = thrown(caught);
    if (e instanceof CairnError) throw e;
    const code = codeForSqlState(e?.code);
    const message =
      code === 'SQL_TIMEOUT'
        ? `The statement was cancelled after spec.timeout_ms (${spec.timeout_ms} ms).`
        : String(e?.message ?? e);
    throw sqlError(code, message, {
      sqlstate: e?.code ?? null,
      position: e?.position ? Number(e.position) : undefined,
      hint: e?.hint ?? undefined,
      detail: e?.detail ?? undefined,
    });
  }
  const ms = performance.now() - t0;
  const output = { rows, row_count: rowCount };
  return {
    output,
    evidence: {
      command: ['sql', g.kind],
      toolchain: { engine: ctx.db.kind === 'pg' ? 'postgresql' : 'pglite' },
      query_hash: 'sha256:' + sha256Hex(spec.query),
      input_hashes: { params: 'sha256:' + sha256Hex(canonicalJson(params)) },
      output_hashes: { output: 'sha256:' + sha256Hex(canonicalJson(output)) },
      exit_code: 0,
      // A statement has no process streams: it wrote nothing to stdout or stderr.
      stdout: EMPTY_STREAM,
      stderr: EMPTY_STREAM,
      role: ctx.circle.role_name,
      read_only: g.readOnly,
      host: ctx.host,
      timing: { execute_ms: Math.round(ms * 1000) / 1000 },
    },
  };
}
