// Overview: DAU/WAU/MAU, new users, revenue, pay rate, ARPU/ARPPU, D1/D7/D30 of the range's
// last day, and the daily series of the range (`/overview`).
import { get, qs } from '../api';
import { alignSeries, lineChart } from '../chart';
import { card, h, kpis } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

export const overview: Page = {
  path: '/overview',
  title: 'Overview',
  render(root, scope) {
    const c = card('Key figures');
    const s = card('Daily series');
    root.append(c.el, s.el);
    const src = '/api/analytics/overview' + qs(scopeParams(scope));
    const abort = new AbortController();
    const read = get(src, abort.signal);
    void c.load(src, () => read, (d) =>
      kpis(d, [
        { label: 'DAU', key: 'dau' },
        { label: 'WAU', key: 'wau' },
        { label: 'MAU', key: 'mau' },
        { label: 'New users', key: 'new_users' },
        { label: 'Registered', key: 'registered_total' },
        { label: 'Revenue', key: 'revenue_cents', scale: 0.01, dec: 2 },
        { label: 'Pay rate', key: 'pay_rate', dec: 2, unit: '%' },
        { label: 'ARPU', key: 'arpu', scale: 0.01, dec: 4 },
        { label: 'ARPPU', key: 'arppu', scale: 0.01, dec: 4 },
        { label: 'D1 retention', key: 'd1', dec: 2, unit: '%' },
        { label: 'D7 retention', key: 'd7', dec: 2, unit: '%' },
        { label: 'D30 retention', key: 'd30', dec: 2, unit: '%' },
      ]),
    );
    void s.load(src, () => read, (d: { series: Record<string, [string, number][]> }) => {
      const one = (title: string, key: string, scale = 1) => {
        const a = alignSeries([{ label: title, points: (d.series[key] ?? []).map(([t, n]) => [t, n * scale] as [string, number]) }]);
        return h('div', { class: 'spark' }, h('h3', {}, title), a.x.length ? lineChart(a.x, a.series, { height: 150, bars: true }) : h('p', { class: 'muted' }, 'No data in this range.'));
      };
      return h('div', { class: 'grid3' }, one('New users per day', 'new_users'), one('Peak online per day', 'peak_online'), one('Revenue per day', 'revenue_cents', 0.01));
    });
    return () => abort.abort();
  },
};
