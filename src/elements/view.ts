import type { ElementRow } from '../store/elements.js';
import type { CircleRow } from '../store/circles.js';
import { redactSealed } from '../core/sealed.js';

export interface ElementView {
  id: string;
  circle: { id: string; slug: string };
  slug: string;
  element_type: string;
  category: string;
  name: string;
  intention: string | null;
  state: string;
  disabled_reason: string | null;
  spec: Record<string, unknown>;
  meta: Record<string, unknown>;
  version: number;
  definition_hash: string;
  created_at: string;
  updated_at: string;
  warnings?: string[];
  /** Shown in the create answer only, never again (a webhook's secret). */
  shown_once?: Record<string, unknown>;
}

export function toElementView(
  e: ElementRow,
  c: Pick<CircleRow, 'id' | 'slug'>,
  warnings?: string[],
): ElementView {
  const v: ElementView = {
    id: e.id,
    circle: { id: c.id, slug: c.slug },
    slug: e.slug,
    element_type: e.element_type,
    category: e.category,
    name: e.name,
    intention: e.intention,
    state: e.state,
    disabled_reason: e.disabled_reason,
    spec: redactSealed(e.spec),
    meta: e.meta,
    version: e.version,
    definition_hash: e.definition_hash,
    created_at: e.created_at,
    updated_at: e.updated_at,
  };
  if (warnings && warnings.length > 0) v.warnings = warnings;
  return v;
}
