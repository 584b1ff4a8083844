// The Analytics API's JWT, kept in sessionStorage (gone when the tab closes).

const KEY = 'croupier.token';

export function token(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setToken(t: string): void {
  sessionStorage.setItem(KEY, t.trim());
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
}

/** The token's claims (unverified: only to prefill the game selector and show the user). */
export function claims(t: string | null = token()): Record<string, unknown> {
  if (!t) return {};
  try {
    const part = t.split('.')[1] ?? '';
    // base64url of UTF-8 bytes (atob gives one character per byte).
    const bytes = Uint8Array.from(atob(part.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
    const json = new TextDecoder().decode(bytes);
    const v: unknown = JSON.parse(json);
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** The games the token names (`games`: a list, or one string), `*` left out. */
export function claimedGames(t: string | null = token()): string[] {
  const g = claims(t).games;
  const list = Array.isArray(g) ? g : typeof g === 'string' ? [g] : [];
  return list.filter((x): x is string => typeof x === 'string' && x !== '' && x !== '*');
}

/** Whether the token reads every game: no `games` claim, or one that holds `*`. */
export function anyGame(t: string | null = token()): boolean {
  const g = claims(t).games;
  if (g === undefined || g === null) return true;
  return Array.isArray(g) ? g.includes('*') : g === '*';
}

/** `game` if the token may read it, else the first game the token names. */
export function readableGame(game: string, t: string | null = token()): string {
  const games = claimedGames(t);
  return games.length === 0 || anyGame(t) || games.includes(game) ? game : games[0];
}
