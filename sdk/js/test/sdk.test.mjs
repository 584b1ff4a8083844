// Unit tests of the SDK's built ESM bundle under node's test runner: ids, batching by
// count and by time, back-off honouring Retry-After, the bounded offline queue, refusals
// that cannot succeed, purchases, and the sendBeacon hand-over.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, uuid, backoff } from "../dist/croupier.esm.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A storage that keeps strings in a Map, refusing (as a full localStorage) past `quota` characters. */
function memory(quota = Infinity) {
  const m = new Map();
  const setItem = (k, v) => {
    const used = [...m].reduce((n, [key, val]) => n + (key === k ? 0 : val.length), 0);
    if (used + String(v).length > quota) throw new DOMException("full", "QuotaExceededError");
    m.set(k, String(v));
  };
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem, m };
}

/** A fetch that answers each call with the next status (the last one repeats) and records the calls. */
function server(...statuses) {
  const calls = [];
  const f = async (url, init) => {
    const status = statuses[Math.min(calls.length, statuses.length - 1)];
    calls.push({ url, init, records: JSON.parse(init.body), status });
    if (status === "offline") throw new TypeError("Failed to fetch");
    const headers = new Headers(status === 429 ? { "Retry-After": "0" } : {});
    return new Response(status === 202 ? '{"ok":true}' : "{}", { status, headers });
  };
  f.calls = calls;
  return f;
}

/** Flushes until the queue is empty or nothing more goes (a flush a full batch started may be running). */
async function drain(c) {
  for (let i = 0; i < 500 && c.queue.length + c.beacons.length; i++) {
    await c.flush();
    await sleep(1);
  }
}

function client(over = {}) {
  return new Client({
    endpoint: "http://ingest.test",
    key: "pk_unit_test_key_0001",
    game: "g1",
    autoSession: false,
    flushInterval: 60_000,
    storage: memory(),
    ...over,
  });
}

test("event ids are v4 UUIDs, distinct, also without crypto.randomUUID", () => {
  const ids = new Set(Array.from({ length: 1000 }, uuid));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, UUID);
  const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  Object.defineProperty(globalThis, "crypto", { value: { getRandomValues: (b) => saved.get.call(globalThis).getRandomValues(b) }, configurable: true });
  try {
    assert.match(uuid(), UUID);
  } finally {
    Object.defineProperty(globalThis, "crypto", saved);
  }
});

