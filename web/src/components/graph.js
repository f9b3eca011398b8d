/**
 * A directed graph laid out by dagre and drawn as SVG: the workflow DAG (tasks coloured by their
 * live status) and the lineage graph (tasks and files). Nodes are buttons: Tab reaches them,
 * Enter or a click selects one.
 */
import dagre from '@dagrejs/dagre';
import { useMemo } from 'preact/hooks';
import { html } from '../lib/html.js';

let graphs = 0;

function textWidth(s) {
  return Math.min(260, Math.max(60, s.length * 7.4));
}

/**
 * @param {{nodes: {id: string, label: string, sub?: string, status?: string, kind?: string}[],
 *          edges: {from: string, to: string, kind?: string}[], selected?: string|null,
 *          onSelect?: (id: string) => void, rankdir?: 'LR'|'TB', label: string}} p
 */
export function Graph({ nodes, edges, selected, onSelect, rankdir = 'LR', label }) {
  const uid = useMemo(() => `g${++graphs}`, []);
  const layout = useMemo(() => {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir, nodesep: 18, ranksep: 46, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const n of nodes) {
      const w = Math.max(textWidth(n.label), n.sub ? textWidth(n.sub) * 0.85 : 0) + 28;
      g.setNode(n.id, { width: w, height: n.sub ? 46 : 34 });
    }
    for (const e of edges)
      if (g.hasNode(e.from) && g.hasNode(e.to)) g.setEdge(e.from, e.to, { kind: e.kind });
    dagre.layout(g);
    const info = g.graph();
    return {
      width: Math.ceil(info.width ?? 0),
      height: Math.ceil(info.height ?? 0),
      nodes: nodes.map((n) => ({ ...n, box: g.node(n.id) })),
      edges: g.edges().map((e) => ({ ...e, points: g.edge(e).points, kind: g.edge(e).kind })),
    };
  }, [nodes, edges, rankdir]);

  const path = (pts) => {
    if (!pts?.length) return '';
    let d = `M${pts[0].x},${pts[0].y}`;
    for (let i = 1; i < pts.length - 1; i++) {
      const mx = (pts[i].x + pts[i + 1].x) / 2;
      const my = (pts[i].y + pts[i + 1].y) / 2;
      d += ` Q${pts[i].x},${pts[i].y} ${mx},${my}`;
    }
    const l = pts[pts.length - 1];
    return `${d} L${l.x},${l.y}`;
  };

  return html`<div class="graph-scroll">
    <svg
      class="graph"
      width=${layout.width}
      height=${layout.height}
      viewBox=${`0 0 ${layout.width} ${layout.height}`}
      role="group"
      aria-label=${label}
    >
      <defs>
        <marker
          id=${`${uid}-arrow`}
          viewBox="0 0 10 10"
          refX="9"
          refY="5"
          markerWidth="7"
          markerHeight="7"
          orient="auto-start-reverse"
        >
          <path d="M 0 0 L 10 5 L 0 10 z" class="arrow" />
        </marker>
      </defs>
      ${layout.edges.map(
        (e) =>
          html`<path
            class=${`edge e-${e.kind ?? 'depends'}`}
            d=${path(e.points)}
            marker-end=${`url(#${uid}-arrow)`}
          />`,
      )}
      ${layout.nodes.map((n) => {
        const b = n.box;
        const x = b.x - b.width / 2;
        const y = b.y - b.height / 2;
        const pick = () => onSelect?.(n.id);
        return html`<g
          class=${`node k-${n.kind ?? 'task'} s-${n.status ?? 'none'} ${selected === n.id ? 'selected' : ''}`}
          transform=${`translate(${x},${y})`}
          tabindex=${onSelect ? 0 : undefined}
          role=${onSelect ? 'button' : 'img'}
          aria-label=${onSelect ? undefined : `${n.label}${n.sub ? ` ${n.sub}` : ''}`}
          aria-pressed=${onSelect ? (selected === n.id ? 'true' : 'false') : undefined}
          onClick=${pick}
          onKeyDown=${(e) => {
            if (e.key === 'Enter' || e.key === ' ') {
              e.preventDefault();
              pick();
            }
          }}
        >
          <rect width=${b.width} height=${b.height} rx=${n.kind === 'file' ? 3 : 9} />
          <rect class="stripe" width="5" height=${b.height} rx="2" />
          <text x="14" y=${n.sub ? 19 : b.height / 2 + 4} class="label">${n.label}</text>
          ${n.sub ? html`<text x="14" y="35" class="sub">${n.sub}</text>` : null}
        </g>`;
      })}
    </svg>
  </div>`;
}
