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

/** May a run of this op be executed again after its worker was lost? */
export function retryOnLoss(op: OperationDecl, el: Pick<ElementRow, 'spec'>): boolean {
  return typeof op.retryOnLoss === 'function' ? op.retryOnLoss(el.spec) : (op.retryOnLoss ?? false);
}