test("a full batch is sent at once with the key, each record complete", async () => {
  const f = server(202);
  const c = client({ fetch: f, batchSize: 3, userId: "u1", appVersion: "1.2.0" });
  c.track("level_start", { level: 1 });
  c.track("level_complete", { level: 1 });
  assert.equal(f.calls.length, 0);
  c.track("level_start", { level: 2 });
  await drain(c);
  assert.equal(f.calls.length, 1);
  const { url, init, records } = f.calls[0];
  assert.equal(url, "http://ingest.test/api/analytics/ingest");
  assert.equal(init.headers["X-Write-Key"], "pk_unit_test_key_0001");
  assert.equal(init.headers["Content-Type"], "application/json");
  assert.deepEqual(records.map((r) => r.event), ["level_start", "level_complete", "level_start"]);
  const r = records[0];
  assert.equal(r.game_id, "g1");
  assert.equal(r.env, "prod");
  assert.equal(r.user_id, "u1");
  assert.equal(r.app_version, "1.2.0");
  assert.equal(r.platform, "web");
  assert.equal(r.session_id, c.session);
  assert.deepEqual(r.props, { level: 1 });
  assert.match(r.event_id, UUID);
  assert.equal(new Set(records.map((r) => r.event_id)).size, 3);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("a partial batch goes after flushInterval", async () => {
  const f = server(202);
  const c = client({ fetch: f, flushInterval: 30 });
  c.track("login");
  await sleep(120);
  assert.equal(f.calls.length, 1);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("429 and 503 are retried after Retry-After or a growing back-off, each event sent until stored", async () => {
  assert.equal(backoff(0, "3", 60_000), 3000);
  assert.equal(backoff(5, "120", 60_000), 60_000);
  for (let a = 0; a < 6; a++) {
    const b = backoff(a, null, 60_000);
    const cap = Math.min(1000 * 2 ** a, 60_000);
    assert.ok(b >= cap / 2 && b <= cap, `${a}: ${b}`);
  }
  const f = server(429, 202);
  const c = client({ fetch: f, flushInterval: 10 });
  c.track("login");
  await c.flush();
  assert.equal(f.calls.length, 1);
  assert.equal(c.queue.length, 1, "kept after 429");
  await sleep(100);
  assert.equal(f.calls.length, 2);
  assert.deepEqual(f.calls[1].records, f.calls[0].records, "the same records, same ids");
  assert.equal(c.queue.length, 0);
  c.close();
});

test("offline: the queue is kept in storage, bounded, and delivered by the next page", async () => {
  const storage = memory();
  const down = server("offline");
  const told = [];
  const c = client({ fetch: down, storage, maxQueue: 5, maxBackoff: 60_000, onError: (e) => told.push(e) });
  for (let i = 0; i < 8; i++) c.track("heartbeat", { i });
  await c.flush();
  assert.equal(c.queue.length, 5);
  assert.deepEqual(told, [], "told together, a moment later");
  await sleep(600);
  assert.deepEqual(told.map((e) => [e.reason, e.records]), [["dropped", 3]], "every record dropped is told");
  const saved = JSON.parse(storage.getItem("croupier:g1:queue"));
  assert.deepEqual(saved.map((s) => s.r.props.i), [3, 4, 5, 6, 7], "the oldest were dropped");
  c.close();
  const up = server(202);
  const next = client({ fetch: up, storage });
  await next.flush();
  assert.deepEqual(up.calls.flatMap((x) => x.records.map((r) => r.props.i)), [3, 4, 5, 6, 7]);
  assert.deepEqual(JSON.parse(storage.getItem("croupier:g1:queue")), []);
  assert.equal(next.device, c.device, "the device id is kept");
  next.close();
});

test("a full queue drops the oldest records that are not being posted, and tells how many", async () => {
  // A page whose origin the game does not allow: the browser hides the 403 (no CORS
  // headers), the SDK sees the network fail and retries, and the queue fills.
  let release;
  const hang = new Promise((r) => (release = r));
  const calls = [];
  const f = async (url, init) => {
    calls.push(JSON.parse(init.body));
    await hang;
    throw new TypeError("Failed to fetch");
  };
  const told = [];
  const c = client({ fetch: f, maxQueue: 4, batchSize: 2, onError: (e) => told.push(e) });
  c.track("a0");
  c.track("a1"); // a full batch: posted, and held
  await sleep(5);
  assert.deepEqual(calls.map((b) => b.map((r) => r.event)), [["a0", "a1"]]);
  for (let i = 2; i < 7; i++) c.track(`a${i}`);
  // The batch being posted stays, beside at most 4 waiting: the newest.
  assert.deepEqual(c.queue.map((i) => i.r.event), ["a0", "a1", "a3", "a4", "a5", "a6"]);
  await sleep(600);
  assert.deepEqual(told.map((e) => [e.reason, e.records]), [["dropped", 1]]);
  assert.match(told[0].message, /at most 4 records/);
  release();
  await sleep(5);
  c.close();
});

test("a queue smaller than a batch keeps the newest beside the batch being posted; maxQueue 0 is 1", async () => {
  let release;
  const hang = new Promise((r) => (release = r));
  const calls = [];
  const f = async (url, init) => {
    calls.push(JSON.parse(init.body).map((r) => r.event));
    await hang;
    return new Response('{"accepted":1}', { status: 202 });
  };
  const told = [];
  const c = client({ fetch: f, maxQueue: 0, batchSize: 1, onError: (e) => told.push(e) });
  c.track("c0"); // posted, and held
  await sleep(5);
  c.track("c1");
  c.track("c2");
  assert.deepEqual(c.queue.map((i) => i.r.event), ["c0", "c2"]);
  release();
  await sleep(20);
  assert.deepEqual(calls, [["c0"], ["c2"]]);
  assert.equal(c.queue.length, 0);
  await sleep(600);
  assert.deepEqual(told.map((e) => [e.reason, e.records]), [["dropped", 1]]);
  assert.match(told[0].message, /at most 1 records waiting/);
  c.close();
});

test("maxQueue given as undefined keeps the default", async () => {
  const down = async () => {
    throw new TypeError("Failed to fetch");
  };
  const c = client({ fetch: down, maxQueue: undefined, onError: () => {} });
  for (let i = 0; i < 50; i++) c.track(`d${i}`);
  assert.equal(c.queue.length, 50);
  c.close();
});

test("a handler that tracks what it is told does not call itself back", async () => {
  const f = async () => {
    throw new TypeError("Failed to fetch");
  };
  let c;
  const told = [];
  c = client({
    fetch: f,
    maxQueue: 3,
    onError: (e) => {
      told.push(e);
      c.track("sdk_error", { reason: e.reason });
    },
  });
  for (let i = 0; i < 10; i++) c.track(`b${i}`);
  await sleep(600);
  assert.equal(told.length, 1, "one report for the drops of a moment");
  assert.equal(told[0].records, 7);
  assert.equal(c.queue.length, 3);
  c.close();
});

test("a refusal that cannot succeed drops the batch; 5xx keeps it", async () => {
  const f = server(400);
  const c = client({ fetch: f });
  c.track("login");
  await c.flush();
  assert.equal(c.queue.length, 0);
  const g = server(500);
  const d = client({ fetch: g });
  d.track("login");
  await d.flush();
  assert.equal(d.queue.length, 1);
  c.close();
  d.close();
});

test("purchase: a payment to the payments route and a purchase event", async () => {
  const f = server(202);
  const c = client({ fetch: f, userId: "p1" });
  c.purchase({ orderId: "o-1", amountCents: 499, currency: "USD", productId: "gems" });
  await c.flush();
  assert.equal(f.calls.length, 2);
  const pay = f.calls.find((x) => x.url.endsWith("/api/analytics/payments/ingest")).records;
  assert.equal(pay.length, 1);
  assert.deepEqual(
    { user: pay[0].user_id, order: pay[0].order_id, cents: pay[0].amount_cents, cur: pay[0].currency, status: pay[0].status },
    { user: "p1", order: "o-1", cents: 499, cur: "USD", status: "success" },
  );
  const ev = f.calls.find((x) => x.url.endsWith("/api/analytics/ingest")).records;
  assert.equal(ev[0].event, "purchase");
  assert.equal(ev[0].props.order_id, "o-1");
  c.close();
});

test("close: session_end and the queue go by sendBeacon with the key in the URL", async () => {
  const beacons = [];
  Object.defineProperty(globalThis, "navigator", {
    value: { sendBeacon: (url, body) => (beacons.push({ url, body: JSON.parse(body) }), true) },
    configurable: true,
  });
  try {
    const c = client({ fetch: server("offline"), autoSession: true, heartbeatInterval: 0, batchSize: 50 });
    c.track("level_start");
    c.close();
    assert.equal(beacons.length, 1);
    assert.equal(beacons[0].url, "http://ingest.test/api/analytics/ingest?key=pk_unit_test_key_0001");
    assert.deepEqual(beacons[0].body.map((r) => r.event), ["session_start", "level_start", "session_end"]);
    assert.equal(c.queue.length, 0);
    c.track("late");
    assert.equal(c.queue.length, 0, "nothing is queued after close");
  } finally {
    delete globalThis.navigator;
  }
});

test("close: an event a handler tracks in answer to the last drop report goes with the beacons", async () => {
  const beacons = [];
  Object.defineProperty(globalThis, "navigator", {
    value: { sendBeacon: (url, body) => (beacons.push(JSON.parse(body)), true) },
    configurable: true,
  });
  try {
    let c;
    c = client({
      fetch: server("offline"),
      maxQueue: 3,
      batchSize: 50,
      onError: (e) => c.track("sdk_error", { reason: e.reason, records: e.records }),
    });
    for (let i = 0; i < 5; i++) c.track(`e${i}`);
    c.close(); // before the half-second report
    const sent = beacons.flat();
    const report = sent.find((r) => r.event === "sdk_error");
    assert.ok(report, JSON.stringify(sent.map((r) => r.event)));
    assert.deepEqual(report.props, { reason: "dropped", records: 2 });
    // The report takes no other record's place.
    assert.deepEqual(sent.map((r) => r.event), ["e2", "e3", "e4", "sdk_error"]);
  } finally {
    delete globalThis.navigator;
  }
});

test("a nearly full storage keeps what went by beacon: in the beacons, or back in the queue", async () => {
  Object.defineProperty(globalThis, "navigator", { value: { sendBeacon: () => true }, configurable: true });
  try {
    // Room for the queue of 30 records, not for it and their beacons at once; with 1.05 ×
    // the queue, room for it alone (the bodies, escaped in the beacons' list, take more).
    const probe = client({ fetch: server("offline") });
    for (let i = 0; i < 30; i++) probe.track(`e${i}`, { pad: "x".repeat(100) });
    const size = probe.c.storage.getItem("croupier:g1:queue").length;
    probe.close();
    for (const [quota, kept] of [
      [size * 1.5, "beacons"],
      [size * 1.05, "queue"],
    ]) {
      const storage = memory(Infinity);
      const c = client({ fetch: server("offline"), storage });
      for (let i = 0; i < 30; i++) c.track(`e${i}`, { pad: "x".repeat(100) });
      // The storage fills up (another script's keys) before the page closes.
      const full = memory(quota);
      for (const [k, v] of storage.m) full.m.set(k, v);
      c.c.storage = full;
      c.close();
      const beacons = JSON.parse(full.getItem("croupier:g1:beacons") || "[]");
      const queue = JSON.parse(full.getItem("croupier:g1:queue") || "[]");
      const events = beacons.flatMap((b) => JSON.parse(b.body).map((r) => r.event)).concat(queue.map((q) => q.r.event));
      assert.equal(new Set(events).size, 30, `${kept}: every record kept somewhere`);
      // With room, all in the beacons; without, what does not fit back in the queue.
      if (kept === "beacons") assert.equal(queue.length, 0);
      else assert.ok(queue.length > 0, "some records back in the queue");
    }
  } finally {
    delete globalThis.navigator;
  }
});

test("a page back from the back/forward cache takes events again, in a new session", async () => {
  Object.defineProperty(globalThis, "navigator", { value: { sendBeacon: () => true }, configurable: true });
  try {
    const f = server(202);
    const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0, batchSize: 50 });
    const first = c.session;
    c.track("before");
    c.close(); // pagehide: kept in the back/forward cache
    c.track("while-away");
    c.reopen(); // pageshow, persisted
    c.track("after");
    assert.notEqual(c.session, first);
    assert.deepEqual(c.queue.map((i) => i.r.event), ["session_start", "after"]);
    assert.ok(c.queue.every((i) => i.r.session_id === c.session));
    await c.flush();
    // The close's beacon body first (kept, sent again as it was), then the new session.
    assert.deepEqual(
      f.calls.map((x) => x.records.map((r) => r.event)),
      [
        ["session_start", "before", "session_end"],
        ["session_start", "after"],
      ]
    );
    assert.equal(c.queue.length, 0);
    c.close();
  } finally {
    delete globalThis.navigator;
  }
});

test("two tabs sharing the storage keep each other's beacons", async () => {
  Object.defineProperty(globalThis, "navigator", { value: { sendBeacon: () => true }, configurable: true });
  const storage = memory();
  try {
    const a = client({ fetch: server("offline"), storage });
    const b = client({ fetch: server("offline"), storage });
    a.track("from-a");
    a.close();
    // Tab b goes on queueing (each track writes its queue) and then closes too.
    b.track("from-b");
    b.track("from-b-again");
    b.close();
    const kept = JSON.parse(storage.getItem("croupier:g1:beacons")).map((x) => JSON.parse(x.body).map((r) => r.event));
    assert.deepEqual(kept, [["from-a"], ["from-b", "from-b-again"]]);
    // A non-array value (damaged storage) is no beacon, and a page still closes.
    storage.setItem("croupier:g1:beacons", "{}");
    const c = client({ fetch: server("offline"), storage });
    assert.deepEqual(c.beacons, []);
    c.track("x");
    c.close();
    assert.equal(JSON.parse(storage.getItem("croupier:g1:beacons")).length, 1);
  } finally {
    delete globalThis.navigator;
  }
});

test("a beaconed body is kept and sent again as the same bytes by the next page, whatever the beacon met", async () => {
  // The beacon's answer is never seen (the server may refuse it, 429 on a burst): the
  // next page posts the same body, stored once if the beacon was.
  const sent = [];
  Object.defineProperty(globalThis, "navigator", {
    value: { sendBeacon: (url, body) => (sent.push(body), true) },
    configurable: true,
  });
  const storage = memory();
  try {
    const first = client({ fetch: server("offline"), storage, batchSize: 2 });
    for (const e of ["a", "b", "c"]) first.track(e);
    first.close();
    assert.equal(sent.length, 2, "two batches of at most 2");
    assert.equal(JSON.parse(storage.getItem("croupier:g1:beacons")).length, 2);
    assert.equal(JSON.parse(storage.getItem("croupier:g1:queue")).length, 0);
    const f = server(429, 202);
    const next = client({ fetch: f, storage, batchSize: 2, maxBackoff: 10 });
    await next.flush();
    await sleep(50);
    await next.flush();
    assert.deepEqual(
      f.calls.map((x) => x.init.body),
      [sent[0], sent[0], sent[1]],
      "the same bytes, again after the 429, in order"
    );
    assert.equal(next.beacons.length, 0);
    assert.deepEqual(JSON.parse(storage.getItem("croupier:g1:beacons")), []);
    next.close();
  } finally {
    delete globalThis.navigator;
  }
});

test("a record JSON cannot carry is not queued, and told; what follows is sent", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, onError: (e) => errors.push(e) });
  const o = { a: 1 };
  o.self = o;
  c.track("circular", o);
  c.track("big", { n: 10n });
  c.track("", {});
  c.track("x".repeat(129));
  c.track("after");
  await drain(c);
  assert.deepEqual(f.calls.flatMap((x) => x.records.map((r) => r.event)), ["after"]);
  assert.deepEqual(errors.map((e) => e.reason), ["invalid", "invalid", "invalid", "invalid"]);
  // What the page changes after tracking is not what was tracked.
  const props = { level: 1 };
  c.track("copy", props);
  props.level = 2;
  await drain(c);
  assert.equal(f.calls.at(-1).records[0].props.level, 1);
  c.close();
});

