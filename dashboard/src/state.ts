// What every page reads: the game, environment and date range, kept in the URL's query
// (so a link shows the same view) and in sessionStorage (so they survive a page change).
import { claimedGames, readableGame } from './auth';
import { ymd } from './format';

export interface Scope {
  game: string;
  env: string;
  /** `YYYY-MM-DD`, inclusive. */
  start: string;
  /** `YYYY-MM-DD`, inclusive (the API takes a date as the end of that day). */
  end: string;
}

const KEY = 'croupier.scope';

function defaults(): Scope {
  const game = claimedGames()[0] ?? '';
  const today = new Date();
  const week = new Date(today.getTime() - 6 * 86400_000);
  return { game, env: 'prod', start: ymd(week), end: ymd(today) };
}

export function readScope(): Scope {
  const s = { ...defaults() };
  try {
    Object.assign(s, JSON.parse(sessionStorage.getItem(KEY) ?? '{}'));
  } catch {
    /* a bad stored value: the defaults */
  }
  const q = new URLSearchParams(location.search);
  if (q.has('game_id')) s.game = q.get('game_id') ?? '';
  if (q.has('env')) s.env = q.get('env') ?? '';
  if (q.get('start')) s.start = q.get('start') ?? s.start;
  if (q.get('end')) s.end = q.get('end') ?? s.end;
  // A game the token may not read (kept from another token in this tab): its first game.
  if (!q.has('game_id')) s.game = readableGame(s.game);
  return s;
}

/** Forgets the stored scope (log out: the next token starts from its own games). */
export function clearScope(): void {
  sessionStorage.removeItem(KEY);
}

export function saveScope(s: Scope): void {
  sessionStorage.setItem(KEY, JSON.stringify(s));
}

/** The scope as query parameters of an API read. */
export function scopeParams(s: Scope, range = true): Record<string, string> {
  const p: Record<string, string> = { game_id: s.game, env: s.env };
  if (range) {
    p.start = s.start;
    p.end = s.end;
  }
  return p;
}

/** The scope as the page URL's query. */
export function scopeQuery(s: Scope): string {
  return '?' + new URLSearchParams({ game_id: s.game, env: s.env, start: s.start, end: s.end }).toString();
}
