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

/** Whether `d` is a calendar date written `YYYY-MM-DD` (what the date inputs show). */
export function isDate(d: unknown): d is string {
  if (typeof d !== 'string' || !/^\d{4}-\d{2}-\d{2}$/.test(d)) return false;
  const t = new Date(d + 'T00:00:00Z');
  return !Number.isNaN(t.getTime()) && t.toISOString().slice(0, 10) === d;
}

export function readScope(): Scope {
  const s = { ...defaults() };
  try {
    const stored = JSON.parse(sessionStorage.getItem(KEY) ?? '{}');
    if (typeof stored.game === 'string') s.game = stored.game;
    if (typeof stored.env === 'string') s.env = stored.env;
    // A date that is none (kept from a link that named one) is not kept: the default.
    if (isDate(stored.start)) s.start = stored.start;
    if (isDate(stored.end)) s.end = stored.end;
  } catch {
    /* a bad stored value: the defaults */
  }
  const q = new URLSearchParams(location.search);
  if (q.has('game_id')) s.game = q.get('game_id') ?? '';
  if (q.has('env')) s.env = q.get('env') ?? '';
  // A link's date that is none is passed over (the date inputs could not show it, and
  // every block would say 400 without the user seeing why): the stored or default one.
  if (isDate(q.get('start'))) s.start = q.get('start') ?? s.start;
  if (isDate(q.get('end'))) s.end = q.get('end') ?? s.end;
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