test("requests stay under 60 KiB, sent with keepalive; a larger record goes alone without it", async () => {
  const f = server(202);
  const c = client({ fetch: f });
  for (let i = 0; i < 19; i++) c.track(`e${i}`, { pad: "x".repeat(4000) });
  c.track("huge", { pad: "y".repeat(70_000) });
  c.track("last");
  await drain(c);
  const sent = f.calls.flatMap((x) => x.records.map((r) => r.event));
  assert.deepEqual(sent, [...Array.from({ length: 19 }, (_, i) => `e${i}`), "huge", "last"]);
  for (const call of f.calls) {
    const size = Buffer.byteLength(call.init.body);
    if (call.records.some((r) => r.event === "huge")) {
      assert.equal(call.records.length, 1);
      assert.equal(call.init.keepalive, false);
    } else {
      assert.ok(size <= 60 * 1024, `${size} bytes`);
      assert.equal(call.init.keepalive, true);
    }
  }
  c.close();
});

/** A refusal as the server words it: the record's index and field. */
const refuse = (index, field) =>
  new Response(JSON.stringify({ error: "invalid_field", message: `record ${index}: field \`${field}\` is bad`, field, index }), { status: 400 });

/** A server refusing a batch that holds a `bad` event (naming it), else storing the events' names in `stored`. */
const refusingBad = (stored) => async (url, init) => {
  const list = JSON.parse(init.body);
  const at = list.findIndex((r) => r.event === "bad");
  if (at >= 0) return refuse(at, "event");
  stored.push(...list.map((r) => r.event));
  return new Response('{"ok":true}', { status: 202 });
};

