// Croupier Analytics browser SDK: events and purchases batched to the client ingest
// routes with a public write key, retried with back-off (honouring 429/503 and
// Retry-After), kept in a bounded offline queue in localStorage, and flushed with
// sendBeacon when the page goes away. No runtime dependencies.

/** Settings of {@link init}. */
export interface Config {
  /** Base URL of the data port, e.g. "https://ingest.example.com". */
  endpoint: string;
  /** The game's public write key. */
  key: string;
  /** The game id. */
  game: string;
  /** Environment (default "prod"; a number is sent as its text, as for the columns below). */
  env?: string | number;
  /** The player, if known at start (see {@link identify}). */
  userId?: string | number;
  /** Platform column (default "web"). */
  platform?: string | number;
  /** App version column. */
  appVersion?: string | number;
  /** Channel column. */
  channel?: string | number;
  /**
   * Records per request; a full batch is sent at once (default 20). A request also stays
   * under 60 KiB of JSON, so that the browser sends it with `keepalive`.
   */
  batchSize?: number;
  /** Longest wait before a partial batch is sent, ms (default 5000). */
  flushInterval?: number;
  /** Heartbeat period, ms; 0 turns heartbeats off (default 60000). */
  heartbeatInterval?: number;
  /**
   * Most records kept waiting while they cannot be sent, beside the batch being posted; the
   * oldest go first, told to `onError` (default 1000; at least 1).
   */
  maxQueue?: number;
  /** Longest back-off between retries, ms (default 60000). */
  maxBackoff?: number;
  /**
   * Longest wait for a request's answer, ms (default 30000): past it the request is given
   * up and sent again after a back-off, as when the network failed (a request held by
   * something in front of the server would otherwise stop the page's sending). 0 or
   * `Infinity`: never given up; longer than 2^31 - 1 ms (about 24.8 days) is taken as that.
   */
  requestTimeout?: number;
  /** Send session_start, heartbeat and session_end (default true). */
  autoSession?: boolean;
  /** Where the queue is kept (default window.localStorage). */
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
  /** The fetch function (default globalThis.fetch). */
  fetch?: typeof fetch;
  /**
   * Told of records that are not sent: refused by the server for good, not queued (props
   * that are not JSON, a bad event name or purchase), or dropped from a full queue or
   * from the stored beacons.
   * Default: `console.warn`.
   */
  onError?: (e: SendError) => void;
}

/** Records the SDK did not store, and why. */
export interface SendError {
  /**
   * `refused` (the server's answer), `invalid` (not queued: what is wrong is in `message`),
   * `dropped` (the oldest queued records, past `maxQueue` while they could not be sent, or
   * the oldest stored beacons' records, past their 256 KiB),
   * `filtered` (accepted, but left out by the game's filters: the `dropped` of a 202).
   */
  reason: "refused" | "invalid" | "dropped" | "filtered";
  /** The HTTP status of a refusal. */
  status?: number;
  /** The server's answer, or what is wrong with the record. */
  message: string;
  /** How many records. */
  records: number;
}

/** A purchase: stored as a payment (the game must allow payments from write keys) and a `purchase` event. */
export interface Purchase {
  orderId: string;
  /** Amount in minor units (cents). */
  amountCents: number;
  /** ISO 4217 code, upper case. */
  currency: string;
  productId?: string;
  status?: "success" | "refunded" | "refund" | "failed";
}

type Rec = Record<string, unknown>;
/** One queued record: an event ("e") or a payment ("p"). */
/** A body handed to sendBeacon, to be sent again by a later page (see Client.beacons). */
interface Beacon {
  k: "e" | "p";
  body: string;
}

interface Item {
  k: "e" | "p";
  r: Rec;
  /** Bytes of the record's JSON (computed again for items stored without it). */
  n?: number;
}

/** Most bytes of a record's text field the server takes (`orderId`, `productId`, ...). */
const FIELD_BYTES = 256;
/** Deepest nesting of a record the server takes: the body's array and the record make 2 of its 16. */
const RECORD_DEPTH = 15;

/** Nesting depth of `v` (a scalar: 0; `{}`: 1). */
function depth(v: unknown): number {
  if (!v || typeof v !== "object") return 0;
  let d = 0;
  for (const x of Object.values(v as Rec)) d = Math.max(d, depth(x));
  return d + 1;
}

/**
 * How long drops from a full queue are gathered before `onError` hears of them, at once:
 * a handler that tracks an event of its own cannot call itself back from `track`.
 */
const DROPS_TOLD_AFTER = 500;

