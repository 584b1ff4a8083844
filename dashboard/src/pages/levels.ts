// Levels: the level funnel, per-level win rate / difficulty / duration / retries with a
// segment selector, the win-rate chart, and per-episode / per-map small multiples
// (`/levels`, `/levels/episodes`, `/levels/maps`).
import { get, qs } from '../api';
import { lineChart } from '../chart';
import { card, h, table } from '../dom';
import { scopeParams } from '../state';
import type { Page } from './page';

interface Level { level: string; players: number; win_rate: number }

export const levels: Page = {
  path: '/levels',
  title: 'Levels',
  render(root, scope) {
    const abort = new AbortController();
    const episode = h('input', { id: 'episode', placeholder: 'episode (all)', size: 10 }) as HTMLInputElement;
    const funnel = card('Level funnel', episode);
    const seg = h('select', { id: 'segment' }, ...[['', 'all players'], ['new', 'new'], ['returning', 'returning'], ['payer', 'payers']].map(([v, t]) => h('option', { value: v }, t))) as HTMLSelectElement;
    const per = card('Per level', seg);
    const chart = card('Win rate by level');
    const eps = card('By episode');
    const maps = card('By map');
    root.append(h('div', { class: 'grid2' }, funnel.el, chart.el), per.el, h('div', { class: 'grid2' }, eps.el, maps.el));

    const load = () => {
      const src = '/api/analytics/levels' + qs({ ...scopeParams(scope), episode: episode.value.trim() });
      const read = get(src, abort.signal);
      void funnel.load(src, () => read, (d) => table(d, 'funnel', [{ title: 'Step', field: 'step' }, { title: 'Users', field: 'users' }, { title: '%', field: 'rate', dec: 2 }]));
      const showPer = () =>
        per.load(src, () => read, (d) =>
          seg.value
            ? table(d, `per_level_segments.${seg.value}`, [{ title: 'Level', field: 'level' }, { title: 'Players', field: 'players' }, { title: 'Win rate %', field: 'win_rate', dec: 2 }])
            : table(d, 'per_level', [
                { title: 'Level', field: 'level' },
                { title: 'Players', field: 'players' },
                { title: 'Win rate %', field: 'win_rate', dec: 2 },
                { title: 'Avg duration s', field: 'avg_duration_sec', dec: 2 },
                { title: 'Avg retries', field: 'avg_retries', dec: 2 },
                { title: 'Difficulty', field: 'difficulty' },
              ]),
        );
      seg.onchange = () => void showPer();
      void showPer();
      void chart.load(src, () => read, (d: { per_level: Level[]; per_level_segments: Record<string, Level[]> }) => {
        const x = d.per_level.map((_, i) => i + 1);
        const line = (label: string, rows: Level[]) => ({ label, values: d.per_level.map((l) => rows.find((r) => r.level === l.level)?.win_rate ?? null) });
        if (x.length === 0) return h('p', { class: 'muted empty' }, 'No levels in this range.');
        return [
          lineChart(x, [line('all', d.per_level), line('new', d.per_level_segments.new), line('returning', d.per_level_segments.returning), line('payer', d.per_level_segments.payer)], { height: 200, time: false }),
          h('p', { class: 'muted' }, 'x: levels in order: ' + d.per_level.map((l) => l.level).join(', ')),
        ];
      });
    };
    episode.addEventListener('change', load);
    load();

    const facets = (c: ReturnType<typeof card>, route: string, key: string, name: string) => {
      const src = `/api/analytics/levels/${route}` + qs(scopeParams(scope));
      void c.load(src, () => get(src, abort.signal), (d: Record<string, unknown[]>) => {
        const groups = d[key] ?? [];
        if (groups.length === 0) return h('p', { class: 'muted empty' }, `No events with props.${name} in this range.`);
        return h(
          'div',
          { class: 'multiples' },
          ...groups.slice(0, 12).map((g, i) =>
            h('div', { class: 'multiple' }, h('h3', {}, String((g as Record<string, unknown>)[name])), table(d, `${key}.${i}.per_level`, [{ title: 'Level', field: 'level' }, { title: 'Players', field: 'players' }, { title: 'Win %', field: 'win_rate', dec: 2 }], 20)),
          ),
        );
      });
    };
    facets(eps, 'episodes', 'episodes', 'episode');
    facets(maps, 'maps', 'maps', 'map');
    return () => abort.abort();
  },
};