test("a refused record is dropped with those refused alike; the rest is sent, in batches the server takes", async () => {
  const calls = [];
  const stored = [];
  // Refuses more than 8 records, and a `bad` event, as the server words it.
  const f = async (url, init) => {
    const records = JSON.parse(init.body);
    calls.push(records.map((r) => r.event));
    if (records.length > 8) return new Response('{"error":"invalid_batch","message":"batch holds more than 8 records"}', { status: 400 });
    const at = records.findIndex((r) => r.event === "bad");
    if (at >= 0) return refuse(at, "event");
    stored.push(...records.map((r) => r.event));
    return new Response('{"ok":true}', { status: 202 });
  };
  const errors = [];
  const c = client({ fetch: f, batchSize: 20, onError: (e) => errors.push(e) });
  for (let i = 0; i < 40; i++) c.track(i === 13 ? "bad" : `e${i}`);
  await drain(c);
  assert.equal(stored.length, 39);
  assert.ok(!stored.includes("bad"));
  assert.deepEqual(errors.map((e) => [e.reason, e.status, e.records]), [["refused", 400, 1]]);
  // After the first answer naming the most, no request holds more; the bad record went twice.
  assert.ok(calls.slice(1).every((b) => b.length <= 8), `${calls.map((b) => b.length)}`);
  assert.equal(calls.filter((b) => b.includes("bad")).length, 2);
  assert.ok(calls.length <= 8, `${calls.length} requests`);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("a field every record shares refused drops them at once, not one request each", async () => {
  const calls = [];
  const f = async (url, init) => {
    calls.push(JSON.parse(init.body).length);
    return refuse(0, "app_version");
  };
  const errors = [];
  const c = client({ fetch: f, batchSize: 20, appVersion: "1.0-refused-by-the-server", onError: (e) => errors.push(e.records) });
  for (let i = 0; i < 40; i++) c.track(`e${i}`);
  await drain(c);
  assert.deepEqual(calls, [20, 20]);
  assert.deepEqual(errors, [20, 20]);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("a 413 halves the bytes of the page's requests, not left at one record a request", async () => {
  // A proxy taking at most 16 KiB: one 20 KB record, then 40 small ones.
  const calls = [];
  const f = async (url, init) => {
    const n = JSON.parse(init.body).length;
    const over = new TextEncoder().encode(init.body).length > 16 * 1024;
    calls.push([n, over ? 413 : 202]);
    return new Response(over ? "too large" : '{"ok":true}', { status: over ? 413 : 202 });
  };
  const errors = [];
  const c = client({ fetch: f, batchSize: 20, onError: (e) => errors.push([e.reason, e.status, e.records]) });
  c.track("first");
  c.track("big", { pad: "z".repeat(20000) });
  await drain(c);
  assert.deepEqual(calls, [[2, 413], [1, 202], [1, 413]]);
  assert.deepEqual(errors, [["refused", 413, 1]]);
  for (let i = 0; i < 40; i++) c.track(`small${i}`, { pad: "s".repeat(100) });
  await drain(c);
  assert.deepEqual(calls.slice(3), [[20, 202], [20, 202]]);
  c.close();
});

test("a record whose time is not between 2000 and 2100 (a device's clock) is not queued, and told", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, batchSize: 3, onError: (e) => errors.push([e.reason, e.records, e.message]) });
  const real = Date.now;
  try {
    Date.now = () => real() - 1.75e12; // 1971
    c.track("early");
    Date.now = () => 4_102_444_800_000; // 2100-01-01
    c.track("late");
  } finally {
    Date.now = real;
  }
  c.track("now");
  await c.flush();
  assert.equal(errors.length, 2);
  assert.match(errors[0][2], /1971-.*not between 2000 and 2100/);
  assert.match(errors[1][2], /2100-01-01T00:00:00.000Z/);
  assert.deepEqual(errors.map((e) => e.slice(0, 2)), [["invalid", 1], ["invalid", 1]]);
  assert.deepEqual(f.calls.map((x) => x.records.map((r) => r.event)), [["now"]]);
  c.close();
});

test("a request left unanswered is given up after requestTimeout and sent again", async () => {
  const calls = [];
  const f = (url, init) => {
    calls.push(init.body);
    // The first is never answered (something in front holding it); it ends when aborted.
    if (calls.length === 1) {
      return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
    }
    return Promise.resolve(new Response('{"ok":true}', { status: 202 }));
  };
  const c = client({ fetch: f, batchSize: 2, requestTimeout: 50, maxBackoff: 10 });
  c.track("a");
  c.track("b");
  await drain(c);
  assert.equal(calls.length, 2);
  assert.equal(calls[1], calls[0], "sent again as the same bytes");
  assert.equal(c.queue.length, 0);
  c.close();
});

test("requestTimeout Infinity, 0 or past a timer's longest never gives a request up", async () => {
  for (const requestTimeout of [Infinity, 0, 2 ** 31, 1e12]) {
    const calls = [];
    let answer;
    const f = (url, init) => {
      calls.push(init.signal);
      // Answered later than any timer that fires at once would allow.
      return new Promise((resolve) => { answer = () => resolve(new Response('{"ok":true}', { status: 202 })); });
    };
    const c = client({ fetch: f, batchSize: 1, requestTimeout, maxBackoff: 10 });
    c.track("a");
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(calls.length, 1, `${requestTimeout}: sent once`);
    assert.equal(calls[0].aborted, false, `${requestTimeout}: not given up`);
    answer();
    await drain(c);
    assert.equal(calls.length, 1, `${requestTimeout}: not sent again`);
    assert.equal(c.queue.length, 0);
    c.close();
  }
});

test("a 413 from a server that counts records halves the requests until they pass", async () => {
  const calls = [];
  const f = async (url, init) => {
    const n = JSON.parse(init.body).length;
    calls.push(n);
    return new Response(n > 5 ? "too large" : '{"ok":true}', { status: n > 5 ? 413 : 202 });
  };
  const c = client({ fetch: f, batchSize: 20 });
  for (let i = 0; i < 40; i++) c.track(`e${i}`);
  await drain(c);
  // Half the bytes of 10 records' body holds 4 of them.
  assert.deepEqual(calls, [20, 10, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]);
  c.close();
});

test("lone surrogates are sent as U+FFFD, in values and keys", async () => {
  const f = server(202);
  const c = client({ fetch: f });
  const cut = "Ace\u{1f3b2}".slice(0, 4);
  c.track("nick", { nick: cut, [cut]: 1, ok: "\u{1f3b2}" });
  await drain(c);
  const body = f.calls[0].init.body;
  assert.ok(!/\\ud[89a-f]/i.test(body), body);
  assert.deepEqual(f.calls[0].records[0].props, { nick: "Ace\ufffd", "Ace\ufffd": 1, ok: "\u{1f3b2}" });
  c.close();
});

test("a purchase the server would refuse is not queued, and told; a queued one's event has its status", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, userId: "p1", onError: (e) => errors.push(e.message) });
  c.purchase({ orderId: "o-1", amountCents: 4.99, currency: "USD" });
  c.purchase({ orderId: "o-2", amountCents: 499, currency: "usd" });
  c.purchase({ orderId: "", amountCents: 499, currency: "USD" });
  c.purchase({ orderId: "o-3", amountCents: 499, currency: "USD", status: "refunded" });
  await drain(c);
  assert.equal(errors.length, 3, errors.join("; "));
  const pay = f.calls.filter((x) => x.url.endsWith("/payments/ingest")).flatMap((x) => x.records);
  const ev = f.calls.filter((x) => !x.url.endsWith("/payments/ingest")).flatMap((x) => x.records);
  assert.deepEqual(pay.map((p) => [p.order_id, p.status]), [["o-3", "refunded"]]);
  assert.deepEqual(ev.map((e) => [e.event, e.props.order_id, e.props.status]), [["purchase", "o-3", "refunded"]]);
  c.close();
});

