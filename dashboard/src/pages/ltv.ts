// LTV: revenue per cohort user at D1/D7/D30/D90 (`/ltv`, cents, — until the horizon is
// over), and the user segments (`/segments`).
import { get, qs } from '../api';
import { card, table } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

export const ltv: Page = {
  path: '/ltv',
  title: 'LTV',
  render(root, scope) {
    const abort = new AbortController();
    const c = card('LTV per cohort user (signup cohorts)');
    const s = card('Segments');
    root.append(c.el, s.el);
    const src = '/api/analytics/ltv' + qs(scopeParams(scope));
    void c.load(src, () => get(src, abort.signal), (d) =>
      table(d, 'cohorts', [
        { title: 'Cohort', field: 'date' },
        { title: 'Users', field: 'users' },
        { title: 'LTV D1', field: 'ltv_d1', scale: 0.01, dec: 4 },
        { title: 'LTV D7', field: 'ltv_d7', scale: 0.01, dec: 4 },
        { title: 'LTV D30', field: 'ltv_d30', scale: 0.01, dec: 4 },
        { title: 'LTV D90', field: 'ltv_d90', scale: 0.01, dec: 4 },
      ], 400),
    );
    const ssrc = '/api/analytics/segments' + qs(scopeParams(scope));
    void s.load(ssrc, () => get(ssrc, abort.signal), (d) =>
      table(d, 'segments', [
        { title: 'Segment', field: 'name' },
        { title: 'Users', field: 'users' },
        { title: 'Share %', field: 'ratio', dec: 2 },
        { title: 'ARPU', field: 'arpu', scale: 0.01, dec: 4 },
      ]),
    );
    return () => abort.abort();
  },
};
