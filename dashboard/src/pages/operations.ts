// Operations: the data plane's health from its own /metrics, read by the browser every few
// seconds (no Prometheus): ingest events/s, refusals by reason, ack p99, the components
// not ready (`croupier_component_ready`), backlog (none shown while Redis cannot be read), worker
// delay, freshness, rows inserted, dead letters. Each figure says which family it is
// (`data-metric`): the browser tests sum the same family from their own scrape.
import { metricsText } from '../api';
import { lineChart } from '../chart';
import { card, h } from '../dom';
import { fixed, NONE } from '../format';
import { buckets, by, parse, quantile, Sample, sum } from '../prom';
import type uPlot from 'uplot';
import type { Page } from './page';

const REFRESH_MS = 3000;
const INGEST = { route: '/api/ingest/events' };

function fig(label: string, text: string, metric?: string, unit?: string): HTMLElement {
  return h('div', { class: 'kpi' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, h('span', { 'data-metric': metric, class: 'num' }, text), unit ? h('small', {}, ' ' + unit) : null));
}

function labelTable(title: string, m: Map<string, number>, metric: string, label: string): HTMLElement {
  if (m.size === 0) return h('p', { class: 'muted empty' }, `${title}: none`);
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, h('th', {}, title), h('th', {}, 'total'))),
    h('tbody', {}, ...[...m.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', { class: 'num', 'data-metric': metric, 'data-label': `${label}=${k}` }, fixed(v, 0))))),
  );
}

export const operations: Page = {
  path: '/operations',
  title: 'Operations',
  render(root) {
    const abort = new AbortController();
    const now = card('Data plane');
    const rate = card('Events accepted per second');
    const detail = card('Refusals and dead letters');
    root.append(now.el, rate.el, detail.el);
    let last: { at: number; samples: Sample[] } | undefined;
    const xs: number[] = [];
    const ys: (number | null)[] = [];
    let plot: uPlot | undefined;

    const tick = async () => {
      let samples: Sample[] = [];
      let failure: unknown;
      const at = Date.now() / 1000;
      const read = async () => {
        try {
          samples = parse(await metricsText(abort.signal));
        } catch (e) {
          failure = e;
          throw e;
        }
      };
      await now.load('/metrics', read, () => {
        const accepted = sum(samples, 'croupier_events_accepted_total');
        const perSec = last ? (accepted - sum(last.samples, 'croupier_events_accepted_total')) / Math.max(0.001, at - last.at) : null;
        const ack = buckets(samples, 'croupier_http_request_duration_seconds', INGEST);
        const ackNow = last ? quantile(0.99, ack, buckets(last.samples, 'croupier_http_request_duration_seconds', INGEST)) : null;
        const ackAll = quantile(0.99, ack);
        const delay = quantile(0.99, buckets(samples, 'croupier_worker_event_delay_seconds'));
        const ages = samples.filter((s) => s.name === 'croupier_stream_oldest_unacked_age_seconds').map((s) => s.value);
        const ms = (v: number | null) => (v === null ? NONE : fixed(v * 1000, 1));
        // The streams' gauges are absent when Redis cannot be read: no figure, not 0.
        const backlog = samples.filter((s) => s.name === 'croupier_stream_backlog_events');
        const ready = samples.filter((s) => s.name === 'croupier_component_ready');
        const down = ready.filter((s) => s.value === 0).map((s) => s.labels.component ?? '?');
        if (perSec !== null) {
          xs.push(at);
          ys.push(perSec);
          if (xs.length > 200) { xs.shift(); ys.shift(); }
          plot?.setData([xs, ys]);
        }
        return h(
          'div',
          { class: 'kpis' },
          fig('Ingest events/s', perSec === null ? NONE : fixed(perSec, 1), undefined),
          fig('Events accepted', fixed(accepted, 0), 'croupier_events_accepted_total'),
          fig('Events refused', fixed(sum(samples, 'croupier_events_refused_total'), 0), 'croupier_events_refused_total'),
          fig('Ack p99 (last interval)', ms(ackNow), undefined, 'ms'),
          fig('Ack p99 (since start)', ms(ackAll), undefined, 'ms'),
          fig('Dependencies', down.length ? `${[...new Set(down)].join(', ')} not ready` : ready.length ? 'ready' : NONE),
          backlog.length
            ? fig('Backlog', fixed(sum(samples, 'croupier_stream_backlog_events'), 0), 'croupier_stream_backlog_events', 'events')
            : fig('Backlog', NONE, undefined, 'events'),
          fig('Worker delay p99', ms(delay), undefined, 'ms'),
          fig('Freshness (oldest unacked)', ages.length ? fixed(Math.max(...ages), 1) : NONE, undefined, 's'),
          fig('Rows inserted', fixed(sum(samples, 'croupier_worker_rows_inserted_total'), 0), 'croupier_worker_rows_inserted_total'),
          fig('Insert failures', fixed(sum(samples, 'croupier_worker_insert_failures_total'), 0), 'croupier_worker_insert_failures_total'),
          fig('Dead letters', fixed(sum(samples, 'croupier_dead_letters_total'), 0), 'croupier_dead_letters_total'),
        );
      });
      if (!samples.length && failure !== undefined && !last) {
        // Nothing read yet: the other blocks say why, as the first does, until a read works.
        const refused = async () => {
          throw failure;
        };
        void rate.load('/metrics', refused, () => []);
        void detail.load('/metrics', refused, () => []);
      }
      if (samples.length) {
        if (!plot) {
          void rate.load('/metrics', async () => null, () => {
            const el = lineChart(xs, [{ label: 'events/s', values: ys }], { height: 180 });
            plot = (el as HTMLElement & { plot?: uPlot }).plot;
            return el;
          });
        }
        void detail.load('/metrics', async () => null, () =>
          h('div', { class: 'grid2' }, labelTable('Refusal reason', by(samples, 'croupier_events_refused_total', 'reason'), 'croupier_events_refused_total', 'reason'), labelTable('Dead-letter reason', by(samples, 'croupier_dead_letters_total', 'reason'), 'croupier_dead_letters_total', 'reason')),
        );
        last = { at, samples };
      }
    };
    void tick();
    const timer = setInterval(() => void tick(), REFRESH_MS);
    return () => {
      clearInterval(timer);
      abort.abort();
    };
  },
};