test("a purchase refused for the device's clock tells that its two records are lost", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, userId: "p1", onError: (e) => errors.push([e.reason, e.records]) });
  const real = Date.now;
  try {
    Date.now = () => real() - 1.75e12; // 1971
    c.purchase({ orderId: "o-1", amountCents: 499, currency: "USD" });
  } finally {
    Date.now = real;
  }
  await drain(c);
  assert.deepEqual(errors, [["invalid", 2]]);
  assert.equal(f.calls.length, 0);
  c.close();
});

test("a stored queue that is not a list of records is set aside, not thrown on", async () => {
  for (const saved of ["null", '{"k":"e"}', '"x"', "[1,null,{\"k\":\"z\",\"r\":{}},{\"k\":\"e\",\"r\":{\"event\":\"kept\"}}]"]) {
    const storage = memory();
    storage.setItem("croupier:g1:queue", saved);
    const c = client({ fetch: server(202), storage });
    assert.deepEqual(c.queue.map((i) => i.r.event), saved.includes("kept") ? ["kept"] : [], saved);
    c.close();
  }
});

test("a beaconed body refused comes back as records, the refused one dropped", async () => {
  const storage = memory();
  const records = ["a", "bad", "c"].map((event) => ({ event, game_id: "g1" }));
  storage.setItem("croupier:g1:beacons", JSON.stringify([{ k: "e", body: JSON.stringify(records) }]));
  const stored = [];
  const f = refusingBad(stored);
  const errors = [];
  const c = client({ fetch: f, storage, onError: (e) => errors.push(e.records) });
  await drain(c);
  assert.deepEqual(stored.sort(), ["a", "c"]);
  assert.deepEqual(errors, [1]);
  assert.deepEqual(JSON.parse(storage.getItem("croupier:g1:beacons")), []);
  c.close();
});

