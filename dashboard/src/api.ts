// The Analytics API client: bearer token, JSON answers, the API's error contract
// ({error, message, field}); a 401 sends the user back to the login page.
import { clearToken, token } from './auth';

/** A refused or failed request, with the API's tag and message. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public tag: string,
    message: string,
    /** The answer's `Retry-After`, seconds (a 503's). */
    public retryAfter?: number,
  ) {
    super(message);
  }
}

/**
 * How many times a read answered `503 busy` (the API's connections or the control port's
 * places all taken: a passing peak, `Retry-After: 1`) is sent again, after the time the
 * answer asks, before the block shows the refusal.
 */
export const BUSY_RETRIES = 2;

/**
 * Called on a 401 with the API's message (set by the shell: clears the token and shows
 * the login page, saying why).
 */
let onUnauthorized: (message: string) => void = () => {};
export function setUnauthorizedHandler(f: (message: string) => void): void {
  onUnauthorized = f;
}

/**
 * How long a read may go unanswered, milliseconds: the API answers within its own query
 * timeout (`api.query_timeout_ms`, 10 s), so only a proxy that holds a request runs past
 * this; the read then fails as `timeout` (a live view reads again) instead of waiting for
 * ever.
 */
export const READ_TIMEOUT_MS = 30_000;

/**
 * `GET path` (with its query) on the control port, as JSON. A 401 clears the token and,
 * unless `relogin` is false (the login page's own check), sends the user to log in. A
 * `503 busy` is read again up to [`BUSY_RETRIES`] times, after its `Retry-After` (at most
 * 5 s; the page left, no more).
 */
export async function get<T = any>(path: string, signal?: AbortSignal, relogin = true): Promise<T> {
  for (let retry = 0; ; retry++) {
    try {
      return await getOnce<T>(path, signal, relogin);
    } catch (e) {
      const busy = e instanceof ApiError && e.status === 503 && e.tag === 'busy';
      if (!busy || retry >= BUSY_RETRIES || signal?.aborted) throw e;
      const wait = Math.min(5, Math.max(1, e.retryAfter ?? 1)) * 1000 * (1 + Math.random() / 4);
      await new Promise<void>((done) => {
        const t = setTimeout(done, wait);
        signal?.addEventListener('abort', () => (clearTimeout(t), done()), { once: true });
      });
      if (signal?.aborted) throw e;
    }
  }
}

async function getOnce<T>(path: string, signal: AbortSignal | undefined, relogin: boolean): Promise<T> {
  const t = token();
  const headers: Record<string, string> = t ? { Authorization: `Bearer ${t}` } : {};
  // The caller's abort (the page left) or the read's own timeout, whichever comes first.
  const ctl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, READ_TIMEOUT_MS);
  const leave = () => ctl.abort();
  if (signal?.aborted) ctl.abort();
  signal?.addEventListener('abort', leave);
  const failed = (e: unknown): unknown => {
    if (timedOut) return new ApiError(0, 'timeout', `no answer within ${READ_TIMEOUT_MS / 1000} s`);
    if ((e as Error).name === 'AbortError') return e;
    return new ApiError(0, 'network', `cannot reach the server: ${(e as Error).message}`);
  };
  let resp: Response;
  let text: string;
  try {
    resp = await fetch(path, { headers, signal: ctl.signal });
    text = await resp.text();
  } catch (e) {
    throw failed(e);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', leave);
  }
  if (resp.status === 401) {
    clearToken();
    if (!relogin) throw new ApiError(401, 'unauthorized', apiMessage(text, 'the token was refused'));
    onUnauthorized(apiMessage(text, 'the token was refused'));
    throw new ApiError(401, 'unauthorized', 'the session ended: log in again');
  }
  if (!resp.ok) {
    let tag = 'http_' + resp.status;
    let message = text.slice(0, 200);
    try {
      const j = JSON.parse(text);
      tag = j.error ?? tag;
      message = j.message ?? message;
      if (j.field) message += ` (${j.field})`;
    } catch {
      /* not JSON: the text is the message */
    }
    const after = Number(resp.headers.get('retry-after'));
    throw new ApiError(resp.status, tag, message, Number.isFinite(after) && after > 0 ? after : undefined);
  }
  return JSON.parse(text) as T;
}

/** `GET /metrics` as text (no token: the route is open). */
export async function metricsText(signal?: AbortSignal): Promise<string> {
  const resp = await fetch('/metrics', { signal });
  if (!resp.ok) throw new ApiError(resp.status, 'metrics', `/metrics answered ${resp.status}`);
  return resp.text();
}

/** A query string from parameters (empty values left out). */
export function qs(params: Record<string, string | number | boolean | undefined>): string {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === '' || v === false) continue;
    u.set(k, v === true ? '1' : String(v));
  }
  const s = u.toString();
  return s ? '?' + s : '';
}

/** The `message` of an API error body, else `fallback`. */
function apiMessage(text: string, fallback: string): string {
  try {
    const j = JSON.parse(text);
    return typeof j.message === 'string' && j.message ? j.message : fallback;
  } catch {
    return fallback;
  }
}

/** An error as a block shows it: `status tag: message` for the API's, else its text. */
export function errorText(e: unknown): string {
  return (e instanceof ApiError ? `${e.status || ''} ${e.tag}: ${e.message}` : String(e)).trim();
}
