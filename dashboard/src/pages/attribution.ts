// Attribution: installs, signups, first-active users and day-0 revenue by channel, CPI and
// ROAS D1/D7/D30 (from the configured cost per install), payback days (`/attribution`).
import { get, qs } from '../api';
import { card, kpis, table } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

export const attribution: Page = {
  path: '/attribution',
  title: 'Attribution',
  render(root, scope) {
    const abort = new AbortController();
    const s = card('Summary (ROAS and CPI need api.cpi_cents; — without it)');
    const c = card('By channel');
    root.append(s.el, c.el);
    const src = '/api/analytics/attribution' + qs(scopeParams(scope));
    const read = get(src, abort.signal);
    void s.load(src, () => read, (d) =>
      kpis(d, [
        { label: 'Installs', key: 'summary.installs' },
        { label: 'Signups', key: 'summary.signups' },
        { label: 'First active', key: 'summary.first_active' },
        { label: 'CPI', key: 'summary.cpi_cents', scale: 0.01, dec: 2 },
        { label: 'ROAS D1', key: 'summary.roas_d1', dec: 2, unit: '%' },
        { label: 'ROAS D7', key: 'summary.roas_d7', dec: 2, unit: '%' },
        { label: 'ROAS D30', key: 'summary.roas_d30', dec: 2, unit: '%' },
        { label: 'Payback', key: 'summary.payback_days', unit: 'days' },
      ]),
    );
    void c.load(src, () => read, (d) =>
      table(d, 'by_channel', [
        { title: 'Channel', field: 'channel' },
        { title: 'Installs', field: 'installs' },
        { title: 'Signups', field: 'signups' },
        { title: 'First active', field: 'first_active' },
        { title: 'Revenue D0', field: 'rev_d0_cents', scale: 0.01, dec: 2 },
        { title: 'CPI', field: 'cpi_cents', scale: 0.01, dec: 2 },
        { title: 'ROAS D1 %', field: 'roas_d1', dec: 2 },
        { title: 'ROAS D7 %', field: 'roas_d7', dec: 2 },
        { title: 'ROAS D30 %', field: 'roas_d30', dec: 2 },
      ]),
    );
    return () => abort.abort();
  },
};