test("names are measured in UTF-8 bytes, as the server does (an emoji is 4)", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, onError: (e) => errors.push(e.message) });
  c.track("\u{1f3b2}".repeat(32));
  c.track("\u{1f3b2}".repeat(33));
  c.track("é".repeat(64));
  await drain(c);
  assert.equal(errors.length, 1, errors.join("; "));
  assert.deepEqual(f.calls.flatMap((x) => x.records.map((r) => r.event.length)), [64, 64]);
  c.close();
});

test("two tabs meeting the refusal of one stored beacon take its records back once", async () => {
  const storage = memory();
  const records = ["a", "bad", "c"].map((event) => ({ event, game_id: "g1", event_id: `id-${event}` }));
  storage.setItem("croupier:g1:beacons", JSON.stringify([{ k: "e", body: JSON.stringify(records) }]));
  const stored = [];
  const f = refusingBad(stored);
  // Both tabs loaded the beacon at their start; the second meets the refusal after the first.
  const one = client({ fetch: f, storage, onError: () => {} });
  const two = client({ fetch: f, storage, onError: () => {} });
  await drain(one);
  await drain(two);
  assert.deepEqual(stored.sort(), ["a", "c"]);
  one.close();
  two.close();
});

test("props nested deeper than the server takes are refused when tracked; a 403 naming a record drops it alone", async () => {
  const nest = (n) => (n === 0 ? 1 : { a: nest(n - 1) });
  const stored = [];
  let read = 0;
  const f = async (url, init) => {
    const list = JSON.parse(init.body);
    const at = list.findIndex((r) => r.event === "not_listed");
    const res = at >= 0
      ? new Response(JSON.stringify({ error: "not_allowed", field: "event", index: at }), { status: 403 })
      : (stored.push(...list.map((r) => r.event)), new Response('{"ok":true}', { status: 202 }));
    // Every answer's body is read (an unread one keeps its keepalive share in a browser).
    const text = res.text.bind(res);
    res.text = () => ((read += 1), text());
    return res;
  };
  const errors = [];
  const c = client({ fetch: f, onError: (e) => errors.push(e) });
  c.track("deep_ok", nest(14)); // props 14 levels: the body 16
  c.track("too_deep", nest(15));
  c.track("not_listed");
  c.track("after");
  c.purchase(null);
  c.purchase({ orderId: "o".repeat(257), amountCents: 100, currency: "USD" });
  await drain(c);
  assert.deepEqual(stored, ["deep_ok", "after"]);
  assert.deepEqual(errors.map((e) => [e.reason, e.status, e.records]), [
    ["invalid", undefined, 1],
    ["invalid", undefined, 2],
    ["invalid", undefined, 2],
    ["refused", 403, 1],
  ]);
  assert.equal(read, 2);
  c.close();
});

test("identify after init gives the waiting session_start its player; once it has left, a login says who it is", async () => {
  const f = server(202);
  const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0 });
  c.identify("p1");
  c.track("level_start", { level: 1 });
  await drain(c);
  const first = f.calls.flatMap((x) => x.records);
  assert.deepEqual(first.map((r) => [r.event, r.user_id]), [["session_start", "p1"], ["level_start", "p1"]]);

  const g = server(202);
  const d = client({ fetch: g, autoSession: true, heartbeatInterval: 0 });
  await drain(d);
  d.identify("p2");
  d.identify("p2");
  d.track("level_start", { level: 1 });
  await drain(d);
  const sent = g.calls.flatMap((x) => x.records);
  assert.deepEqual(sent.map((r) => [r.event, r.user_id]), [["session_start", undefined], ["login", "p2"], ["level_start", "p2"]]);
  assert.ok(sent.every((r) => r.session_id === d.session));
  c.close();
  d.close();
});

