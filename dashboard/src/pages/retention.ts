// Retention: the cohort table (signup or first-active cohorts), heat-mapped (`/retention`).
import { get, qs } from '../api';
import { card, h, table } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

export const retention: Page = {
  path: '/retention',
  title: 'Retention',
  render(root, scope) {
    const cohortSel = h('select', { id: 'cohort' }, h('option', { value: 'signup' }, 'signup cohorts'), h('option', { value: 'first_active' }, 'first-active cohorts')) as HTMLSelectElement;
    const c = card('Cohorts (D-N: % of the cohort active on day N; — until that day is over)', cohortSel);
    root.append(c.el);
    const abort = new AbortController();
    const load = () => {
      const src = '/api/analytics/retention' + qs({ ...scopeParams(scope), cohort: cohortSel.value });
      void c.load(src, () => get(src, abort.signal), (d) =>
        table(d, 'cohorts', [
          { title: 'Cohort', field: 'date' },
          { title: 'Users', field: 'total' },
          { title: 'D1 %', field: 'd1', dec: 2, heat: true },
          { title: 'D7 %', field: 'd7', dec: 2, heat: true },
          { title: 'D30 %', field: 'd30', dec: 2, heat: true },
        ], 400),
      );
    };
    cohortSel.addEventListener('change', load);
    load();
    return () => abort.abort();
  },
};
