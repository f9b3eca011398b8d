import { z } from 'zod';
import { errors, thrown } from '../../core/errors.js';
import { isUuid, newId } from '../../core/ids.js';
import { qint } from '../../core/zod.js';
import { ident, type Db, type Queryable } from '../../db/types.js';
import type { CircleRow } from '../../store/circles.js';
import { getElement, type ElementRow } from '../../store/elements.js';
import { isoFields } from '../../store/rows.js';
import { getItem } from '../../store/runs.js';
import { cursorCodec } from '../base-ops.js';
import { defineOp, defineType, type BatchUnit, type OpContext, type TypeLookup } from '../types.js';

const NAME_RE = /^[a-z_][a-z0-9_]{0,62}$/;
const name = z
  .string()
  .regex(NAME_RE, 'lowercase letters, digits and underscores, starting with a letter or _');
const FIELD_TYPES = ['string', 'number', 'integer', 'boolean', 'object', 'array', 'any'] as const;

const field = z
  .object({
    type: z.enum(FIELD_TYPES).default('any'),
    required: z.boolean().default(false),
    description: z.string().max(500).optional(),
  })
  .strict();

/**
 * A column's input mapping, per input key: `"row_field"` (that field's value),
 * `{value: <literal>}` (a constant), or a list of those (an array, e.g. SQL params).
 */
const one = z.union([z.string().regex(NAME_RE, 'a row field name'), z.object({ value: z.json() }).strict()]);
const mapping = z.union([one, z.array(one).max(100)]);
type One = string | { value?: unknown };
type Mapping = One | One[];

const column = z
  .object({
    element: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'the slug of an element in this circle')
      .describe('The element each row runs: the slug of any runnable element of the circle'),
    operation: z.string().min(1).default('invoke').describe("The element's run-creating operation"),
    input: z
      .record(z.string().min(1), mapping)
      .default({})
      .describe(
        'The element input, key by key, from the row: `"field"` (that field\'s value), `{"value": …}` (a constant), or a list of those (e.g. SQL params)',
      ),
    concurrency: z.number().int().min(1).max(64).default(4).describe('Rows of one run executed at once'),
    max_attempts: z
      .number()
      .int()
      .min(1)
      .max(10)
      .default(3)
      .describe('Attempts per row for retryable errors'),
    budget: z
      .object({
        credits: z.number().int().min(0).describe('Micro-credits a run of this column may spend'),
        on_exceed: z
          .enum(['flag', 'stop'])
          .default('stop')
          .describe('stop: no item starts past the budget; flag: the run is flagged and goes on'),
      })
      .strict()
      .optional()
      .describe('Default budget of a run of this column (a run may set its own)'),
  })
  .strict();

export const tableSpec = z
  .object({
    fields: z.record(name, field).default({}),
    columns: z.record(name, column).default({}),
  })
  .strict();
type TableSpec = z.output<typeof tableSpec>;
type FieldSpec = z.output<typeof field>;

/** The rows live in the circle's own schema, readable by its SQL elements: `t_<slug>`. */
export function rowTableName(slug: string): string {
  return 't_' + slug.replace(/-/g, '_');
}

async function tableExists(q: Queryable, circle: CircleRow, slug: string): Promise<boolean> {
  const r = await q.query<{ t: string | null }>('SELECT to_regclass($1) AS t', [
    `${ident(circle.schema)}.${ident(rowTableName(slug))}`,
  ]);
  return r.rows[0]!.t !== null;
}

async function ensureTable(db: Db, circle: CircleRow, slug: string): Promise<void> {
  if (await tableExists(db, circle, slug)) return;
  const t = `${ident(circle.schema)}.${ident(rowTableName(slug))}`;
  try {
    await db.transaction(async (tx) => {
      await tx.query(
        `CREATE TABLE IF NOT EXISTS ${t} (
           id uuid PRIMARY KEY,
           data jsonb NOT NULL,
           cells jsonb NOT NULL DEFAULT '{}',
           created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp())`,
      );
      // The circle's SQL reads its rows; only the platform writes them (cells carry run results).
      await tx.query(`GRANT SELECT ON ${t} TO ${ident(circle.role_name)}`);
    });
  } catch (caught) {
    const e = thrown(caught);
    // Two first inserts raced to create it: the other one won.
    if (e?.code !== '42P07' && e?.code !== '23505') throw e;
  }
}