test("numbers given for the user id and the columns are sent as their text; a trailing slash of the endpoint is dropped", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, endpoint: "http://ingest.test//", appVersion: 2, channel: 7, env: { x: 1 }, onError: (e) => errors.push(e) });
  c.identify(987654);
  c.track("level_start");
  c.identify({ id: 1 });
  c.track("level_start");
  await drain(c);
  assert.equal(f.calls[0].url, "http://ingest.test/api/analytics/ingest");
  for (const r of f.calls[0].records) {
    assert.equal(r.user_id, "987654");
    assert.equal(r.app_version, "2");
    assert.equal(r.channel, "7");
    assert.equal(r.env, "prod");
  }
  assert.deepEqual(errors.map((e) => e.reason), ["invalid", "invalid"]);
  assert.match(errors[0].message, /env/);
  assert.match(errors[1].message, /user id/);
  c.close();
});

test("a player id with a lone surrogate given to the waiting session_start is sent well formed, as tracked records are", async () => {
  const f = server(202);
  const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0 });
  c.identify("p\uD800");
  c.track("level_start");
  await drain(c);
  const sent = f.calls.flatMap((x) => x.records);
  assert.deepEqual(sent.map((r) => r.user_id), ["p\uFFFD", "p\uFFFD"]);
  c.close();
});

test("another player identified in the session is announced by a login; the same one again, or none, is not", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0, userId: "p1", env: "", onError: (e) => errors.push(e) });
  await drain(c);
  c.identify("p1");
  c.identify("p2");
  c.identify("p2");
  c.identify(undefined);
  c.track("level_start");
  c.identify("x".repeat(257));
  c.identify("p2");
  c.track("level_start");
  await drain(c);
  const sent = f.calls.flatMap((x) => x.records);
  assert.deepEqual(sent.map((r) => [r.event, r.user_id]), [["session_start", "p1"], ["login", "p2"], ["level_start", undefined], ["level_start", "p2"]]);
  assert.ok(sent.every((r) => r.env === "prod"));
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /at most 256 bytes/);
  c.close();
});

test("players named before the session_start leaves: it takes the last one, no login; too long a column at init is left out", async () => {
  const f = server(202);
  const errors = [];
  const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0, appVersion: "v".repeat(300), onError: (e) => errors.push(e) });
  c.identify("guest-1");
  c.track("tutorial");
  c.identify("account-9");
  await drain(c);
  const sent = f.calls.flatMap((x) => x.records);
  assert.deepEqual(sent.map((r) => [r.event, r.user_id]), [["session_start", "account-9"], ["tutorial", "guest-1"]]);
  assert.ok(sent.every((r) => r.app_version === undefined));
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /appVersion must be a string of at most 256 bytes/);
  c.close();
});

/** A fetch that answers each call with the next [status, body] (the last one repeats) and records the calls. */
function answering(...answers) {
  const calls = [];
  const f = async (url, init) => {
    const answer = answers[Math.min(calls.length, answers.length - 1)];
    calls.push({ url, init, body: init.body });
    if (answer === "offline") throw new TypeError("Failed to fetch");
    const [status, body] = answer;
    return new Response(body, { status, headers: new Headers(status === 503 ? { "Retry-After": "0" } : {}) });
  };
  f.calls = calls;
  return f;
}

