/**
 * A fixed-row-height scroller that renders only the rows in view (plus a few): 10,000 rows cost
 * what 40 do. `renderRow(i, style)` draws row i; `onRange(first, last)` says what is visible
 * (to load the next page, or refresh what is shown).
 */
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { html } from '../lib/html.js';

export function VirtualRows({
  count,
  rowHeight = 30,
  height = 480,
  overscan = 10,
  renderRow,
  onRange,
  label,
  scrollTo,
  header,
}) {
  const ref = useRef(null);
  const [top, setTop] = useState(0);
  const [view, setView] = useState(height);
  const frame = useRef(0);

  const onScroll = () => {
    if (frame.current) return;
    frame.current = requestAnimationFrame(() => {
      frame.current = 0;
      if (ref.current) setTop(ref.current.scrollTop);
    });
  };
  useEffect(() => () => cancelAnimationFrame(frame.current), []);
  useLayoutEffect(() => {
    if (ref.current) setView(ref.current.clientHeight || height);
  }, [height]);

  // Keeps a chosen row (keyboard selection) in view.
  useEffect(() => {
    const el = ref.current;
    if (!el || scrollTo === null || scrollTo === undefined || scrollTo < 0) return;
    const y = scrollTo * rowHeight;
    if (y < el.scrollTop) el.scrollTop = y;
    else if (y + rowHeight > el.scrollTop + el.clientHeight) el.scrollTop = y + rowHeight - el.clientHeight;
  }, [scrollTo, rowHeight]);

  const first = Math.max(0, Math.floor(top / rowHeight) - overscan);
  const last = Math.min(count - 1, Math.ceil((top + view) / rowHeight) + overscan);
  useEffect(() => {
    onRange?.(Math.floor(top / rowHeight), Math.min(count - 1, Math.ceil((top + view) / rowHeight)));
  }, [first, last, count]);

  const rows = [];
  for (let i = first; i <= last; i++)
    rows.push(renderRow(i, { transform: `translateY(${i * rowHeight}px)`, height: `${rowHeight}px` }));
  return html`<div class="vtable" role="table" aria-label=${label} aria-rowcount=${count + 1}>
    ${header}
    <div
      class="vscroll"
      ref=${ref}
      onScroll=${onScroll}
      style=${{ height: `${height}px` }}
      role="rowgroup"
      tabindex="-1"
    >
      <div class="vspace" style=${{ height: `${count * rowHeight}px` }}>${rows}</div>
    </div>
  </div>`;
}
