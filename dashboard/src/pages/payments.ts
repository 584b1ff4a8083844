// Payments: totals, revenue by dimension, the top products' trend, transactions
// (`/payments/summary`, `/payments/product_trend`, `/payments/transactions`).
import { errorText, get, qs } from '../api';
import { alignSeries, lineChart } from '../chart';
import { card, h, kpis, table, val } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

const DIMS: [string, string, string][] = [
  ['by_channel', 'channel', 'Channel'],
  ['by_platform', 'platform', 'Platform'],
  ['by_country', 'country', 'Country'],
  ['by_region', 'region', 'Region'],
  ['by_city', 'city', 'City'],
  ['by_product', 'product_id', 'Product'],
];

export const payments: Page = {
  path: '/payments',
  title: 'Payments',
  render(root, scope) {
    const abort = new AbortController();
    const totals = card('Totals');
    const dimSel = h('select', { id: 'dimension' }, ...DIMS.map(([k, , t]) => h('option', { value: k }, t))) as HTMLSelectElement;
    const byDim = card('By dimension', dimSel);
    const trend = card('Top products (hourly revenue)');
    trend.el.querySelector('.body')?.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    const statusSel = h('select', { id: 'tx-status' }, ...['', 'success', 'failed', 'refund'].map((s) => h('option', { value: s }, s || 'any status'))) as HTMLSelectElement;
    const tx = card('Transactions', statusSel);
    root.append(totals.el, h('div', { class: 'grid2' }, byDim.el, trend.el), tx.el);

    const src = '/api/analytics/payments/summary' + qs(scopeParams(scope));
    const summary = get(src, abort.signal);
    void totals.load(src, () => summary, (d) =>
      kpis(d, [
        { label: 'Revenue', key: 'totals.revenue_cents', scale: 0.01, dec: 2 },
        { label: 'Refunds', key: 'totals.refunds_cents', scale: 0.01, dec: 2 },
        { label: 'Failed', key: 'totals.failed' },
        { label: 'Success rate', key: 'totals.success_rate', dec: 2, unit: '%' },
      ]),
    );
    const showDim = () => {
      const [key, field, title] = DIMS.find(([k]) => k === dimSel.value) ?? DIMS[0];
      void byDim.load(src, () => summary, (d) =>
        table(d, key, [
          { title, field },
          { title: 'Revenue', field: 'revenue_cents', scale: 0.01, dec: 2 },
          { title: 'Success', field: 'success' },
          { title: 'Payments', field: 'total' },
          { title: 'Success %', field: 'success_rate', dec: 2 },
        ], 20),
      );
    };
    dimSel.addEventListener('change', showDim);
    showDim();

    void summary
      .then((d: { by_product: { product_id: string }[] }) => {
        // Payments without a product id have no trend to ask for, and `product_id` is a
        // comma-separated list whose items the API trims: of the top 3, ids holding a
        // comma or spaces around them cannot be named in it, and are said, not drawn.
        const first3 = d.by_product.slice(0, 3).map((p) => p.product_id);
        const top = first3.filter((id) => id !== '' && !id.includes(',') && id.trim() === id);
        const skipped = first3.filter((id) => !top.includes(id)).map((id) => (id === '' ? '(no product id)' : JSON.stringify(id)));
        const note = skipped.length ? h('p', { class: 'muted' }, `Not drawn: ${skipped.join(', ')}.`) : null;
        if (top.length === 0) {
          trend.el.dataset.state = 'ready';
          trend.el.querySelector('.body')?.replaceChildren(h('p', { class: 'muted empty' }, first3.length ? `No product of the top 3 can be drawn. ${note?.textContent ?? ''}` : 'No products in this range.'));
          return;
        }
        const tsrc = '/api/analytics/payments/product_trend' + qs({ ...scopeParams(scope), product_id: top.join(','), granularity: 'hour' });
        return trend.load(tsrc, () => get(tsrc, abort.signal), (t: { products: { product_id: string; points: { time: string; revenue_cents: number }[] }[] }) => {
          const a = alignSeries(t.products.map((p) => ({ label: p.product_id, points: p.points.map((x) => [x.time, x.revenue_cents / 100] as [string, number]) })));
          const chart = lineChart(a.x, a.series, { height: 200 });
          return note ? [chart, note] : chart;
        });
      })
      .catch((e: unknown) => {
        if ((e as Error).name === 'AbortError') return;
        // Drawn from the summary: its error, as the summary's cards show it.
        trend.el.querySelector('.body')?.replaceChildren(h('p', { class: 'error' }, errorText(e)));
        trend.el.dataset.state = 'error';
      });

    let page = 1;
    const loadTx = () => {
      const tsrc = '/api/analytics/payments/transactions' + qs({ ...scopeParams(scope), status: statusSel.value, page, size: 20 });
      void tx.load(tsrc, () => get(tsrc, abort.signal), (d: { total: number }) => {
        const pages = Math.max(1, Math.ceil(d.total / 20));
        const pager = h(
          'div',
          { class: 'pager' },
          h('button', { disabled: page <= 1, onclick: () => { page -= 1; loadTx(); } }, '‹'),
          ` page ${page} of ${pages} · `,
          val(d, 'total'),
          ' transactions ',
          h('button', { disabled: page >= pages, onclick: () => { page += 1; loadTx(); } }, '›'),
        );
        return [
          table(d, 'transactions', [
            { title: 'Time', field: 'time' },
            { title: 'Order', field: 'order_id' },
            { title: 'User', field: 'user_id' },
            { title: 'Amount', field: 'amount_cents', scale: 0.01, dec: 2 },
            { title: 'Status', field: 'status' },
            { title: 'Channel', field: 'channel' },
            { title: 'Reason', field: 'reason' },
          ]),
          pager,
        ];
      });
    };
    statusSel.addEventListener('change', () => { page = 1; loadTx(); });
    loadTx();
    return () => abort.abort();
  },
};
