import type { ErrorBody } from '../core/errors.js';

export interface Out {
  json: boolean;
  print(s: string): void;
  error(s: string): void;
}

export function makeOut(json: boolean): Out {
  return {
    json,
    print: (s) => process.stdout.write(s.endsWith('\n') ? s : s + '\n'),
    error: (s) => process.stderr.write(s.endsWith('\n') ? s : s + '\n'),
  };
}

/** Colour only on a terminal, and never with NO_COLOR (https://no-color.org), decided when printing. */
const tty = () => Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
const paint = (code: string) => (s: string) => (tty() ? `\x1b[${code}m${s}\x1b[0m` : s);
export const color = {
  green: paint('32'),
  red: paint('31'),
  yellow: paint('33'),
  dim: paint('2'),
  bold: paint('1'),
};

/** A run's status for people (an op's answer that is not a run may carry none: `… undefined`). */
export function statusMark(status: string | undefined): string {
  switch (status) {
    case 'succeeded':
      return color.green('✓ succeeded');
    case 'completed':
      return color.yellow('◐ completed');
    case 'failed':
      return color.red('✗ failed');
    case 'cancelled':
      return color.yellow('⊘ cancelled');
    default:
      return color.dim('… ' + status);
  }
}

/** Micro-credits as credits for people (`--json` keeps micro-credits). */
export function credits(micro: number | null | undefined): string {
  if (micro === null || micro === undefined) return '-';
  return (micro / 1_000_000).toLocaleString('en-US', { maximumFractionDigits: 6 });
}

/** A typed error for people, with the stack or stderr tail it carries (suggestions point there). */
export function renderError(e: ErrorBody): string {
  const d = (e.details ?? {}) as { stack?: unknown; stderr_tail?: unknown };
  const extra = [d.stack, d.stderr_tail]
    .filter((x): x is string => typeof x === 'string' && x.trim() !== '')
    .map((x) => '\n' + color.dim(x.trimEnd().replace(/^/gm, '    ')));
  return `${color.red('error')} ${e.code}: ${e.message}\n  ${color.dim('→ ' + e._suggestion)}${extra.join('')}`;
}

/** A plain aligned table for human output: the given columns of each row. */
export function table<R extends object>(rows: readonly R[], cols: readonly (keyof R & string)[]): string {
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [
    color.bold(line(cols.map((c) => c.toUpperCase()))),
    ...rows.map((r) => line(cols.map((c) => cell(r[c])))),
  ].join('\n');
}