test("a batch to send again goes as the same bytes, whatever was tracked meanwhile", async () => {
  const f = answering([503, '{"error":"not_replicated","appended":true}'], [202, '{"ok":true,"accepted":2,"dropped":0}']);
  const c = client({ fetch: f, batchSize: 5 });
  c.track("a");
  c.track("b");
  await c.flush();
  assert.equal(f.calls.length, 1);
  c.track("c");
  await c.flush();
  await c.flush();
  assert.equal(f.calls[1].body, f.calls[0].body, "the server stores the same request once");
  assert.deepEqual(JSON.parse(f.calls[2].body).map((r) => r.event), ["c"]);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("records a 202 says the game's filters left out are told", async () => {
  const told = [];
  const f = answering([202, '{"ok":true,"accepted":1,"dropped":2}']);
  const c = client({ fetch: f, onError: (e) => told.push(e) });
  for (const e of ["a", "b", "c"]) c.track(e);
  await c.flush();
  assert.deepEqual(told.map((e) => [e.reason, e.status, e.records]), [["filtered", 202, 2]]);
  assert.equal(c.queue.length, 0);
  c.close();
});

test("500 encode_failed drops the batch and is told; another 500 keeps it", async () => {
  const told = [];
  const f = answering([500, '{"error":"encode_failed","message":"a server fault; retrying will not help"}']);
  const c = client({ fetch: f, onError: (e) => told.push(e) });
  c.track("a");
  await c.flush();
  assert.equal(c.queue.length, 0);
  assert.deepEqual(told.map((e) => [e.reason, e.status, e.records]), [["refused", 500, 1]]);
  const g = answering([500, '{"error":"internal"}']);
  const d = client({ fetch: g });
  d.track("a");
  await d.flush();
  assert.equal(d.queue.length, 1);
  c.close();
  d.close();
});

test("records a closing tab could not hand to sendBeacon outlive another tab's writes", async () => {
  // The browser takes no beacon (its 64 KiB in flight are spent): the records stay stored.
  Object.defineProperty(globalThis, "navigator", { value: { sendBeacon: () => false }, configurable: true });
  const storage = memory();
  try {
    const a = client({ fetch: server("offline"), storage });
    const b = client({ fetch: server(202), storage });
    a.track("from-a");
    a.close();
    // Tab b goes on, tracking and sending: its writes keep a's records.
    b.track("from-b");
    await b.flush();
    b.track("from-b-again");
    const stored = JSON.parse(storage.getItem("croupier:g1:queue")).map((i) => i.r.event);
    assert.deepEqual(stored, ["from-a", "from-b-again"]);
    // The next page sends them; once sent they leave the storage.
    const up = server(202);
    const c = client({ fetch: up, storage });
    await c.flush();
    assert.deepEqual(up.calls.flatMap((x) => x.records.map((r) => r.event)), ["from-a", "from-b-again"]);
    assert.deepEqual(JSON.parse(storage.getItem("croupier:g1:queue")), []);
    b.close();
    c.close();
  } finally {
    delete globalThis.navigator;
  }
});

test("a 404, 405 or 401 unknown_key is retried a few times before the batch is dropped", async () => {
  for (const [status, body] of [[404, '{"error":"not_found"}'], [405, ""], [401, '{"error":"unknown_key","message":"x"}']]) {
    const told = [];
    const f = answering([status, body], [status, body], [202, '{"ok":true,"accepted":1,"dropped":0}']);
    const c = client({ fetch: f, onError: (e) => told.push(e), maxBackoff: 1 });
    c.track("a");
    await drain(c);
    assert.equal(f.calls.length, 3, `${status}: sent until stored`);
    assert.deepEqual(told, [], `${status}: nothing dropped`);
    c.close();
    const never = answering([status, body]);
    const d = client({ fetch: never, onError: (e) => told.push(e), maxBackoff: 1 });
    d.track("a");
    await drain(d);
    assert.equal(never.calls.length, 6, `${status}: five retries, then dropped`);
    assert.deepEqual(told.map((e) => [e.reason, e.status]), [["refused", status]]);
    d.close();
  }
  // A revoked key is the server's word: dropped at once.
  const revoked = answering([401, '{"error":"revoked_key"}']);
  const e = client({ fetch: revoked, onError: () => {} });
  e.track("a");
  await drain(e);
  assert.equal(revoked.calls.length, 1);
  e.close();
});

test("a 404 after an outage is still retried five times in a row; another answer starts the count again", async () => {
  const not = [404, '{"error":"not_found"}'];
  const ok = [202, '{"ok":true,"accepted":1,"dropped":0}'];
  // Network failures during a deploy, then a node whose route is not there yet.
  const after = ["offline", "offline", "offline", "offline", "offline", not, not, not, not, not, ok];
  const told = [];
  const f = answering(...after);
  const c = client({ fetch: f, onError: (e) => told.push(e), maxBackoff: 1 });
  c.track("a");
  await drain(c);
  assert.equal(f.calls.length, 11, "sent until stored");
  assert.deepEqual(told, []);
  c.close();
  // Five in a row at most: a 503 between them starts the count again.
  const between = answering(not, not, not, not, [503, "{}"], not, not, not, not, not, ok);
  const d = client({ fetch: between, onError: (e) => told.push(e), maxBackoff: 1 });
  d.track("a");
  await drain(d);
  assert.equal(between.calls.length, 11);
  assert.deepEqual(told, []);
  d.close();
  // A stored beacon alike.
  const storage = memory();
  storage.setItem("croupier:g1:beacons", JSON.stringify([{ k: "e", body: JSON.stringify([{ event: "a", game_id: "g1" }]) }]));
  const g = answering(...after);
  const e = client({ fetch: g, storage, onError: (e) => told.push(e), maxBackoff: 1 });
  await drain(e);
  assert.equal(g.calls.length, 11);
  assert.deepEqual(told, []);
  assert.deepEqual(JSON.parse(storage.getItem("croupier:g1:beacons")), []);
  e.close();
});

test("stored beacons past 256 KiB drop the oldest bodies, and their records are told", async () => {
  Object.defineProperty(globalThis, "navigator", { value: { sendBeacon: () => true }, configurable: true });
  const storage = memory();
  const told = [];
  let tracked = 0;
  try {
    // Offline pages, each closing with about 80 KB handed to sendBeacon, which never arrives.
    for (let page = 0; page < 6; page++) {
      const c = client({ fetch: server("offline"), storage, onError: (e) => told.push(e) });
      for (let i = 0; i < 150; i++, tracked++) c.track("level_start", { pad: "x".repeat(300), page, i });
      c.close();
    }
    const queued = JSON.parse(storage.getItem("croupier:g1:queue")).length;
    const beacons = JSON.parse(storage.getItem("croupier:g1:beacons"));
    const kept = beacons.reduce((n, b) => n + JSON.parse(b.body).length, 0);
    assert.ok(beacons.reduce((n, b) => n + b.body.length, 0) <= 262144);
    assert.ok(queued + kept < tracked, "some bodies dropped");
    assert.ok(told.length > 0 && told.every((e) => e.reason === "dropped"), JSON.stringify(told));
    assert.equal(queued + kept + told.reduce((n, e) => n + e.records, 0), tracked, "every record kept or told");
  } finally {
    delete globalThis.navigator;
  }
});

test("session_start waits for the first batch, which an identify a moment after init still names; what an earlier page left goes at once", async () => {
  const f = server(202);
  const c = client({ fetch: f, autoSession: true, heartbeatInterval: 0, flushInterval: 200 });
  await sleep(20); // the page looks up its account
  c.identify("p1");
  c.track("level_start");
  assert.equal(f.calls.length, 0, "nothing sent before flushInterval");
  await sleep(400);
  assert.deepEqual(f.calls.map((x) => x.records.map((r) => [r.event, r.user_id])), [[["session_start", "p1"], ["level_start", "p1"]]]);
  c.close();
  const storage = memory();
  const offline = client({ fetch: server("offline"), storage });
  offline.track("left");
  offline.close();
  const g = server(202);
  const next = client({ fetch: g, storage, autoSession: true, heartbeatInterval: 0 });
  await sleep(20);
  assert.deepEqual(g.calls.map((x) => x.records.map((r) => r.event)), [["left", "session_start"]]);
  next.close();
});