/** Inserts rows (already checked against the fields) into the table, creating it on first use. */
export async function insertRows(
  db: Db,
  circle: CircleRow,
  slug: string,
  rows: unknown[],
): Promise<string[]> {
  await ensureTable(db, circle, slug);
  const ids = rows.map(() => newId());
  await db.query(
    `INSERT INTO ${ident(circle.schema)}.${ident(rowTableName(slug))} (id, data)
     SELECT (x ->> 'id')::uuid, x -> 'data' FROM jsonb_array_elements($1::jsonb) AS x`,
    [JSON.stringify(rows.map((data, i) => ({ id: ids[i], data })))],
  );
  return ids;
}

/** Whether the table holds any row yet. */
export async function hasRows(db: Db, circle: CircleRow, slug: string): Promise<boolean> {
  if (!(await tableExists(db, circle, slug))) return false;
  const r = await db.query(`SELECT 1 FROM ${ident(circle.schema)}.${ident(rowTableName(slug))} LIMIT 1`);
  return r.rows.length > 0;
}

const TYPE_CHECK: Record<(typeof FIELD_TYPES)[number], (v: unknown) => boolean> = {
  string: (v) => typeof v === 'string',
  number: (v) => typeof v === 'number' && Number.isFinite(v),
  integer: (v) => Number.isInteger(v),
  boolean: (v) => typeof v === 'boolean',
  object: (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
  array: (v) => Array.isArray(v),
  any: () => true,
};

function checkRow(fields: Record<string, FieldSpec>, row: Record<string, unknown>, i: number) {
  const problems: { path: string; message: string }[] = [];
  for (const [k, f] of Object.entries(fields)) {
    const v = row[k];
    if (v === undefined || v === null) {
      if (f.required) problems.push({ path: `rows.${i}.${k}`, message: 'required' });
    } else if (!TYPE_CHECK[f.type](v))
      problems.push({ path: `rows.${i}.${k}`, message: `must be ${f.type}` });
  }
  return problems;
}

/** Turns a row into the column's element input; a mapped field the row lacks is a problem, not a guess. */
export function mapRow(
  cols: Record<string, Mapping>,
  data: Record<string, unknown>,
): { input: Record<string, unknown>; problem?: string } {
  const missing: string[] = [];
  const value = (m: One): unknown => {
    if (typeof m !== 'string') return m.value ?? null;
    if (data[m] === undefined || data[m] === null) missing.push(m);
    return data[m] ?? null;
  };
  const input: Record<string, unknown> = {};
  for (const [k, m] of Object.entries(cols)) input[k] = Array.isArray(m) ? m.map(value) : value(m);
  return missing.length > 0
    ? {
        input,
        problem: `The row has no value for mapped field${missing.length > 1 ? 's' : ''} ${missing.join(', ')}.`,
      }
    : { input };
}

interface RowOut {
  id: string;
  data: Record<string, unknown>;
  cells: Record<string, unknown>;
  created_at: string;
  updated_at: string;
}

const where = z
  .record(z.string().regex(NAME_RE), z.union([z.string(), z.number(), z.boolean(), z.null()]))
  .describe('Rows whose fields equal these values');
const cellFilter = z
  .enum(['all', 'empty', 'failed', 'not_succeeded'])
  .describe('Which rows by their cell in this column: all (default), empty, failed, or not_succeeded');

/** Rows of the table matching a selection, oldest first. */
async function selectRows(
  db: Db,
  ctx: OpContext,
  sel: {
    where?: Record<string, unknown>;
    row_ids?: string[];
    cells?: string;
    column?: string;
    after?: string;
    limit: number;
  },
): Promise<RowOut[]> {
  if (!(await tableExists(db, ctx.circle, ctx.element.slug))) return [];
  const params: unknown[] = [];
  const cond: string[] = [];
  const add = (sql: string, v: unknown) => {
    params.push(v);
    cond.push(sql.replace('?', `$${params.length}`));
  };
  if (sel.where && Object.keys(sel.where).length > 0) add('data @> ?::jsonb', JSON.stringify(sel.where));
  if (sel.row_ids) add('id = ANY(?::uuid[])', sel.row_ids);
  if (sel.after) add('id > ?::uuid', sel.after);
  if (sel.column && sel.cells && sel.cells !== 'all') {
    params.push(sel.column);
    const c = `cells -> $${params.length}`;
    cond.push(
      sel.cells === 'empty'
        ? `${c} IS NULL`
        : sel.cells === 'failed'
          ? `${c} ->> 'status' = 'failed'`
          : `(${c} IS NULL OR ${c} ->> 'status' <> 'succeeded')`,
    );
  }
  params.push(sel.limit);
  const r = await db.query<RowOut>(
    `SELECT id, data, cells, created_at, updated_at FROM ${ident(ctx.circle.schema)}.${ident(rowTableName(ctx.element.slug))}
     ${cond.length ? 'WHERE ' + cond.join(' AND ') : ''} ORDER BY id LIMIT $${params.length}`,
    params,
  );
  return r.rows.map((x) => isoFields(x, ['created_at', 'updated_at']));
}

function columnOf(ctx: OpContext, col: string) {
  const spec = ctx.element.spec as TableSpec;
  const c = spec.columns[col];
  if (!c) {
    throw errors.notFound(
      'COLUMN_NOT_FOUND',
      `Table "${ctx.element.slug}" has no computed column "${col}".`,
      `Its columns: ${Object.keys(spec.columns).join(', ') || '(none)'}. Add one under spec.columns.`,
    );
  }
  return c;
}

function rowNotFound(ctx: OpContext, id: string) {
  return errors.notFound(
    'ROW_NOT_FOUND',
    `Table "${ctx.element.slug}" has no row ${id}.`,
    'List rows with GET …/ops/rows.',
  );
}

async function target(db: Queryable, circle: CircleRow, slug: string): Promise<ElementRow> {
  const el = await getElement(db, circle.id, slug);
  if (!el) {
    throw errors.invalidInput(
      `Column element "${slug}" does not exist in this circle.`,
      undefined,
      'Create the element first (cairn apply -f …), or fix the slug in spec.columns.<name>.element.',
    );
  }
  return el;
}

function runOp(types: TypeLookup, el: ElementRow, opName: string) {
  const type = types.get(el.element_type);
  const op = types.operationsOf(type).find((o) => o.name === opName);
  if (!op?.createsRun) {
    throw errors.invalidInput(
      `Element "${el.slug}" (${el.element_type}) has no run-creating operation "${opName}".`,
      undefined,
      `Use one of: ${types
        .operationsOf(type)
        .filter((o) => o.createsRun)
        .map((o) => o.name)
        .join(', ')}.`,
    );
  }
  return { type, op };
}

const runBody = z
  .object({
    mode: z.enum(['live', 'dry_run', 'smoke_test']).default('live'),
    where: where.optional(),
    row_ids: z.array(z.uuid()).max(100_000).optional(),
    rows: cellFilter.default('all'),
    sample: z.number().int().min(1).max(1000).default(5).describe('smoke_test: rows to run'),
    concurrency: z.number().int().min(1).max(64).optional(),
    max_attempts: z.number().int().min(1).max(10).optional(),
    budget: z.number().int().min(0).optional().describe('Micro-credits this run may spend'),
    on_budget_exceeded: z.enum(['flag', 'stop']).optional(),
  })
  .strict();

export const tableType = defineType({
  type: 'table',
  category: 'data',
  title: 'Table',
  description:
    "Rows of JSON stored in the circle's own schema (table `t_<slug>`, readable by its SQL elements), with " +
    'computed columns: a column names an element and maps row fields to its input; running it creates one ' +
    "batch run with one item per row, and writes each output to its row's cell.",
  spec: tableSpec,
  operations: [
    defineOp({
      name: 'insert',
      method: 'POST',
      path: 'rows',
      auth: 'write',
      summary: 'Insert rows (up to 10,000 per request)',
      description:
        'Body `{"rows": [{...}, ...]}`. Each row is checked against spec.fields; any bad row refuses the request.',
      input: z.object({ rows: z.array(z.record(z.string(), z.json())).min(1).max(10_000) }).strict(),
      status: 201,
      handler: async (ctx) => {
        const spec = ctx.element.spec as TableSpec;
        const problems = (ctx.input.rows as Record<string, unknown>[]).flatMap((r, i) =>
          checkRow(spec.fields, r, i),
        );
        if (problems.length > 0) {
          throw errors.invalidInput(
            `${problems.length} problem(s) in the rows: ${problems
              .slice(0, 5)
              .map((p) => `${p.path} ${p.message}`)
              .join('; ')}`,
            problems.slice(0, 100),
            'Fix the rows listed in details; nothing was inserted.',
          );
        }
        const ids = await insertRows(ctx.db, ctx.circle, ctx.element.slug, ctx.input.rows as unknown[]);
        return { inserted: ids.length, ids };
      },
    }),
    defineOp({
      name: 'rows',
      method: 'GET',
      path: 'rows',
      auth: 'read',
      summary: 'List rows, oldest first (filters: where (JSON), column + cells; cursor paging)',
      input: z
        .object({
          limit: qint(1, 1000).optional(),
          cursor: z.string().optional(),
          where: z.string().optional().describe('JSON object of field values, e.g. {"country":"FR"}'),
          column: name.optional(),
          cells: cellFilter.optional(),
        })
        .strict(),
      handler: async (ctx) => {
        let w: Record<string, unknown> | undefined;
        if (ctx.input.where) {
          try {
            w = where.parse(JSON.parse(ctx.input.where));
          } catch {
            throw errors.invalidInput(
              '`where` must be a JSON object of field values.',
              undefined,
              'Send e.g. where={"country":"FR"} (URL-encoded).',
            );
          }
        }
        if (ctx.input.column) columnOf(ctx, ctx.input.column);
        const limit = ctx.input.limit ?? 100;
        const rows = await selectRows(ctx.db, ctx, {
          where: w,
          column: ctx.input.column,
          cells: ctx.input.cells,
          after: ctx.input.cursor ? cursorCodec.decode(ctx.input.cursor) : undefined,
          limit,
        });
        return {
          rows,
          next_cursor: rows.length === limit ? cursorCodec.encode(rows[rows.length - 1]!.id) : null,
        };
      },
    }),
    defineOp({
      name: 'row_get',
      method: 'GET',
      path: 'rows/{row_id}',
      auth: 'read',
      summary: 'Get one row with its cells',
      input: z.object({}).strict(),
      handler: async (ctx) => {
        const id = ctx.params.row_id!;
        const [row] = isUuid(id) ? await selectRows(ctx.db, ctx, { row_ids: [id], limit: 1 }) : [];
        if (!row) throw rowNotFound(ctx, id);
        return row;
      },
    }),
    defineOp({
      name: 'cell_inspect',
      method: 'GET',
      path: 'rows/{row_id}/cells/{column}',
      auth: 'read',
      summary: "Inspect one cell: the row's inputs, output, full error and every attempt of its latest item",
      input: z.object({}).strict(),
      handler: async (ctx) => {
        const id = ctx.params.row_id!;
        const col = ctx.params.column!;
        columnOf(ctx, col);
        const [row] = isUuid(id) ? await selectRows(ctx.db, ctx, { row_ids: [id], limit: 1 }) : [];
        if (!row) throw rowNotFound(ctx, id);
        const cell = (row.cells[col] ?? null) as { item_id?: string; run_id?: string } | null;
        const item =
          cell?.item_id && isUuid(cell.item_id) ? ((await getItem(ctx.db, cell.item_id)) ?? null) : null;
        return { table: ctx.element.slug, row_id: row.id, column: col, row: row.data, cell, item };
      },
    }),
    defineOp({
      name: 'column_run',
      method: 'POST',
      path: 'columns/{column}/run',
      auth: 'execute',
      summary:
        'Run a computed column over rows: one batch run, one item per row (modes: live, dry_run, smoke_test)',
      description:
        'Selects rows (`where`, `row_ids`, `rows`: all | empty | failed | not_succeeded), maps each to the ' +
        "column element's input, and creates a batch run. dry_run validates every row and estimates the cost " +
        '(nothing runs, nothing is charged); smoke_test runs the first `sample` rows.',
      input: runBody,
      status: 202,
      handler: async (ctx) => {
        const col = ctx.params.column!;
        const c = columnOf(ctx, col);
        const el = await target(ctx.db, ctx.circle, c.element);
        const { type, op } = runOp(ctx.types, el, c.operation);
        const b = ctx.input as z.output<typeof runBody>;
        const rows = await selectRows(ctx.db, ctx, {
          where: b.where,
          row_ids: b.row_ids,
          cells: b.rows,
          column: col,
          limit: 1_000_000,
        });
        if (rows.length === 0) {
          throw errors.invalidInput(
            'No rows match; a run needs at least one.',
            undefined,
            'Insert rows (POST …/ops/rows), or widen where / row_ids / rows.',
          );
        }
        const units: BatchUnit[] = rows.map((r) => {
          const m = mapRow(c.input, r.data);
          return { key: r.id, input: m.input, problem: m.problem };
        });
        const budget = b.budget ?? c.budget?.credits ?? null;
        const s = await ctx.engine.submitBatch({
          circle: ctx.circle,
          target: el,
          type,
          op,
          units,
          mode: b.mode,
          sample: b.sample,
          concurrency: b.concurrency ?? c.concurrency,
          itemMaxAttempts: b.max_attempts ?? c.max_attempts,
          budget,
          budgetPolicy: b.on_budget_exceeded ?? c.budget?.on_exceed ?? 'stop',
          trigger: ctx.trigger,
          input: { table: ctx.element.slug, column: col, ...b },
          batch: {
            table: {
              id: ctx.element.id,
              slug: ctx.element.slug,
              version: ctx.element.version,
              definition_hash: ctx.element.definition_hash,
            },
            column: col,
            mapping: c.input,
            cells: { schema: ctx.circle.schema, table: rowTableName(ctx.element.slug), column: col },
          },
          snapshotExtra: ctx.snapshotExtra,
          idempotencyKey: ctx.idempotencyKey,
        });
        if (b.mode === 'dry_run') ctx.setStatus(200); // nothing to wait for: the dry run is finished
        return {
          run_id: s.run.id,
          status: s.run.status,
          mode: s.run.mode,
          items_total: s.run.items_total,
          items_valid: s.valid,
          items_invalid: s.invalid,
          estimated_credits: s.estimated_credits,
          credits_reserved: s.run.credits_reserved,
          output: s.run.output ?? null,
          run_url: `/api/runs/${s.run.id}`,
        };
      },
    }),
  ],
  errors: [],
  rules: [],
  validateSpec: (spec: TableSpec) => {
    for (const [col, c] of Object.entries(spec.columns)) {
      if (spec.fields[col]) {
        throw errors.invalidInput(
          `Column "${col}" has the name of a field.`,
          [{ path: `spec.columns.${col}`, message: 'clashes with spec.fields' }],
          'Name computed columns differently from the fields rows carry.',
        );
      }
      for (const [k, list] of Object.entries(c.input)) {
        for (const m of Array.isArray(list) ? list : [list]) {
          if (typeof m === 'string' && !spec.fields[m]) {
            throw errors.invalidInput(
              `Column "${col}" maps input "${k}" from field "${m}", which spec.fields does not declare.`,
              [{ path: `spec.columns.${col}.input.${k}`, message: `unknown field "${m}"` }],
              `Declare it under spec.fields (known: ${Object.keys(spec.fields).join(', ') || 'none'}), or map {value: …} for a constant.`,
            );
          }
        }
      }
    }
  },
  validateInCircle: async (db, circle, spec: TableSpec, types) => {
    for (const [col, c] of Object.entries(spec.columns)) {
      const el = await target(db, circle, c.element).catch((e) => {
        throw errors.invalidInput(
          `Column "${col}": ${e.message}`,
          [{ path: `spec.columns.${col}.element`, message: 'no such element' }],
          e.suggestion,
        );
      });
      if (el.element_type === 'table') {
        throw errors.invalidInput(
          `Column "${col}" names table "${el.slug}"; a column runs an action or query element.`,
          [{ path: `spec.columns.${col}.element`, message: 'not a table' }],
          'Name a go-fn, python, javascript or sql element.',
        );
      }
      runOp(types, el, c.operation);
    }
  },
  executors: {},
});
