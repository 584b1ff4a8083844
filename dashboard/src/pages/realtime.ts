// Realtime: online now with a live chart, active 1/5/15 min, today's DAU, new users and
// revenue, refreshed every few seconds (`/realtime`; the chart starts from the last hour of
// `/realtime/series` and adds each refresh's online figure).
import type uPlot from 'uplot';
import { ApiError, get, qs } from '../api';
import { lineChart, alignSeries } from '../chart';
import { card, h, kpis } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

/** Refresh period, milliseconds. */
export const REFRESH_MS = 3000;

export const realtime: Page = {
  path: '/realtime',
  title: 'Realtime',
  render(root, scope) {
    const now = card('Now', undefined);
    const live = card('Online (live)');
    root.append(now.el, live.el);
    if (!scope.game || !scope.env) {
      // Realtime figures are per game and environment: no read until both are chosen.
      const what = !scope.game ? 'a game' : 'an environment';
      for (const c of [now, live]) {
        c.el.dataset.state = 'ready';
        c.el.querySelector('.body')?.replaceChildren(h('p', { class: 'muted empty' }, `Choose ${what} (above): realtime figures are per game and environment.`));
      }
      return () => {};
    }
    const src = '/api/analytics/realtime' + qs(scopeParams(scope, false));
    const x: number[] = [];
    const online: (number | null)[] = [];
    let plot: uPlot | undefined;
    const abort = new AbortController();

    const seriesSrc = () => {
      const end = new Date();
      const start = new Date(end.getTime() - 3600_000);
      return '/api/analytics/realtime/series' + qs({ ...scopeParams(scope, false), start: start.toISOString(), end: end.toISOString() });
    };
    // The last hour, read again at a refresh after a read that got no answer or a 5xx
    // (a timeout, ClickHouse away): a refusal (4xx) would be refused again.
    let again = false;
    const loadSeries = () => {
      const seriesUrl = seriesSrc();
      const read = () =>
        get(seriesUrl, abort.signal).catch((e: unknown) => {
          again = e instanceof ApiError && (e.status === 0 || e.status >= 500);
          throw e;
        });
      return live.load(seriesUrl, read, (d: { online: [string, number][] }) => {
        const a = alignSeries([{ label: 'online', points: d.online }]);
        x.splice(0, x.length, ...a.x);
        online.splice(0, online.length, ...a.series[0].values);
        const el = lineChart(x, [{ label: 'online', values: online }], { height: 220 });
        plot = (el as HTMLElement & { plot?: uPlot }).plot;
        return el;
      });
    };
    let first = loadSeries();

    const tick = async () => {
      let latest: Record<string, number> | undefined;
      await now.load(src, async () => (latest = await get(src, abort.signal)), (d) =>
        kpis(d, [
          { label: 'Online now', key: 'online' },
          { label: 'Active 1 min', key: 'active_1m' },
          { label: 'Active 5 min', key: 'active_5m' },
          { label: 'Active 15 min', key: 'active_15m' },
          { label: 'Peak today', key: 'online_peak_today' },
          { label: 'Peak all time', key: 'online_peak_all_time' },
          { label: 'DAU today', key: 'dau_today' },
          { label: 'New today', key: 'new_today' },
          { label: 'Registered', key: 'registered_total' },
          { label: 'Revenue 5 min', key: 'rev_5m', scale: 0.01, dec: 2 },
          { label: 'Revenue today', key: 'rev_today', scale: 0.01, dec: 2 },
          { label: 'Payment success 5 min', key: 'pay_succ_rate', dec: 2, unit: '%' },
        ]),
      );
      await first;
      if (!plot && again) {
        again = false;
        first = loadSeries();
      }
      if (latest && plot) {
        x.push(Date.now() / 1000);
        online.push(latest.online);
        while (x.length > 400) {
          x.shift();
          online.shift();
        }
        plot.setData([x, online]);
      }
    };
    // One refresh at a time: a slow one is not overlapped by the next.
    let busy = false;
    const refresh = () => {
      if (busy) return;
      busy = true;
      void tick().finally(() => (busy = false));
    };
    refresh();
    const timer = setInterval(refresh, REFRESH_MS);
    return () => {
      clearInterval(timer);
      abort.abort();
    };
  },
};
