// Line and bar charts with uPlot (a small, maintained canvas chart library).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const COLORS = ['#2f7de1', '#e8743b', '#19a979', '#945ecf', '#d64d76', '#13a4b4'];

/**
 * The value axis's width: its longest label, measured in the axis's font, with the ticks
 * and the gap (a fixed width cut large figures to their last digits). At least 40 px.
 */
function valueAxisSize(self: uPlot, values: string[] | null, axisIdx: number, cycleNum: number): number {
  const axis = self.axes[axisIdx] as uPlot.Axis & { _size?: number };
  if (cycleNum > 1 && axis._size) return axis._size;
  const longest = (values ?? []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), '');
  const font = Array.isArray(axis.font) ? axis.font[0] : axis.font;
  if (typeof font === 'string') self.ctx.font = font;
  const text = longest ? self.ctx.measureText(longest).width / (window.devicePixelRatio || 1) : 0;
  const ticks = typeof axis.ticks?.size === 'number' ? axis.ticks.size : 10;
  const gap = typeof axis.gap === 'number' ? axis.gap : 5;
  return Math.max(40, Math.ceil(text + ticks + gap + 4));
}

/** A time series chart: x in unix seconds, one line per series. */
export function lineChart(x: number[], series: { label: string; values: (number | null)[] }[], opts: { height?: number; bars?: boolean; time?: boolean } = {}): HTMLElement {
  const el = document.createElement('div');
  el.className = 'chart';
  const width = () => Math.max(280, (el.parentElement?.clientWidth ?? 600) - 8);
  const data: uPlot.AlignedData = [x, ...series.map((s) => s.values)];
  const plot = new uPlot(
    {
      width: 600,
      height: opts.height ?? 180,
      // A single time (a first day, a first hour) would otherwise get an axis of years:
      // half a day on each side of a day's midnight, half an hour of any other time.
      scales: {
        x: {
          time: opts.time ?? true,
          range: (u: uPlot, min: number, max: number): uPlot.Range.MinMax => {
            // uPlot widens a single time by itself before asking: the data says.
            const xs = u.data[0] ?? [];
            if (xs.length !== 1 || !(opts.time ?? true)) return [min, max];
            const x = Number(xs[0]);
            const pad = x % 86400 === 0 ? 43200 : 1800;
            return [x - pad, x + pad];
          },
        },
      },
      legend: { show: series.length > 1 },
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          fill: series.length === 1 ? COLORS[i % COLORS.length] + '22' : undefined,
          paths: opts.bars ? uPlot.paths.bars?.({ size: [0.6, 40] }) : undefined,
          points: { show: x.length < 40 },
        })),
      ],
      axes: [{}, { size: valueAxisSize }],
    },
    data,
    el,
  );
  // Sized once attached, and again with the window.
  requestAnimationFrame(() => plot.setSize({ width: width(), height: opts.height ?? 180 }));
  const onResize = () => plot.setSize({ width: width(), height: opts.height ?? 180 });
  window.addEventListener('resize', onResize);
  (el as HTMLElement & { plot?: uPlot }).plot = plot;
  const obs = new MutationObserver(() => {
    if (!el.isConnected) {
      window.removeEventListener('resize', onResize);
      plot.destroy();
      obs.disconnect();
    }
  });
  requestAnimationFrame(() => el.parentElement && obs.observe(document.body, { childList: true, subtree: true }));
  return el;
}

/** `[[RFC 3339, n]]` series on a common x axis (the union of their times). */
export function alignSeries(named: { label: string; points: [string, number][] }[]): { x: number[]; series: { label: string; values: (number | null)[] }[] } {
  const xs = new Set<number>();
  for (const s of named) for (const [t] of s.points) xs.add(Date.parse(t) / 1000);
  const x = [...xs].sort((a, b) => a - b);
  const index = new Map(x.map((v, i) => [v, i]));
  const series = named.map((s) => {
    const values: (number | null)[] = x.map(() => null);
    for (const [t, n] of s.points) values[index.get(Date.parse(t) / 1000) ?? 0] = n;
    return { label: s.label, values };
  });
  return { x, series };
}