/** Most bytes of JSON in a request: under the 64 KiB a browser allows `keepalive` and beacons. */
const MAX_BODY = 60 * 1024;
/** The server's range of times: from 2000-01-01 to 2100-01-01 (ms). */
const FIRST_TS = 946_684_800_000;
const END_TS = 4_102_444_800_000;
/** The largest body the browser sends with `keepalive` (it refuses a larger one). */
const KEEPALIVE = 64 * 1024;
/** The longest delay setTimeout keeps (it fires at once past it). */
const MAX_TIMER = 2 ** 31 - 1;

/** Bytes of `s` in UTF-8. */
function bytes(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // A surrogate pair is 4 bytes (2 + 2); another character from U+0800 is 3.
    if (c >= 0xd800 && c < 0xe000) n += 1;
    else if (c >= 0x800) n += 2;
    else if (c >= 0x80) n += 1;
  }
  return n;
}

/** `s` with each lone UTF-16 surrogate replaced by U+FFFD (the server refuses lone ones). */
export function wellFormed(s: string): string {
  // Pairs are matched first and kept; what is left of a surrogate is alone (no lookbehind:
  // older Safari refuses the whole script over one).
  return s.replace(/[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]/g, (m) => (m.length === 2 ? m : "\ufffd"));
}

/** The record as JSON: strings well formed (keys too), what JSON cannot hold left out as JSON.stringify does. */
function encode(r: Rec): string {
  return JSON.stringify(r, function (this: unknown, _k: string, v: unknown) {
    if (typeof v === "string") return wellFormed(v);
    if (v && typeof v === "object" && !Array.isArray(v)) {
      // Without a prototype: a `__proto__` key is a key like another.
      const o: Rec = Object.create(null) as Rec;
      let changed = false;
      for (const key of Object.keys(v)) {
        const w = wellFormed(key);
        changed = changed || w !== key;
        o[w] = (v as Rec)[key];
      }
      return changed ? o : v;
    }
    return v;
  });
}

/** A server's answer to a post. */
interface Answer {
  /** 0: no answer (offline, or refused by the network). */
  status: number;
  /** The body of a 4xx or 5xx. */
  text: string;
  retryAfter: string | null;
  /** Of a 202: the records the game's filters left out. */
  dropped: number;
}

/** How many times in a row an answer that may be the infrastructure's, not the server's word on the records, is retried before the batch is dropped. */
const TRANSIENT_TRIES = 5;

/**
 * Whether `a` may be a passing state of what is in front of the server rather than its
 * refusal of the records: a `404` or `405` (a route missing during a deploy, a redirect
 * that turned the POST into a GET) or `401 unknown_key` (a key new in the page, not yet in
 * every node's configuration during a roll-out).
 */
function transient(a: Answer): boolean {
  return a.status === 404 || a.status === 405 || (a.status === 401 && /"error"\s*:\s*"unknown_key"/.test(a.text));
}

/**
 * A record's identity across tabs: its kind and event id, or a payment's order and
 * status, else its JSON.
 */
function itemId(i: Item): string {
  const r = i.r as { event_id?: unknown; order_id?: unknown; status?: unknown };
  if (typeof r.event_id === "string" && r.event_id) return `${i.k}:${r.event_id}`;
  if (typeof r.order_id === "string" && r.order_id) return `${i.k}:${r.order_id}:${String(r.status ?? "")}`;
  return `${i.k}:${JSON.stringify(i.r)}`;
}

/**
 * Whether a post answered `a` is sent again later: all but 202, a 4xx other than 408 and
 * 429, and the server's `500 encode_failed` (a record it cannot write: sent again, it
 * fails again, and would hold the queue behind it for ever).
 */
function retryable(a: Answer): boolean {
  const s = a.status;
  if (s === 500 && /"error"\s*:\s*"encode_failed"/.test(a.text)) return false;
  return !(s === 202 || (s >= 400 && s < 500 && s !== 408 && s !== 429));
}

const EVENTS = "/api/analytics/ingest";
const PAYMENTS = "/api/analytics/payments/ingest";

