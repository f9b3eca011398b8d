import { CairnError, errors } from './errors.js';

/**
 * Run statuses and the only transitions allowed between them (R-RUN). The
 * database enforces the same table (migration 000006: cairn.run_transitions
 * and a trigger on every status UPDATE; a test holds the two equal), and each
 * transition writes its audit event, `from` taken from the row it changed, in
 * the same statement.
 *
 *   queued ──claim──► running ──settle──► succeeded | completed | failed
 *   queued ──dry run (nothing executes)──► succeeded | completed | failed
 *     │  ▲              │  ▲ │
 *     │  └──lease lost──┘  │ └──pause──► paused ──resume──► queued
 *     ├──pause──────────────┼──────────► paused
 *     └────────cancel──────┴──────────────────────────────► cancelled
 *   completed | failed ──retry-failed──► queued (same run, failed items only)
 */
export const RUN_STATUSES = [
  'queued',
  'running',
  'paused',
  'succeeded',
  'completed',
  'failed',
  'cancelled',
] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export const TERMINAL_STATUSES: readonly RunStatus[] = ['succeeded', 'completed', 'failed', 'cancelled'];

export function isTerminal(s: RunStatus): boolean {
  return TERMINAL_STATUSES.includes(s);
}

const transitions: Record<RunStatus, readonly RunStatus[]> = {
  // queued → failed: the run could not start (e.g. its element was deleted);
  // queued → succeeded | completed | failed: a dry run ends as soon as it is recorded
  queued: ['running', 'cancelled', 'failed', 'paused', 'succeeded', 'completed'],
  // running → queued: lease expired and the op is retryable, or a graceful shutdown handed it back
  running: ['succeeded', 'completed', 'failed', 'cancelled', 'paused', 'queued'],
  paused: ['queued', 'cancelled'],
  succeeded: [],
  // retry-failed: the failed items of a finished run run again, in the same run
  completed: ['queued'],
  failed: ['queued'],
  cancelled: [],
};

/** Every allowed [from, to] pair (migration 000006's cairn.run_transitions holds the same rows). */
export function allowedTransitions(): [RunStatus, RunStatus][] {
  return RUN_STATUSES.flatMap((from) => transitions[from].map((to): [RunStatus, RunStatus] => [from, to]));
}

export function canTransition(from: RunStatus, to: RunStatus): boolean {
  return transitions[from].includes(to);
}

export function allowedFrom(to: RunStatus): RunStatus[] {
  return RUN_STATUSES.filter((s) => canTransition(s, to));
}

export function assertTransition(from: RunStatus, to: RunStatus): void {
  if (!canTransition(from, to)) {
    throw new CairnError({
      code: 'INVALID_TRANSITION',
      class: 'conflict',
      message: `A run that is ${from} cannot become ${to}.`,
      suggestion: isTerminal(from)
        ? 'The run has already finished; use rerun to start a new one.'
        : `From ${from} a run can become: ${transitions[from].join(', ')}.`,
    });
  }
}

/** A comma-separated filter of known values (`kind=batch,invoke`); an unknown one is a typed 400. */
export function listOf<T extends string>(
  what: string,
  allowed: readonly T[],
  v: string | undefined,
): T[] | undefined {
  if (!v) return undefined;
  return v.split(',').map((x) => {
    if (!(allowed as readonly string[]).includes(x)) {
      throw errors.invalidInput(`Unknown ${what} "${x}".`, undefined, `Use one of: ${allowed.join(', ')}.`);
    }
    return x as T;
  });
}

/** The seeds' names for our statuses (seed 001 and 003), accepted by filters. */
const synonyms: Record<string, RunStatus> = {
  pending: 'queued',
  success: 'succeeded',
  killed: 'cancelled',
  canceled: 'cancelled',
};

export function normalizeStatus(s: string): RunStatus | undefined {
  const lower = s.trim().toLowerCase();
  if ((RUN_STATUSES as readonly string[]).includes(lower)) return lower as RunStatus;
  return synonyms[lower];
}

export const ITEM_STATUSES = [
  'pending',
  'running',
  'succeeded',
  'failed',
  'retrying',
  'skipped',
  'cancelled',
] as const;
export type ItemStatus = (typeof ITEM_STATUSES)[number];

export const RUN_KINDS = ['invoke', 'workflow', 'batch'] as const;
export type RunKind = (typeof RUN_KINDS)[number];

export const TRIGGER_TYPES = [
  'manual',
  'api',
  'webhook',
  'schedule',
  'upstream',
  'replay',
  'rerun',
  // a workflow's task runs
  'workflow',
] as const;
export type TriggerType = (typeof TRIGGER_TYPES)[number];

export const ROLES = ['read', 'write', 'execute', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export function roleAtLeast(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}
