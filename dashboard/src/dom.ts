// A few DOM helpers: elements, figure cards, tables and sections with loading and error
// states. Every figure taken from an API answer carries `data-key` (its path in the
// answer), `data-scale` and `data-dec`; its section carries `data-src` (the URL it was
// read from). The browser tests read the API at `data-src` themselves and compare.
import { errorText } from './api';
import { show } from './format';

type Attrs = Record<string, string | number | boolean | undefined | ((e: Event) => void)>;

/** An element with attributes (`on…` functions become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = String(v);
    else if (k === 'value' && 'value' in el) (el as HTMLInputElement).value = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c);
  }
  return el;
}

/** How a figure is shown: its path in the answer, a scale (0.01: cents as units), decimals, a suffix. */
export interface Fig {
  label: string;
  key: string;
  scale?: number;
  dec?: number;
  unit?: string;
}

/** The value at a dotted path (`cohorts.0.d1`). */
export function at(obj: unknown, key: string): unknown {
  let v: unknown = obj;
  for (const part of key.split('.')) {
    if (v === null || v === undefined) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** English glosses of the Chinese labels the API keeps from Croupier (level steps, difficulty). */
const GLOSS: Record<string, string> = {
  开始关卡: 'started',
  完成关卡: 'cleared',
  失败过: 'failed once',
  低: 'low',
  中: 'medium',
  高: 'high',
};

/** A value shown with its figure attributes (a known Chinese label gets its gloss beside it). */
export function val(data: unknown, key: string, scale = 1, dec = 0, tag: 'span' | 'td' = 'span'): HTMLElement {
  const v = at(data, key);
  const shown = h('span', { 'data-key': key, 'data-scale': scale, 'data-dec': dec }, show(v, scale, dec));
  const gloss = typeof v === 'string' ? GLOSS[v] : undefined;
  return h(tag, { class: typeof v === 'number' ? 'num' : '' }, shown, gloss ? h('small', { class: 'muted' }, ` ${gloss}`) : null);
}

/** Figure cards. */
export function kpis(data: unknown, figs: Fig[]): HTMLElement {
  return h(
    'div',
    { class: 'kpis' },
    ...figs.map((f) =>
      h('div', { class: 'kpi' }, h('div', { class: 'label' }, f.label), h('div', { class: 'value' }, val(data, f.key, f.scale, f.dec), f.unit ? h('small', {}, ' ' + f.unit) : null)),
    ),
  );
}

/** A column of a table: a header and the row's field (with scale and decimals). */
export interface Col {
  title: string;
  field: string;
  scale?: number;
  dec?: number;
  /** A cell's background (the retention heat map). */
  heat?: boolean;
}

/** A table of `rows` (at `base` in the answer: `cohorts`), at most `limit` rows. */
export function table(data: unknown, base: string, cols: Col[], limit = 100): HTMLElement {
  const rows = (at(data, base) as unknown[] | undefined) ?? [];
  const body = rows.slice(0, limit).map((_, i) =>
    h(
      'tr',
      {},
      ...cols.map((c) => {
        const td = val(data, `${base}.${i}.${c.field}`, c.scale, c.dec, 'td');
        const v = at(data, `${base}.${i}.${c.field}`);
        if (c.heat && typeof v === 'number') td.style.background = `hsla(152, 60%, 40%, ${Math.min(1, v / 100) * 0.85 + 0.05})`;
        return td;
      }),
    ),
  );
  const more = rows.length > limit ? h('p', { class: 'muted' }, `${limit} of ${rows.length} rows shown`) : null;
  if (rows.length === 0) return h('p', { class: 'muted empty' }, 'No rows in this range.');
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, ...cols.map((c) => h('th', {}, c.title)))), h('tbody', {}, ...body)), more);
}

/**
 * A card whose content comes from one API read: shows "Loading…", then `render(answer)`,
 * or the API's error. `data-src` is the URL read; `data-state` is loading, ready or error.
 */
export function card(title: string, extra?: HTMLElement): { el: HTMLElement; load: <T>(src: string, read: () => Promise<T>, render: (d: T) => Node | Node[]) => Promise<void> } {
  const body = h('div', { class: 'body' });
  const el = h('section', { class: 'card', 'data-state': 'loading' }, h('header', {}, h('h2', {}, title), extra ?? null), body);
  const load = async <T,>(src: string, read: () => Promise<T>, render: (d: T) => Node | Node[]) => {
    el.dataset.src = src;
    el.dataset.state = 'loading';
    el.classList.add('loading');
    if (!body.hasChildNodes()) body.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const d = await read();
      const out = render(d);
      body.replaceChildren(...(Array.isArray(out) ? out : [out]));
      el.dataset.state = 'ready';
    } catch (e) {
      if ((e as Error).name === 'AbortError') return;
      body.replaceChildren(h('p', { class: 'error' }, errorText(e)));
      el.dataset.state = 'error';
    } finally {
      el.classList.remove('loading');
    }
  };
  return { el, load };
}
