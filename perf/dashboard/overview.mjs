// The Overview page's weight and first render in headless Chromium (perf/dashboard/overview.sh
// starts the servers and fills the events table). Prints one JSON line.
//
// Environment: BASE (control port URL), TOKEN, GAME, RUNS (default 5).
// - bytes: what the network transferred for a cold load (HTML, script, style sheet, API
//   answers: CDP's encodedDataLength, headers included) and for a warm one (assets cached);
// - first render: navigation start to every block of the page showing its figures (the
//   page's `data-state` ready), and to the first contentful paint;
// - ceiling: the Overview API answer alone, fetched by this script (the page cannot show
//   its figures sooner).
const pw = await import(new URL('../../dashboard/node_modules/playwright-core/index.mjs', import.meta.url));
const { BASE, TOKEN, GAME } = process.env;
const RUNS = Number(process.env.RUNS ?? 5);
const today = new Date();
const ymd = (d) => d.toISOString().slice(0, 10);
const query = `?game_id=${GAME}&env=prod&start=${ymd(new Date(today - 6 * 864e5))}&end=${ymd(today)}`;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await pw.chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
const out = { runs: RUNS, cold_bytes: [], warm_bytes: [], render_ms: [], fcp_ms: [], api_ms: [] };
try {
  for (let i = 0; i < RUNS; i++) {
    // The API alone (the ceiling), then the page, cold then warm.
    const t0 = performance.now();
    const r = await fetch(`${BASE}/api/analytics/overview${query}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    if (!r.ok) throw new Error(`overview API ${r.status}: ${await r.text()}`);
    await r.arrayBuffer();
    out.api_ms.push(performance.now() - t0);

    const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    await context.addInitScript((t) => sessionStorage.setItem('croupier.token', t), TOKEN);
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    let bytes = 0;
    cdp.on('Network.loadingFinished', (e) => (bytes += e.encodedDataLength));
    for (const key of ['cold_bytes', 'warm_bytes']) {
      bytes = 0;
      await page.goto(`${BASE}/overview${query}`);
      await page.waitForFunction(() => {
        const cards = [...document.querySelectorAll('section.card')];
        if (cards.length === 0 || cards.some((c) => c.dataset.state === 'loading')) return false;
        if (cards.some((c) => c.dataset.state !== 'ready')) throw new Error('a block failed: ' + document.body.innerText);
        window.__rendered ??= performance.now();
        return true;
      }, null, { polling: 'raf', timeout: 600000 });
      await page.waitForLoadState('networkidle');
      out[key].push(bytes);
      if (key === 'cold_bytes') {
        const m = await page.evaluate(() => ({ render: window.__rendered, fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null }));
        out.render_ms.push(m.render);
        out.fcp_ms.push(m.fcp);
      }
    }
    await context.close();
  }
} finally {
  await browser.close();
}
const summary = {
  rows: Number(process.env.ROWS ?? 0),
  cold_bytes: median(out.cold_bytes),
  warm_bytes: median(out.warm_bytes),
  render_ms: Math.round(median(out.render_ms)),
  fcp_ms: Math.round(median(out.fcp_ms)),
  api_ms: Math.round(median(out.api_ms)),
};
summary.render_over_api = Number((summary.render_ms / summary.api_ms).toFixed(2));
console.log(JSON.stringify({ summary, all: out }));
