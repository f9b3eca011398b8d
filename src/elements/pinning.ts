import type { ElementRow } from '../store/elements.js';
import type { OperationDecl } from './types.js';

/** The element as a run's snapshot pins it: the exact definition it runs. */
export function snapshotElement(el: ElementRow) {
  return {
    id: el.id,
    slug: el.slug,
    element_type: el.element_type,
    version: el.version,
    definition_hash: el.definition_hash,
    spec: el.spec,
  };
}

/** Does a run of this op change anything outside its record? (Undeclared run-creating ops: yes.) */
export function sideEffects(
  op: Pick<OperationDecl, 'sideEffects' | 'createsRun' | 'startsRun'>,
  el: Pick<ElementRow, 'spec'>,
): boolean {
  if (typeof op.sideEffects === 'function') return op.sideEffects(el.spec);
  return op.sideEffects ?? (op.createsRun === true || op.startsRun === true);
}

/** May a run of this op be executed again after its worker was lost? */
export function retryOnLoss(op: OperationDecl, el: Pick<ElementRow, 'spec'>): boolean {
  return typeof op.retryOnLoss === 'function' ? op.retryOnLoss(el.spec) : (op.retryOnLoss ?? false);
}
