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
  /** Environment (default "prod"). */
  env?: string;
  /** The player, if known at start (see {@link identify}). */
  userId?: string;
  /** Platform column (default "web"). */
  platform?: string;
  /** App version column. */
  appVersion?: string;
  /** Channel column. */
  channel?: string;
  /** Events per request; a full batch is sent at once (default 20). */
  batchSize?: number;
  /** Longest wait before a partial batch is sent, ms (default 5000). */
  flushInterval?: number;
  /** Heartbeat period, ms; 0 turns heartbeats off (default 60000). */
  heartbeatInterval?: number;
  /** Most records kept while they cannot be sent; the oldest go first (default 1000). */
  maxQueue?: number;
  /** Longest back-off between retries, ms (default 60000). */
  maxBackoff?: number;
  /** Send session_start, heartbeat and session_end (default true). */
  autoSession?: boolean;
  /** Where the queue is kept (default window.localStorage). */
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
  /** The fetch function (default globalThis.fetch). */
  fetch?: typeof fetch;
}

/** A purchase: stored as a payment (the game must allow payments from write keys) and a `purchase` event. */
export interface Purchase {
  orderId: string;
  /** Amount in minor units (cents). */
  amountCents: number;
  /** ISO 4217 code, upper case. */
  currency: string;
  productId?: string;
  status?: "success" | "refunded" | "failed";
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

/** A client of one game. Most pages use the module functions, which share one. */
export class Client {
  readonly c: Required<Omit<Config, "userId" | "appVersion" | "channel" | "storage" | "fetch">> & Config;
  queue: Item[] = [];
  user: string;
  /** The session's id: a new one when the page comes back from the back/forward cache. */
  session = uuid();
  readonly device: string;
  private started = Date.now();
  private sending = false;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private beat: ReturnType<typeof setInterval> | undefined;
  private wait = 0;
  private closed = false;
  /** The batch being posted and its body, sent again as is by close() (identical bytes are stored once). */
  private inflight: { k: "e" | "p"; batch: Item[]; body: string } | undefined;
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
    this.c = {
      env: "prod",
      platform: "web",
      batchSize: 20,
      flushInterval: 5000,
      heartbeatInterval: 60000,
      maxQueue: 1000,
      maxBackoff: 60000,
      autoSession: true,
      ...config,
    };
    this.qkey = `croupier:${config.game}:queue`;
    this.bkey = `croupier:${config.game}:beacons`;
    this.user = config.userId || "";
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
      const saved = s?.getItem(this.qkey);
      if (saved) this.queue = JSON.parse(saved) as Item[];
    } catch {
      this.queue = [];
    }
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
    if (this.c.autoSession) {
      this.track("session_start");
      if (this.c.heartbeatInterval > 0) {
        this.beat = setInterval(() => this.track("heartbeat"), this.c.heartbeatInterval);
      }
    }
    this.schedule(this.queue.length || this.beacons.length ? 0 : this.c.flushInterval);
  }

  private store(): Pick<Storage, "getItem" | "setItem"> | null {
    if (this.c.storage !== undefined) return this.c.storage;
    try {
      return (globalThis as { localStorage?: Storage }).localStorage ?? null;
    } catch {
      return null;
    }
  }

  private save(): void {
    try {
      this.store()?.setItem(this.qkey, JSON.stringify(this.queue));
    } catch {
      /* full or denied: the queue lives in memory only */
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
   * bodies are kept, the oldest dropped first (and on a full storage). Returns what of
   * `add` could not be kept.
   */
  private saveBeacons(add: Beacon[], done: string[]): Beacon[] {
    let list = this.storedBeacons().filter((b) => !done.includes(b.body));
    for (const b of add) if (!list.some((x) => x.body === b.body)) list.push(b);
    const size = (l: Beacon[]) => l.reduce((n, b) => n + b.body.length, 0);
    while (list.length && size(list) > 262144) list = list.slice(1);
    for (;;) {
      try {
        this.store()?.setItem(this.bkey, JSON.stringify(list));
        // What of `add` could not be kept.
        return add.filter((b) => !list.includes(b));
      } catch {
        if (!list.length) return add;
        list = list.slice(1);
      }
    }
  }

  private push(k: "e" | "p", r: Rec): void {
    this.queue.push({ k, r });
    if (this.queue.length > this.c.maxQueue) this.queue.splice(0, this.queue.length - this.c.maxQueue);
    this.save();
    if (this.queue.length >= this.c.batchSize && !this.wait) void this.flush();
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
    const r = this.base();
    r.event = event;
    r.event_id = uuid();
    if (props) r.props = props;
    this.push("e", r);
  }

  /** Sets the player of the events that follow. */
  identify(userId: string): void {
    this.user = userId;
  }

  /** Queues a payment and a `purchase` event. */
  purchase(p: Purchase): void {
    const pay = this.base();
    pay.user_id = this.user || this.device;
    pay.order_id = p.orderId;
    pay.amount_cents = p.amountCents;
    pay.currency = p.currency;
    pay.status = p.status ?? "success";
    if (p.productId) pay.product_id = p.productId;
    delete pay.session_id;
    delete pay.device_id;
    this.push("p", pay);
    this.track("purchase", { order_id: p.orderId, amount_cents: p.amountCents, currency: p.currency, product_id: p.productId });
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
        const ok = await this.post(b.k, b.body, () => {
          this.beacons = this.beacons.filter((x) => x !== b);
          this.saveBeacons([], [b.body]);
        });
        if (!ok) return;
      }
      while (this.queue.length && !this.closed) {
        const k = this.queue[0].k;
        const batch = this.queue.filter((i) => i.k === k).slice(0, this.c.batchSize);
        const ok = await this.send(k, batch);
        if (!ok) return;
      }
    } finally {
      this.sending = false;
    }
  }

  /** Posts one batch: true when the queue may go on (sent, or refused for good). */
  private async send(k: "e" | "p", batch: Item[]): Promise<boolean> {
    const body = JSON.stringify(batch.map((i) => i.r));
    this.inflight = { k, batch, body };
    return this.post(k, body, () => {
      this.queue = this.queue.filter((i) => !batch.includes(i));
    });
  }

  /** Posts `body`; `done` lets it go once answered for good. True when sending may go on. */
  private async post(k: "e" | "p", body: string, done: () => void): Promise<boolean> {
    const f = this.c.fetch ?? globalThis.fetch;
    let status = 0;
    let retryAfter: string | null = null;
    try {
      const res = await f(this.c.endpoint + (k === "e" ? EVENTS : PAYMENTS), {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Write-Key": this.c.key },
        body,
        keepalive: true,
      });
      status = res.status;
      retryAfter = res.headers.get("Retry-After");
    } catch {
      status = 0; // offline or refused by the network
    }
    this.inflight = undefined;
    if (status === 202 || (status >= 400 && status < 500 && status !== 408 && status !== 429)) {
      // Stored, or never storable (a bad record, a revoked key): either way not kept.
      done();
      this.save();
      this.attempt = 0;
      return true;
    }
    this.wait = backoff(this.attempt++, retryAfter, this.c.maxBackoff);
    this.schedule(this.wait);
    return false;
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
    if (this.c.autoSession) {
      this.track("session_start");
      if (this.c.heartbeatInterval > 0) {
        this.beat = setInterval(() => this.track("heartbeat"), this.c.heartbeatInterval);
      }
    }
    this.schedule(this.queue.length || this.beacons.length ? 0 : this.c.flushInterval);
  }

  /** Ends the session and hands what is queued to sendBeacon (pagehide does this). */
  close(): void {
    if (this.closed) return;
    if (this.c.autoSession) this.track("session_end", { duration_sec: Math.round((Date.now() - this.started) / 1000) });
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.beat);
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
    for (const k of ["e", "p"] as const) {
      const items = this.queue.filter((i) => i.k === k);
      for (let i = 0; i < items.length; i += this.c.batchSize) {
        const batch = items.slice(i, i + this.c.batchSize);
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
export function identify(userId: string): void {
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
