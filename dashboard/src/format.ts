// Number formatting shared by every page. A figure is shown as `toFixed(decimals)` of
// value × scale with thousands separators, so the browser tests can read it back exactly.

/** `1234567.5` → `1,234,567.50` (for `decimals` = 2). */
export function fixed(n: number, decimals: number): string {
  const [int, frac] = n.toFixed(decimals).split('.');
  const sign = int.startsWith('-') ? '-' : '';
  const digits = sign ? int.slice(1) : int;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return sign + grouped + (frac !== undefined ? '.' + frac : '');
}

/** Shown for a figure the API returns as `null` (a horizon not over yet). */
export const NONE = '—';

/** A figure as shown: `null` → `—`, numbers scaled and fixed, anything else as text. */
export function show(v: unknown, scale = 1, decimals = 0): string {
  if (v === null || v === undefined) return NONE;
  if (typeof v === 'number') return fixed(v * scale, decimals);
  return String(v);
}

/** `YYYY-MM-DD` of a date in UTC. */
export function ymd(d: Date): string {
  return d.toISOString().slice(0, 10);
}

/** `YYYY-MM-DD HH:MM:SS` of an RFC 3339 time, in UTC. */
export function when(rfc3339: string): string {
  return rfc3339.replace('T', ' ').replace(/(\.\d+)?Z$/, '');
}

/** Seconds since the epoch of an RFC 3339 time. */
export function epoch(rfc3339: string): number {
  return Date.parse(rfc3339) / 1000;
}
