// Browser tests of the script-tag bundle in Debian's headless Chromium, driven by
// playwright-core (no browser download): a page served by a small static server (its
// origin in the game's allowed_origins) sends to a running data port. Run by
// tests/it/sdk_browser.rs, which starts the stack and then checks ClickHouse.
//
//   node run.mjs <ingest base URL> <write key> <game> <run id> <page port>
//
// Scenarios, one page each (users <run>-s, <run>-o, <run>-c):
//   s: a session with events (a score past 2^64) and a purchase, a heartbeat, closed →
//      session_end by beacon
//   o: the network blocked (context.setOffline), events kept in localStorage, restored →
//      the queue delivered
//   c: a batch still queued (large batch, long interval) when the page is closed →
//      sendBeacon delivers it
//   b: more than the 64 KiB Chromium sends with keepalive queued at once, a name cut
//      inside an emoji (a lone surrogate), and one record the server refuses (props over
//      32 KiB) → every other record stored, the refused one told to onError
// Prints one JSON object: what each page saw.
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [ingest, key, game, run, port] = process.argv.slice(2);
const bundle = readFileSync(fileURLToPath(new URL("../dist/croupier.min.js", import.meta.url)));
const page = `<!doctype html><html><head><meta charset="utf-8"><title>croupier sdk</title>
<script src="/croupier.min.js"></script></head><body>sdk test</body></html>`;
const server = createServer((req, res) => {
  if (req.url === "/croupier.min.js") {
    res.writeHead(200, { "Content-Type": "text/javascript" }).end(bundle);
  } else {
    res.writeHead(200, { "Content-Type": "text/html" }).end(page);
  }
});
await new Promise((r) => server.listen(Number(port), "127.0.0.1", r));
const origin = `http://127.0.0.1:${port}`;
const executablePath = process.env.CROUPIER_CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
const out = {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until the page's queue is empty (20 s at most). */
async function drained(p) {
  await p.waitForFunction(() => window.client.queue.length === 0, null, { timeout: 20000, polling: 50 });
}

try {
  const ctx = await browser.newContext();
  const open = async (user, extra) => {
    const p = await ctx.newPage();
    p.on("console", (m) => process.stderr.write(`[page ${user}] ${m.text()}\n`));
    await p.goto(`${origin}/`);
    await p.evaluate(
      ([cfg]) => {
        window.client = Croupier.init(cfg);
      },
      [{ endpoint: ingest, key, game, env: "prod", userId: `${run}-${user}`, appVersion: "9.9.9", ...extra }],
    );
    return p;
  };

  // s: a session with events, a purchase and a heartbeat.
  const s = await open("s", { flushInterval: 100, heartbeatInterval: 300 });
  await s.evaluate((run) => {
    Croupier.track("level_start", { level: 1 });
    // Past 2^64: JSON.stringify writes it without an exponent (18446744073709552000).
    Croupier.track("level_complete", { level: 1, score: 2 ** 64 });
    Croupier.purchase({ orderId: `${run}-order`, amountCents: 499, currency: "USD", productId: "gems_100" });
  }, run);
  await sleep(450);
  await drained(s);
  out.s = { session: await s.evaluate(() => window.client.session) };
  await s.close({ runBeforeUnload: true });

  // o: offline, then online again.
  const o = await open("o", { flushInterval: 100, heartbeatInterval: 0, maxBackoff: 500 });
  await drained(o);
  await ctx.setOffline(true);
  await o.evaluate(() => {
    for (let i = 0; i < 5; i++) Croupier.track("level_start", { level: i });
  });
  await sleep(400);
  out.o = {
    queuedOffline: await o.evaluate(() => window.client.queue.length),
    storedOffline: await o.evaluate((g) => JSON.parse(localStorage.getItem(`croupier:${g}:queue`) || "[]").length, game),
  };
  await ctx.setOffline(false);
  await drained(o);
  await o.close({ runBeforeUnload: true });

  // b: large bodies, a lone surrogate, a refused record.
  const b = await open("b", { batchSize: 100, flushInterval: 100, heartbeatInterval: 0 });
  await b.evaluate(() => {
    // Posts the browser itself refused (an answered keepalive request whose body is not
    // read keeps its share of the 64 KiB, and the next large one fails without being sent).
    window.refusedByBrowser = 0;
    const send = window.fetch.bind(window);
    window.fetch = (...args) => send(...args).catch((e) => ((window.refusedByBrowser += 1), Promise.reject(e)));
    window.errors = [];
    window.client.c.onError = (e) => window.errors.push(e);
    for (let i = 0; i < 19; i++) Croupier.track("level_start", { level: i, pad: "x".repeat(4000) });
    // Two more requests of about 40 KB each, back to back.
    for (let i = 0; i < 20; i++) Croupier.track("level_up", { level: i, pad: "w".repeat(4000) });
    Croupier.track("level_fail", { level: 99, pad: "y".repeat(40000) });
    Croupier.track("nick_set", { nick: "Ace\u{1f3b2}".slice(0, 4) });
  });
  await drained(b);
  out.b = {
    errors: await b.evaluate(() => window.errors.map((e) => [e.reason, e.status, e.records])),
    refusedByBrowser: await b.evaluate(() => window.refusedByBrowser),
  };
  await b.close({ runBeforeUnload: true });

  // c: closed with a batch still queued.
  const c = await open("c", { batchSize: 100, flushInterval: 60000, heartbeatInterval: 0 });
  // session_start goes first (it would wait for flushInterval).
  await c.evaluate(() => Croupier.flush());
  await drained(c);
  await c.evaluate(() => {
    for (let i = 0; i < 7; i++) Croupier.track("level_fail", { level: i });
  });
  out.c = { queuedAtClose: await c.evaluate(() => window.client.queue.length) };
  await c.close({ runBeforeUnload: true });
  // The beacons leave after the page: give them time before the browser goes.
  await sleep(1000);
  await ctx.close();
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(out));
