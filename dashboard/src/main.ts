// The dashboard's shell: login, navigation, the game / environment / date-range bar, and
// the page router (History API; the control listener answers index.html at each page path).
import './style.css';
import { get, qs, setUnauthorizedHandler } from './api';
import { claimedGames, claims, clearToken, readableGame, setToken, token } from './auth';
import { h } from './dom';
import { clearScope, readScope, saveScope, Scope, scopeQuery } from './state';
import type { Page } from './pages/page';
import { realtime } from './pages/realtime';
import { overview } from './pages/overview';
import { retention } from './pages/retention';
import { behavior } from './pages/behavior';
import { payments } from './pages/payments';
import { levels } from './pages/levels';
import { ltv } from './pages/ltv';
import { attribution } from './pages/attribution';
import { operations } from './pages/operations';

const PAGES: Page[] = [realtime, overview, retention, behavior, payments, levels, ltv, attribution, operations];

const app = document.getElementById('app') as HTMLElement;
let stopPage: (() => void) | undefined;

function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route();
}

/** Why the last session ended (the API's 401), said once on the login page it led to. */
let sessionEnded = '';

setUnauthorizedHandler((message) => {
  const next = location.pathname + location.search;
  sessionEnded = `The session ended (${message}): log in again.`;
  navigate('/login?next=' + encodeURIComponent(next), true);
});

function loginPage(): HTMLElement {
  // A token in the fragment (`/login#token=...`, as `croupier demo` prints) logs in at
  // once; the fragment never reaches the server and is removed from the address bar.
  const frag = new URLSearchParams(location.hash.slice(1)).get('token');
  const input = h('textarea', { id: 'token', rows: 4, placeholder: 'eyJhbGciOi…', spellcheck: 'false' }) as HTMLTextAreaElement;
  const msg = h('p', { class: 'error', id: 'login-error' }, sessionEnded);
  sessionEnded = '';
  const next = new URLSearchParams(location.search).get('next') || '/realtime';
  const submit = async (t: string) => {
    msg.textContent = '';
    setToken(t);
    try {
      // Any read checks the token: the filters are cheap. A token limited to some games
      // must name one of them.
      const game = claimedGames()[0] ?? '';
      // A refused token stays on this page, with the answer (no detour through the 401 handler).
      await get('/api/analytics/filters' + qs({ game_id: game }), undefined, false);
      // A path of this site only (`//host/...` and `/\host/...` name another).
      const local = /^\/(?![\/\\])/.test(next) && !next.startsWith('/login');
      navigate(local ? readableNext(next) : '/realtime', true);
    } catch (e) {
      clearToken();
      msg.textContent = (e as Error).message;
      history.replaceState(null, '', '/login' + location.search);
    }
  };
  const form = h(
    'form',
    {
      class: 'login card',
      onsubmit: (e: Event) => {
        e.preventDefault();
        void submit(input.value);
      },
    },
    h('h1', {}, 'Croupier Analytics'),
    h('p', { class: 'muted' }, 'Paste an Analytics API token (a JWT with the analytics:read permission). It is kept in this tab only.'),
    input,
    h('button', { type: 'submit', id: 'login' }, 'Log in'),
    msg,
  );
  if (frag) {
    history.replaceState(null, '', location.pathname + location.search);
    void submit(frag);
  }
  return h('main', { class: 'login-page' }, form);
}

/**
 * The page to go back to after logging in, its game replaced by the token's first when the
 * token may not read it (the page was left by another token, whose session ran out).
 */
function readableNext(next: string): string {
  const url = new URL(next, location.origin);
  const game = url.searchParams.get('game_id');
  if (game === null || readableGame(game) === game) return next;
  url.searchParams.set('game_id', readableGame(game));
  return url.pathname + url.search;
}

function scopeBar(scope: Scope, onChange: (s: Scope) => void): HTMLElement {
  const list = h('datalist', { id: 'games' }, ...claimedGames().map((g) => h('option', { value: g })));
  const game = h('input', { id: 'game', list: 'games', value: scope.game, placeholder: 'all games', size: 14 }) as HTMLInputElement;
  // The usual environments, and the one the URL names when it is another (an env is any
  // string the events carry): the page shows and keeps what it reads.
  const envs = ['prod', 'staging', 'dev', ''];
  if (!envs.includes(scope.env)) envs.splice(envs.length - 1, 0, scope.env);
  const env = h('select', { id: 'env' }, ...envs.map((e) => h('option', { value: e, selected: e === scope.env }, e || 'all envs'))) as HTMLSelectElement;
  const start = h('input', { id: 'start', type: 'date', value: scope.start }) as HTMLInputElement;
  const end = h('input', { id: 'end', type: 'date', value: scope.end }) as HTMLInputElement;
  const apply = () => onChange({ game: game.value.trim(), env: env.value, start: start.value || scope.start, end: end.value || scope.end });
  for (const el of [game, env, start, end]) el.addEventListener('change', apply);
  return h('div', { class: 'scope' }, h('label', {}, 'Game ', game, list), h('label', {}, 'Env ', env), h('label', {}, 'From ', start), h('label', {}, 'To ', end));
}

function route(): void {
  stopPage?.();
  stopPage = undefined;
  const path = location.pathname;
  if (path === '/login' || !token()) {
    if (path !== '/login') {
      history.replaceState(null, '', '/login?next=' + encodeURIComponent(path + location.search));
    }
    app.replaceChildren(loginPage());
    document.title = 'Log in · Croupier Analytics';
    return;
  }
  const page = PAGES.find((p) => p.path === path) ?? realtime;
  if (page.path !== path) history.replaceState(null, '', page.path + location.search);
  const scope = readScope();
  saveScope(scope);
  // Dates of the link passed over (none): the address shows the range read instead.
  const q = new URLSearchParams(location.search);
  if ((q.has('start') && q.get('start') !== scope.start) || (q.has('end') && q.get('end') !== scope.end)) {
    q.set('start', scope.start);
    q.set('end', scope.end);
    history.replaceState(null, '', page.path + '?' + q.toString());
  }
  const content = h('div', { class: 'content', id: 'page', 'data-page': page.path.slice(1) });
  const nav = h(
    'nav',
    {},
    h('div', { class: 'brand' }, 'Croupier'),
    ...PAGES.map((p) =>
      h(
        'a',
        {
          href: p.path + scopeQuery(scope),
          class: p === page ? 'active' : '',
          onclick: (e: Event) => {
            e.preventDefault();
            navigate(p.path + scopeQuery(readScope()));
          },
        },
        p.title,
      ),
    ),
    h('div', { class: 'user' }, String(claims().sub ?? ''), ' ', h('a', { href: '/login', id: 'logout', onclick: (e: Event) => { e.preventDefault(); clearToken(); clearScope(); navigate('/login', true); } }, 'log out')),
  );
  const bar = scopeBar(scope, (s) => {
    saveScope(s);
    navigate(page.path + scopeQuery(s), true);
  });
  app.replaceChildren(h('div', { class: 'shell' }, nav, h('main', {}, h('div', { class: 'top' }, h('h1', {}, page.title), bar), content)));
  document.title = `${page.title} · Croupier Analytics`;
  stopPage = page.render(content, scope);
}

window.addEventListener('popstate', route);
route();