/** A random UUID (crypto.randomUUID, else getRandomValues, else Math.random). */
export function uuid(): string {
  const c: Crypto | undefined = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Milliseconds to wait after a refusal: Retry-After when given, else doubling back-off with jitter. */
export function backoff(attempt: number, retryAfter: string | null, max: number): number {
  const s = retryAfter === null ? NaN : Number(retryAfter);
  if (s >= 0) return Math.min(s * 1000, max);
  const base = Math.min(1000 * 2 ** attempt, max);
  return base / 2 + Math.random() * (base / 2);
}

/**
 * A column's value as the server takes it: a string as is, a number's text, `undefined`
 * for none, `null` for what no column can hold.
 */
function columnText(v: unknown): string | undefined | null {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if ((typeof v === "number" && Number.isFinite(v)) || typeof v === "bigint") return String(v);
  return null;
}

/** A client of one game. Most pages use the module functions, which share one. */
export class Client {
  readonly c: Required<Omit<Config, "userId" | "appVersion" | "channel" | "storage" | "fetch" | "onError">> & Config;
  queue: Item[] = [];
  /** Ids (`itemId`) of the records this tab queued that may still be in storage. */
  private held = new Set<string>();
  user: string;
  /** The session's id: a new one when the page comes back from the back/forward cache. */
  session = uuid();
  readonly device: string;
  private started = Date.now();
  private sending = false;
  private attempt = 0;
  /** Answers in a row that may be the infrastructure's (see `transient`). */
  private transients = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private beat: ReturnType<typeof setInterval> | undefined;
  /** Records a full queue dropped that `onError` has not heard of yet, and its timer. */
  private dropped = 0;
  private droppedTimer: ReturnType<typeof setTimeout> | undefined;
  private wait = 0;
  private closed = false;
  /** close() is telling the last drops: what a handler tracks then is not bounded. */
  private closing = false;
  /** This session's `session_start`, while it may still wait in the queue. */
  private starting: Item | undefined;
  /** The player this session's `session_start` or last `login` named ("" for none). */
  private announced = "";
  /** The batch being posted and its body, sent again as is by close() (identical bytes are stored once). */
  private inflight: { k: "e" | "p"; batch: Item[]; body: string } | undefined;
  /**
   * The most records the server takes in one request, as its refusals said (`more than N
   * records`): batches hold at most this and `batchSize`.
   */
  private cap = Infinity;
  /**
   * The most bytes of JSON in a request: `MAX_BODY`, halved by each 413 of several records
   * (a proxy's smaller limit): a page is not left sending one record a request.
   */
  private maxBody = MAX_BODY;
  /**
   * Bodies handed to sendBeacon by earlier pages (stored when this page started), kept
   * until a fetch of the same bytes is answered: a beacon gets no answer, and the server
   * may refuse it (429 on a burst). Sent again as they were, they are stored once if the
   * beacon was.
   */
  beacons: Beacon[] = [];
  private readonly qkey: string;
  private readonly bkey: string;

  constructor(config: Config) {
    // The server takes these columns as strings only: a number given for one is sent as
    // its text (a record with a number there would be refused, and with it every record
    // of the page); anything else is left out (the default where there is one), reported.
    const bad: string[] = [];
    const text = (v: unknown, what: string): string | undefined => {
      const t = columnText(v);
      // Over 256 bytes the server refuses the record (and every record of the page).
      const long = typeof t === "string" && bytes(wellFormed(t)) > FIELD_BYTES;
      if (t === null || long) bad.push(what);
      return t === null || long ? undefined : t;
    };
    this.c = {
      env: "prod",
      platform: "web",
      batchSize: 20,
      flushInterval: 5000,
      heartbeatInterval: 60000,
      maxQueue: 1000,
      maxBackoff: 60000,
      requestTimeout: 30000,
      autoSession: true,
      ...config,
      // "https://ingest.example/" and "https://ingest.example" name the same routes.
      endpoint: String(config.endpoint ?? "").replace(/\/+$/, ""),
    };
    // An empty one is none (the server requires an environment).
    this.c.env = text(config.env, "env") || "prod";
    this.c.platform = text(config.platform, "platform") || "web";
    this.c.appVersion = text(config.appVersion, "appVersion");
    this.c.channel = text(config.channel, "channel");
    this.user = text(config.userId, "userId") ?? "";
    for (const what of bad) {
      this.report({ reason: "invalid", message: `${what} must be a string of at most ${FIELD_BYTES} bytes: left out`, records: 0 });
    }
    this.qkey = `croupier:${config.game}:queue`;
    this.bkey = `croupier:${config.game}:beacons`;
    const s = this.store();
    let device = s ? s.getItem(`croupier:${config.game}:device`) : null;
    if (!device) {
      device = uuid();
      try {
        s?.setItem(`croupier:${config.game}:device`, device);
      } catch {
        /* storage full or denied: the id lasts this page */
      }
    }
    this.device = device;
    try {
      const saved: unknown = JSON.parse(s?.getItem(this.qkey) || "[]");
      // What an earlier page (or another script) left: records only.
      this.queue = Array.isArray(saved)
        ? (saved as Item[]).filter((i) => i && (i.k === "e" || i.k === "p") && i.r && typeof i.r === "object")
        : [];
    } catch {
      this.queue = [];
    }
    // Taken over: this tab's from now on (sent, they leave the storage).
    this.held = new Set(this.queue.map(itemId));
    this.beacons = this.storedBeacons();
    const w = globalThis as unknown as Window;
    if (typeof w.addEventListener === "function") {
      w.addEventListener("pagehide", () => this.close());
      // A page kept in the back/forward cache comes back after its pagehide: it goes on.
      w.addEventListener("pageshow", (e) => {
        if ((e as PageTransitionEvent).persisted) this.reopen();
      });
      w.addEventListener("online", () => {
        this.wait = 0;
        void this.flush();
      });
      w.addEventListener("visibilitychange", () => {
        if ((w.document as Document | undefined)?.visibilityState === "hidden") void this.flush();
      });
    }
    // What an earlier page left goes at once; this session's records wait for a batch
    // (its session_start takes the player an identify soon after names).
    const left = this.queue.length || this.beacons.length;
    if (this.c.autoSession) {
      this.startSession();
      if (this.c.heartbeatInterval > 0) {
        this.beat = setInterval(() => this.track("heartbeat"), this.c.heartbeatInterval);
      }
    }
    this.schedule(left ? 0 : this.c.flushInterval);
  }

  /** Queues the session's `session_start`, remembered while it may still take a player (see identify). */
  private startSession(): void {
    this.track("session_start");
    const last = this.queue[this.queue.length - 1];
    const queued = last?.r.event === "session_start" && last.r.session_id === this.session;
    this.starting = queued ? last : undefined;
    this.announced = queued ? this.user : "";
  }

  private store(): Pick<Storage, "getItem" | "setItem"> | null {
    if (this.c.storage !== undefined) return this.c.storage;
    try {
      return (globalThis as { localStorage?: Storage }).localStorage ?? null;
    } catch {
      return null;
    }
  }

  /**
   * Writes the queue to storage, beside what other tabs of the origin keep there: read,
   * merged and written. The stored records this tab never held (another tab's, such as
   * those its closing page could not hand to sendBeacon) stay for the next page; those it
   * held and no longer does (sent, refused, dropped) go.
   */
  private save(): void {
    const s = this.store();
    if (!s) return;
    const mine = this.queue.map((i) => ({ k: i.k, r: i.r }));
    const ids = new Set(mine.map(itemId));
    let others: Item[] = [];
    try {
      const stored: unknown = JSON.parse(s.getItem(this.qkey) || "[]");
      if (Array.isArray(stored)) others = (stored as Item[]).filter((i) => i && i.r && typeof i.r === "object");
    } catch {
      /* not a list: written over */
    }
    const storedIds = new Set(others.map(itemId));
    others = others.filter((i) => !ids.has(itemId(i)) && !this.held.has(itemId(i)));
    // What this tab held: its queue, and what of it is still stored (so a record it sent
    // is not taken for another tab's; the rest need not be remembered).
    const held = new Set(ids);
    for (const id of this.held) if (storedIds.has(id)) held.add(id);
    this.held = held;
    try {
      s.setItem(this.qkey, JSON.stringify([...others, ...mine]));
    } catch {
      try {
        s.setItem(this.qkey, JSON.stringify(mine));
      } catch {
        /* full or denied: the queue lives in memory only */
      }
    }
  }

  /** The beacons kept in storage (another tab's too). */
  private storedBeacons(): Beacon[] {
    try {
      const v: unknown = JSON.parse(this.store()?.getItem(this.bkey) || "[]");
      return Array.isArray(v) ? (v as Beacon[]).filter((b) => b && typeof b.body === "string") : [];
    } catch {
      return [];
    }
  }

  /**
   * Adds `add` to the stored beacons and takes out `done` (answered): read, merged and
   * written, so that tabs sharing the storage keep each other's. At most 256 KiB of
   * bodies are kept, the oldest dropped first (and on a full storage), their records told
   * to `onError`. Returns what of `add` could not be kept.
   */
  private saveBeacons(add: Beacon[], done: string[]): Beacon[] {
    const stored = this.storedBeacons().filter((b) => !done.includes(b.body));
    let list = [...stored];
    for (const b of add) if (!list.some((x) => x.body === b.body)) list.push(b);
    const size = (l: Beacon[]) => l.reduce((n, b) => n + b.body.length, 0);
    while (list.length && size(list) > 262144) list = list.slice(1);
    let written = false;
    while (!written) {
      try {
        this.store()?.setItem(this.bkey, JSON.stringify(list));
        written = true;
      } catch {
        if (!list.length) return add;
        list = list.slice(1);
      }
    }
    // The stored bodies left out are dropped (what of `add` was not kept goes back to the queue).
    let n = 0;
    for (const b of stored) {
      if (list.includes(b)) continue;
      try {
        const v: unknown = JSON.parse(b.body);
        n += Array.isArray(v) ? v.length : 0;
      } catch {
        /* not records */
      }
    }
    if (n) {
      this.report({ reason: "dropped", message: `stored beacons keep at most 256 KiB of bodies (less in a full storage): the ${n} records of the oldest dropped`, records: n });
    }
    return add.filter((b) => !list.includes(b));
  }

  /** Tells `onError` (else the console) of records not stored. */
  private report(e: SendError): void {
    try {
      if (this.c.onError) this.c.onError(e);
      else (globalThis as { console?: Console }).console?.warn("croupier:", e.message, e);
    } catch {
      /* the page's handler failed: nothing more to do */
    }
  }

  /**
   * Queues a record as JSON can carry it (false, and reported, when it cannot): `told` is
   * how many records a refusal loses (a purchase's payment takes its event with it).
   */
  private push(k: "e" | "p", rec: Rec, told = 1): boolean {
    let text: string;
    try {
      text = encode(rec);
    } catch (e) {
      this.report({ reason: "invalid", message: `not JSON (${String(e)}): not queued`, records: told });
      return false;
    }
    // A copy: what the page changes afterwards is not what was tracked.
    const r = JSON.parse(text) as Rec;
    const ts = r.ts;
    if (typeof ts === "number" && !(ts >= FIRST_TS && ts < END_TS)) {
      const when = Number.isFinite(ts) ? new Date(ts).toISOString() : String(ts);
      this.report({ reason: "invalid", message: `the time ${when} (the device's clock?) is not between 2000 and 2100, which the server refuses: not queued`, records: told });
      return false;
    }
    if (depth(r) > RECORD_DEPTH) {
      this.report({ reason: "invalid", message: `nested deeper than the server takes (${RECORD_DEPTH - 1} levels of props): not queued`, records: told });
      return false;
    }
    this.queue.push({ k, r, n: bytes(text) });
    this.bound();
    this.save();
    if (this.queue.length >= this.size() && !this.wait) void this.flush();
    return true;
  }

  /**
   * Keeps the records waiting (those not being posted: their answer decides) to
   * `maxQueue`: the oldest go first, and `onError` is told how many went.
   */
  private bound(): void {
    if (this.closing) return;
    const posting = this.inflight?.batch ?? [];
    const over = this.queue.length - posting.length - this.maxWaiting();
    if (over <= 0) return;
    const gone = new Set(this.queue.filter((i) => !posting.includes(i)).slice(0, over));
    if (!gone.size) return;
    this.queue = this.queue.filter((i) => !gone.has(i));
    this.dropped += gone.size;
    if (this.droppedTimer === undefined) this.droppedTimer = setTimeout(() => this.tellDropped(), DROPS_TOLD_AFTER);
  }

  /** `maxQueue` as a count: at least 1, the default (1000) when it is not a number. */
  private maxWaiting(): number {
    const q = Number(this.c.maxQueue);
    return Number.isFinite(q) ? Math.max(1, Math.floor(q)) : 1000;
  }

  /** Tells `onError` of the records a full queue dropped since it was last told. */
  private tellDropped(): void {
    clearTimeout(this.droppedTimer);
    this.droppedTimer = undefined;
    const n = this.dropped;
    this.dropped = 0;
    if (!n) return;
    this.report({
      reason: "dropped",
      message: `the queue keeps at most ${this.maxWaiting()} records waiting while they cannot be sent: the ${n} oldest dropped`,
      records: n,
    });
  }

  private base(): Rec {
    const r: Rec = {
      ts: Date.now(),
      game_id: this.c.game,
      env: this.c.env,
      session_id: this.session,
      device_id: this.device,
      platform: this.c.platform,
    };
    if (this.user) r.user_id = this.user;
    if (this.c.appVersion) r.app_version = this.c.appVersion;
    if (this.c.channel) r.channel = this.c.channel;
    return r;
  }

  /** Queues an event. */
  track(event: string, props?: Record<string, unknown>): void {
    if (this.closed) return;
    if (typeof event !== "string" || !event || bytes(wellFormed(event)) > 128) {
      this.report({ reason: "invalid", message: `event name must be 1 to 128 bytes: ${String(event)}`, records: 1 });
      return;
    }
    const r = this.base();
    r.event = event;
    r.event_id = uuid();
    if (props) r.props = props;
    this.push("e", r);
  }

  /**
   * Sets the player of the events that follow (a number is taken as its text; an empty
   * string, `null` or `undefined` forgets the player). The session's `session_start`,
   * sent by `init`, takes the player while it waits in the queue (the last one given
   * before it leaves); once it has left without one, or named another player, a `login`
   * event says who the session's player is now — the day's active players are
   * counted on `session_start` and `login`. An id the server would refuse (over 256
   * bytes) is not taken, and told to `onError`.
   */
  identify(userId: string | number | null | undefined): void {
    const id = columnText(userId);
    if (id === null || (id !== undefined && bytes(wellFormed(id)) > FIELD_BYTES)) {
      const why = id === null ? "must be a string" : `must be at most ${FIELD_BYTES} bytes`;
      this.report({ reason: "invalid", message: `the user id ${why}: ${String(userId)} not taken`, records: 0 });
      return;
    }
    this.user = id ?? "";
    if (!this.user || !this.c.autoSession || this.closed || this.user === this.announced) return;
    const start = this.starting;
    this.announced = this.user;
    const waiting = start && start.r.session_id === this.session && this.queue.includes(start) && !this.inflight?.batch.includes(start);
    if (waiting) {
      // Not sent yet: the session starts with this player (a guest id, then the
      // account's, before the first flush is one player, not two).
      // As a record's strings are when tracked: a lone surrogate becomes U+FFFD.
      start.r.user_id = wellFormed(this.user);
      start.n = undefined;
      this.save();
    } else {
      this.starting = undefined;
      this.track("login");
    }
  }

  /** Queues a payment and a `purchase` event. */
  purchase(p: Purchase): void {
    if (!p || typeof p !== "object") {
      this.report({ reason: "invalid", message: "purchase needs an object: not queued", records: 2 });
      return;
    }
    const status = p.status ?? "success";
    const long = (v: unknown) => typeof v === "string" && bytes(wellFormed(v)) > FIELD_BYTES;
    const bad = !p.orderId || typeof p.orderId !== "string"
      ? "orderId must be a non-empty string"
      : long(p.orderId) || long(p.productId) || long(this.user)
        ? `orderId, productId and the user id must be at most ${FIELD_BYTES} bytes`
      : !Number.isInteger(p.amountCents) || p.amountCents < 1 || p.amountCents > 1e12
        ? "amountCents must be an integer from 1 to 10^12 (minor units)"
        : typeof p.currency !== "string" || !/^[A-Z]{3}$/.test(p.currency)
          ? "currency must be three upper-case letters (ISO 4217)"
          : !["success", "refunded", "refund", "failed"].includes(status)
            ? "status must be success, refunded (or refund) or failed"
            : "";
    if (bad) {
      this.report({ reason: "invalid", message: `purchase ${String(p.orderId)}: ${bad}; not queued`, records: 2 });
      return;
    }
    const pay = this.base();
    pay.user_id = this.user || this.device;
    pay.order_id = p.orderId;
    pay.amount_cents = p.amountCents;
    pay.currency = p.currency;
    pay.status = status;
    if (p.productId) pay.product_id = p.productId;
    delete pay.session_id;
    delete pay.device_id;
    if (!this.push("p", pay, 2)) return;
    this.track("purchase", {
      order_id: p.orderId,
      amount_cents: p.amountCents,
      currency: p.currency,
      product_id: p.productId,
      status,
    });
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.wait = 0;
      void this.flush().finally(() => this.schedule(this.wait || this.c.flushInterval));
    }, ms);
  }

  /** Sends what is queued, a batch at a time; resolves when done or when sending must wait. */
  async flush(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      // An earlier page's beacons first, as they were.
      while (this.beacons.length && !this.closed) {
        const b = this.beacons[0];
        const forget = () => {
          this.beacons = this.beacons.filter((x) => x !== b);
          this.saveBeacons([], [b.body]);
        };
        const a = await this.post(b.k, b.body);
        if (this.again(a)) {
          this.later(a);
          return;
        }
        if (a.status === 202) {
          forget();
          this.attempt = 0;
        } else {
          // Refused: the records the answer names are dropped, the others queued again.
          let parsed: unknown;
          try {
            parsed = JSON.parse(b.body);
          } catch {
            parsed = [];
          }
          // Another tab that met the same refusal took the records back already.
          const mine = this.storedBeacons().some((x) => x.body === b.body);
          const list = Array.isArray(parsed) && mine ? (parsed as Rec[]) : [];
          const bad = this.refusedOf(a, list);
          forget();
          if (!mine) continue;
          this.queue = [...list.filter((_, i) => !bad.includes(i)).map((r) => ({ k: b.k, r })), ...this.queue];
          this.save();
          this.refusal(a, bad.length || (list.length ? 0 : 1));
        }
      }
      while (this.queue.length && !this.closed) {
        const held = this.inflight;
        const ok = held
          ? await this.send(held.k, held.batch, held.body)
          : await this.send(this.queue[0].k, this.next(this.queue[0].k));
        if (!ok) return;
      }
    } finally {
      this.sending = false;
    }
  }

  /** Records per request: `batchSize`, within what the server takes. */
  private size(): number {
    return Math.max(1, Math.min(Math.floor(this.c.batchSize) || 1, this.cap));
  }

  /**
   * The next batch of kind `k` from `from` (the queue): at most `size()` records and
   * `maxBody` bytes of JSON (one record at least, however large).
   */
  private next(k: "e" | "p", from: Item[] = this.queue): Item[] {
    const batch: Item[] = [];
    const limit = this.size();
    let size = 2;
    for (const i of from) {
      if (i.k !== k) continue;
      if (i.n === undefined) i.n = bytes(JSON.stringify(i.r));
      if (batch.length && (batch.length >= limit || size + i.n + 1 > this.maxBody)) break;
      batch.push(i);
      size += i.n + 1;
    }
    return batch;
  }

  /**
   * Posts one batch: true when the queue may go on (sent, or what was refused dropped).
   * A batch to be sent again stays `inflight`, and goes again as the same bytes (the
   * server then stores it once, also when its first answer was lost or `not_replicated`).
   */
  private async send(k: "e" | "p", batch: Item[], body = JSON.stringify(batch.map((i) => i.r))): Promise<boolean> {
    this.inflight = { k, batch, body };
    const a = await this.post(k, body);
    if (this.again(a)) return this.later(a);
    this.inflight = undefined;
    const bad = a.status === 202 ? batch.map((_, i) => i) : this.refusedOf(a, batch.map((i) => i.r));
    const gone = batch.filter((_, i) => bad.includes(i));
    if (a.status === 202) this.attempt = 0;
    this.queue = this.queue.filter((i) => !gone.includes(i));
    this.save();
    if (a.status !== 202) this.refusal(a, gone.length);
    // Told to a handler only: a game whose filters drop some events on purpose would
    // otherwise warn on the console at every batch.
    if (a.dropped && this.c.onError) {
      const message = `${a.dropped} of ${batch.length} records left out by the game's filters`;
      this.report({ reason: "filtered", status: 202, message, records: a.dropped });
    }
    return true;
  }

  /**
   * Of `records` the server refused with answer `a`, the indexes that cannot be stored:
   * none when the batch was too large (what the answer says the server takes is kept:
   * `more than N records`, or half the body's bytes on a 413), the record the answer names and those with
   * the same value in the field it names (refused alike: a field the SDK sets on every
   * record drops them at once, not one request each), else all.
   */
  private refusedOf(a: Answer, records: Rec[]): number[] {
    const all = records.map((_, i) => i);
    const most = /more than (\d+) records/.exec(a.text);
    if (a.status === 400 && most && records.length > Number(most[1])) {
      this.cap = Math.max(1, Number(most[1]));
      return [];
    }
    if (a.status === 413 && records.length > 1) {
      this.maxBody = Math.max(2, Math.floor(bytes(JSON.stringify(records)) / 2));
      return [];
    }
    let why: { index?: unknown; field?: unknown } = {};
    try {
      why = JSON.parse(a.text) as typeof why;
    } catch {
      /* not the server's JSON: the whole batch */
    }
    const at = typeof why.index === "number" ? why.index : -1;
    const named = records[at];
    // A 400 (a bad field) or a 403 (the game's filters) naming a record.
    if ((a.status !== 400 && a.status !== 403) || !named) return all;
    const field = typeof why.field === "string" ? why.field : "";
    if (!(field in named)) return [at];
    const value = JSON.stringify(named[field]);
    return all.filter((i) => JSON.stringify(records[i][field]) === value);
  }

  /**
   * Whether a post answered `a` is sent again: a retryable answer, or one that may be the
   * infrastructure's while fewer than `TRANSIENT_TRIES` of those came in a row (any other
   * answer, or the drop, starts the count again).
   */
  private again(a: Answer): boolean {
    if (!transient(a)) {
      this.transients = 0;
      return retryable(a);
    }
    if (this.transients++ < TRANSIENT_TRIES) return true;
    this.transients = 0;
    return false;
  }

  /** Tells of `n` records refused with answer `a`. */
  private refusal(a: Answer, n: number): void {
    this.attempt = 0;
    if (n) this.report({ reason: "refused", status: a.status, message: a.text || `HTTP ${a.status}`, records: n });
  }

  /** Waits before sending again (`Retry-After`, else a growing back-off); false. */
  private later(a: Answer): false {
    this.wait = backoff(this.attempt++, a.retryAfter, this.c.maxBackoff);
    this.schedule(this.wait);
    return false;
  }

  /** Posts `body`: the answer (status 0 when the network failed). */
  private async post(k: "e" | "p", body: string): Promise<Answer> {
    const f = this.c.fetch ?? globalThis.fetch;
    const abort = typeof AbortController === "function" ? new AbortController() : undefined;
    // setTimeout fires at once past 2^31 - 1 ms: Infinity (or 0) means never given up.
    const limit = Number(this.c.requestTimeout);
    const timer = abort && limit > 0 && Number.isFinite(limit)
      ? setTimeout(() => abort.abort(), Math.min(limit, MAX_TIMER))
      : undefined;
    try {
      const res = await f(this.c.endpoint + (k === "e" ? EVENTS : PAYMENTS), {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Write-Key": this.c.key },
        body,
        // The browser refuses a larger keepalive body outright: sent without, it is answered.
        keepalive: bytes(body) <= KEEPALIVE,
        signal: abort?.signal,
      });
      // Read whatever the status: until its body is read, an answered keepalive request
      // keeps its share of the browser's 64 KiB, and the next large one is refused.
      const answer = await res.text().catch(() => "");
      const text = res.status >= 400 && res.status < 600 ? answer : "";
      let dropped = 0;
      if (res.status === 202) {
        try {
          const d = (JSON.parse(answer) as { dropped?: unknown }).dropped;
          dropped = typeof d === "number" && d > 0 ? d : 0;
        } catch {
          /* not the server's JSON: nothing said */
        }
      }
      return { status: res.status, text, retryAfter: res.headers.get("Retry-After"), dropped };
    } catch {
      // Offline, refused by the network, or unanswered within `requestTimeout`.
      return { status: 0, text: "", retryAfter: null, dropped: 0 };
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Takes events again after close(), as a page restored from the back/forward cache
   * does (pageshow): a new session (session_start), the heartbeat and the flushes again,
   * and the beacons the close stored sent first. Events tracked while closed were not kept.
   */
  reopen(): void {
    if (!this.closed) return;
    this.closed = false;
    this.session = uuid();
    this.started = Date.now();
    this.beacons = this.storedBeacons();
    // What the close left (its beacons) goes at once; the new session's records wait for a batch.
    const left = this.queue.length || this.beacons.length;
    if (this.c.autoSession) {
      this.startSession();
      if (this.c.heartbeatInterval > 0) {
        this.beat = setInterval(() => this.track("heartbeat"), this.c.heartbeatInterval);
      }
    }
    this.schedule(left ? 0 : this.c.flushInterval);
  }

  /** Ends the session and hands what is queued to sendBeacon (pagehide does this). */
  close(): void {
    if (this.closed) return;
    if (this.c.autoSession) this.track("session_end", { duration_sec: Math.round((Date.now() - this.started) / 1000) });
    // Drops not told yet are told while tracking is still open: what the handler tracks
    // in answer goes with the beacons, past the bound rather than in place of others.
    this.closing = true;
    this.tellDropped();
    this.closing = false;
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.beat);
    clearTimeout(this.droppedTimer);
    this.droppedTimer = undefined;
    const nav = (globalThis as { navigator?: Navigator }).navigator;
    if (!nav || typeof nav.sendBeacon !== "function") return;
    // A body the browser takes leaves the queue for the stored beacons, kept until a later
    // page's fetch of the same bytes is answered; they are written before the queue.
    const taken: Beacon[] = [];
    const records = new Map<Beacon, Item[]>();
    const beacon = (k: "e" | "p", batch: Item[], body: string) => {
      const url = `${this.c.endpoint}${k === "e" ? EVENTS : PAYMENTS}?key=${encodeURIComponent(this.c.key)}`;
      if (nav.sendBeacon(url, body)) {
        this.queue = this.queue.filter((q) => !batch.includes(q));
        const b = { k, body };
        taken.push(b);
        records.set(b, batch);
      }
    };
    // A batch still being posted goes again with the same bytes: if both arrive, the
    // server stores it once.
    const f = this.inflight;
    if (f) beacon(f.k, f.batch, f.body);
    // Gone by beacon, or back among the queue's batches (a page restored from the
    // back/forward cache sends it again as the queue's).
    this.inflight = undefined;
    for (const k of ["e", "p"] as const) {
      let items = this.queue.filter((i) => i.k === k);
      while (items.length) {
        const batch = this.next(k, items);
        items = items.slice(batch.length);
        beacon(k, batch, JSON.stringify(batch.map((b) => b.r)));
      }
    }
    // The queue first (what went by beacon leaves it, freeing its room), then the bodies;
    // a body the storage cannot hold puts its records back in the queue.
    this.save();
    const lost = this.saveBeacons(taken, []);
    if (lost.length) {
      this.queue = [...lost.flatMap((b) => records.get(b) ?? []), ...this.queue];
      this.save();
    }
  }
}

let client: Client | undefined;

/** Starts the SDK (once per page): restores the offline queue, starts the session. */
export function init(config: Config): Client {
  if (!client) client = new Client(config);
  return client;
}

/** Queues an event. */
export function track(event: string, props?: Record<string, unknown>): void {
  client?.track(event, props);
}

/** Sets the player of the events that follow. */
export function identify(userId: string | number | null | undefined): void {
  client?.identify(userId);
}

/** Queues a purchase (a payment and a `purchase` event). */
export function purchase(p: Purchase): void {
  client?.purchase(p);
}

/** Sends what is queued now. */
export function flush(): Promise<void> {
  return client ? client.flush() : Promise.resolve();
}
