// Behavior: event explorer, funnel builder, top paths, feature adoption (`/behavior/*`).
import { get, qs } from '../api';
import { card, h, table, val } from '../dom';
import { scopeParams, Scope } from '../state';
import type { Page } from './page';

function input(id: string, value: string, placeholder = '', size = 16): HTMLInputElement {
  return h('input', { id, value, placeholder, size }) as HTMLInputElement;
}

function checkbox(id: string, label: string): [HTMLElement, HTMLInputElement] {
  const c = h('input', { id, type: 'checkbox' }) as HTMLInputElement;
  return [h('label', {}, c, ' ' + label), c];
}

function form(onsubmit: () => void, ...children: (Node | string)[]): HTMLFormElement {
  return h('form', { class: 'inline', onsubmit: (e: Event) => { e.preventDefault(); onsubmit(); } }, ...children, h('button', { type: 'submit' }, 'Run'));
}

function explorer(scope: Scope, signal: AbortSignal): HTMLElement {
  const ev = input('ev-event', '', 'event (any)');
  const key = input('ev-key', '', 'props key', 10);
  const v = input('ev-val', '', 'value', 10);
  const c = card('Event explorer');
  const run = () => {
    const src = '/api/analytics/behavior/events' + qs({ ...scopeParams(scope), event: ev.value.trim(), prop_key: key.value.trim(), prop_val: v.value.trim(), size: 50 });
    void c.load(src, () => get(src, signal), (d) => [
      h('p', { class: 'muted' }, 'Events matching: ', val(d, 'total'), ' (newest 50 shown)'),
      table(d, 'events', [{ title: 'Time', field: 'time' }, { title: 'Event', field: 'event' }, { title: 'User', field: 'user_id' }]),
    ]);
  };
  c.el.querySelector('header')?.after(form(run, ev, key, v));
  run();
  return c.el;
}

function funnel(scope: Scope, signal: AbortSignal): HTMLElement {
  const steps = input('funnel-steps', new URLSearchParams(location.search).get('steps') ?? 'register,login,level_start,level_clear', 'steps, comma-separated', 40);
  const [seqL, seq] = checkbox('funnel-seq', 'in order');
  const [sameL, same] = checkbox('funnel-same', 'same session');
  const c = card('Funnel');
  const run = () => {
    const src = '/api/analytics/behavior/funnel' + qs({ ...scopeParams(scope), steps: steps.value.replace(/\s+/g, ''), sequential: seq.checked, same_session: same.checked });
    void c.load(src, () => get(src, signal), (d: { steps: { rate: number }[] }) => [
      table(d, 'steps', [{ title: 'Step', field: 'step' }, { title: 'Users', field: 'users' }, { title: 'Conversion %', field: 'rate', dec: 2 }]),
      h('div', { class: 'bars' }, ...d.steps.map((s) => h('div', { class: 'bar', style: `width:${Math.max(1, s.rate)}%` }))),
    ]);
  };
  c.el.querySelector('header')?.after(form(run, steps, seqL, sameL));
  run();
  return c.el;
}

function paths(scope: Scope, signal: AbortSignal): HTMLElement {
  const per = h('select', { id: 'paths-per' }, h('option', { value: 'session' }, 'per session'), h('option', { value: 'user' }, 'per user')) as HTMLSelectElement;
  const steps = input('paths-steps', '4', 'steps', 3);
  const c = card('Top paths');
  const run = () => {
    const src = '/api/analytics/behavior/paths' + qs({ ...scopeParams(scope), per: per.value, steps: steps.value, limit: 20 });
    void c.load(src, () => get(src, signal), (d) => table(d, 'paths', [{ title: 'Path', field: 'path' }, { title: 'Groups', field: 'groups' }], 20));
  };
  c.el.querySelector('header')?.after(form(run, per, steps));
  run();
  return c.el;
}

function adoption(scope: Scope, signal: AbortSignal): HTMLElement {
  const features = input('adoption-features', 'level_start,level_clear,level_fail', 'feature events', 40);
  const per = h('select', { id: 'adoption-per' }, h('option', { value: 'user' }, 'per user'), h('option', { value: 'session' }, 'per session')) as HTMLSelectElement;
  const c = card('Feature adoption');
  const run = () => {
    const src = '/api/analytics/behavior/adoption' + qs({ ...scopeParams(scope), features: features.value.replace(/\s+/g, ''), per: per.value });
    void c.load(src, () => get(src, signal), (d) => [
      h('p', { class: 'muted' }, 'Groups with any event: ', val(d, 'baseline')),
      table(d, 'features', [{ title: 'Feature', field: 'feature' }, { title: 'Groups', field: 'groups' }, { title: 'Adoption %', field: 'rate', dec: 2 }]),
    ]);
  };
  c.el.querySelector('header')?.after(form(run, features, per));
  run();
  return c.el;
}

export const behavior: Page = {
  path: '/behavior',
  title: 'Behavior',
  render(root, scope) {
    const abort = new AbortController();
    root.append(h('div', { class: 'grid2' }, funnel(scope, abort.signal), adoption(scope, abort.signal)), paths(scope, abort.signal), explorer(scope, abort.signal));
    return () => abort.abort();
  },
};
