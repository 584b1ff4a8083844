// Browser test of the dashboard (run by tests/it/dashboard.rs against a running
// `croupier run` with a generated history): in Debian's headless Chromium, logs in with
// the token, opens every page, compares every figure it shows (`data-key` inside a
// `data-src` section) with the API's own answer at that URL, and the Operations figures
// (`data-metric`) with a scrape of /metrics; no console errors; a screenshot per page.
// Last, the Realtime page: the test process sends events when this script prints
// `TRAFFIC start`, and the online figure must change.
//
// Environment: BASE (http://host:port of the control listener), TOKEN, GAME, ENV, START,
// END (YYYY-MM-DD), SHOTS (directory for screenshots), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const { BASE, TOKEN, GAME, ENV, START, END, SHOTS } = process.env;
if (!BASE || !TOKEN || !SHOTS) {
  console.error('BASE, TOKEN and SHOTS are required');
  process.exit(2);
}
mkdirSync(SHOTS, { recursive: true });
const query = `?game_id=${encodeURIComponent(GAME ?? '')}&env=${encodeURIComponent(ENV ?? '')}&start=${START}&end=${END}`;
const PAGES = ['overview', 'retention', 'behavior', 'payments', 'levels', 'ltv', 'attribution', 'operations', 'realtime'];

const failures = [];
const fail = (msg) => {
  failures.push(msg);
  console.log(`FAIL ${msg}`);
};

/** Every time chart's axis spans its data, give or take a day (a single point once got an axis of years). */
async function checkAxes(page, name) {
  const axes = await page.$$eval('.chart', (els) =>
    els.map((el) => {
      const p = el.plot;
      const xs = (p?.data?.[0] ?? []).filter((x) => x !== null);
      return { n: xs.length, first: Math.min(...xs), last: Math.max(...xs), min: p?.scales?.x?.min, max: p?.scales?.x?.max };
    }),
  );
  let points = 0;
  for (const a of axes) {
    if (a.n === 0) continue;
    points += a.n;
    if (!(a.min >= a.first - 86400 && a.max <= a.last + 86400)) fail(`${name}: a chart of ${a.n} point(s) from ${a.first} to ${a.last} has an axis from ${a.min} to ${a.max}`);
  }
  return { charts: axes.length, points };
}

async function api(src) {
  const r = await fetch(BASE + src, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!r.ok) throw new Error(`${src}: ${r.status} ${await r.text()}`);
  return r.json();
}

function at(obj, key) {
  let v = obj;
  for (const p of key.split('.')) {
    if (v === null || v === undefined) return undefined;
    v = v[p];
  }
  return v;
}

/** What the page must show for a value: `—` for null, toFixed(dec) of value × scale, or the text. */
function expected(v, scale, dec) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number') return (v * scale).toFixed(dec);
  return String(v);
}

function shownAs(text) {
  return /^-?[\d,]+(\.\d+)?$/.test(text) ? text.replace(/,/g, '') : text;
}

/** The figures on the page, by section. */
function figures(page) {
  return page.$$eval('[data-src]', (sections) =>
    sections.map((s) => ({
      src: s.dataset.src,
      figs: [...s.querySelectorAll('[data-key]')].map((e) => ({
        key: e.dataset.key,
        scale: Number(e.dataset.scale ?? 1),
        dec: Number(e.dataset.dec ?? 0),
        text: e.textContent.trim(),
      })),
    })),
  );
}

/** Compares every figure with the API; returns [compared, mismatches]. */
async function compareApi(page) {
  let compared = 0;
  const bad = [];
  for (const { src, figs } of await figures(page)) {
    if (!src.startsWith('/api/') || figs.length === 0) continue;
    const answer = await api(src);
    for (const f of figs) {
      const want = expected(at(answer, f.key), f.scale, f.dec);
      compared += 1;
      if (shownAs(f.text) !== want) bad.push(`${src} ${f.key}: shown ${f.text}, API ${want}`);
    }
  }
  return [compared, bad];
}

function family(text, name, label) {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    if (label) {
      const [k, v] = label.split('=');
      if (!(m[2] ?? '').includes(`${k}="${v}"`)) continue;
    }
    total += Number(m[3]);
  }
  return total;
}

/** Compares the Operations figures with a scrape of /metrics. */
async function compareMetrics(page) {
  const figs = await page.$$eval('[data-metric]', (els) => els.map((e) => ({ metric: e.dataset.metric, label: e.dataset.label, text: e.textContent.trim() })));
  const text = await (await fetch(BASE + '/metrics')).text();
  const bad = [];
  for (const f of figs) {
    const want = family(text, f.metric, f.label).toFixed(0);
    if (shownAs(f.text) !== want) bad.push(`${f.metric}${f.label ? `{${f.label}}` : ''}: shown ${f.text}, /metrics ${want}`);
  }
  return [figs.length, bad];
}

const settled = () =>
  [...document.querySelectorAll('section.card')].length > 0 &&
  [...document.querySelectorAll('section.card')].every((s) => s.dataset.state !== 'loading');

const started = Date.now();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  let errors = [];
  page.on('console', (m) => m.type() === 'error' && errors.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => r.failure()?.errorText !== 'net::ERR_ABORTED' && errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

  // Not logged in: any page shows the login form; the token logs in and returns there.
  await page.goto(`${BASE}/overview${query}`);
  await page.waitForSelector('#token');
  if (!page.url().includes('/login')) fail(`not sent to the login page: ${page.url()}`);
  await page.fill('#token', TOKEN);
  await page.click('#login');
  await page.waitForURL(/\/overview\?/);

  // One day: the overview's daily series have a point each.
  {
    await page.goto(`${BASE}/overview?game_id=${encodeURIComponent(GAME ?? '')}&env=${encodeURIComponent(ENV ?? '')}&start=${END}&end=${END}`);
    await page.waitForFunction(settled, null, { timeout: 15000 });
    const { charts, points } = await checkAxes(page, 'overview of one day');
    if (charts === 0 || points !== charts) fail(`overview of one day: ${charts} charts, ${points} points`);
    console.log(`overview of one day: ${charts} charts of one point, axes within a day of it`);
  }
  for (const name of PAGES) {
    errors = [];
    const t0 = Date.now();
    await page.goto(`${BASE}/${name}${query}`);
    await page.waitForFunction(settled, null, { timeout: 15000 });
    const states = await page.$$eval('section.card', (s) => s.map((e) => `${e.querySelector('h2')?.textContent}: ${e.dataset.state} ${e.dataset.state === 'error' ? e.textContent : ''}`));
    for (const s of states) if (!s.includes(': ready')) fail(`${name}: section ${s}`);
    // Figures: compared with the API (a realtime figure may move with the minute: read again).
    let compared = 0;
    let bad = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      [compared, bad] = name === 'operations' ? await compareMetrics(page) : await compareApi(page);
      if (bad.length === 0) break;
      await page.waitForTimeout(1000);
      await page.waitForFunction(settled, null, { timeout: 15000 });
    }
    if (compared === 0) fail(`${name}: no figure compared`);
    for (const b of bad) fail(`${name}: ${b}`);
    await checkAxes(page, name);
    const shot = join(SHOTS, `${name}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    for (const e of errors) fail(`${name}: ${e}`);
    console.log(`page ${name}: ${compared} figures equal to the ${name === 'operations' ? '/metrics scrape' : 'API'}, ${Date.now() - t0} ms, screenshot ${shot}`);
  }

  // Realtime (the last page opened): the online figure changes while traffic flows.
  const online = () => page.$eval('[data-key="online"]', (e) => e.textContent.trim());
  const before = await online();
  console.log('TRAFFIC start');
  const deadline = Date.now() + 20000;
  let after = before;
  while (after === before && Date.now() < deadline) {
    await page.waitForTimeout(500);
    after = await online();
  }
  console.log('TRAFFIC stop');
  if (after === before) fail(`realtime: online stayed ${before} for 20 s of traffic`);
  else console.log(`realtime: online ${before} -> ${after} while traffic flowed`);
  await page.screenshot({ path: join(SHOTS, 'realtime-live.png'), fullPage: true });
  for (const e of errors) fail(`realtime (live): ${e}`);

  // An answer the API refuses (400: a range that ends before it starts) is shown as the block's error.
  await page.goto(`${BASE}/retention?game_id=${GAME}&env=${ENV}&start=${END}&end=${START}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const shown = await page.$eval('section.card[data-state="error"]', (e) => e.textContent).catch(() => '');
  if (!shown.includes('400 invalid_parameter')) fail(`error state: expected the API's 400 in a block, got "${shown}"`);
  else console.log(`error state: ${shown.replace(/\s+/g, ' ').trim()}`);
  await page.screenshot({ path: join(SHOTS, 'error-state.png') });

  // A token the API refuses (401) sends the user back to the login page.
  await page.evaluate(() => sessionStorage.setItem('croupier.token', 'not-a-jwt'));
  await page.goto(`${BASE}/payments${query}`);
  await page.waitForURL(/\/login\?next=/, { timeout: 10000 }).catch(() => fail(`401: not sent to the login page (${page.url()})`));
  const kept = await page.evaluate(() => sessionStorage.getItem('croupier.token'));
  if (kept !== null) fail('401: the refused token was kept');
  console.log('401: back to the login page');
  // The login page says why the session ended.
  await page.waitForSelector('#token');
  const ended = await page.$eval('#login-error', (e) => e.textContent).catch(() => '');
  if (!ended.startsWith('The session ended (unauthorized')) fail(`401: the login page says "${ended}", not why the session ended`);
  else console.log(`401: the login page says "${ended}"`);
  // On the login page, a refused token is said there, and the page asked for is kept.
  const asked = page.url();
  await page.fill('#token', 'not-a-jwt');
  await page.click('#login');
  await page
    .waitForFunction(() => { const t = document.getElementById('login-error')?.textContent; return t && !t.startsWith('The session ended'); }, null, { timeout: 10000 })
    .catch(() => {});
  const said = await page.$eval('#login-error', (e) => e.textContent).catch(() => '');
  if (!said) fail('login with a refused token: no error shown');
  if (page.url() !== asked) fail(`login with a refused token: ${asked} became ${page.url()}`);
  await page.fill('#token', TOKEN);
  await page.click('#login');
  await page.waitForURL(/\/payments\?/, { timeout: 10000 }).catch(() => fail(`login after a refusal: not back on the page asked for (${page.url()})`));
  console.log(`login: a refused token says "${said}"; then back to ${page.url()}`);

  // A page left by a token whose session ran out, logged into with a token of other
  // games: back on that page, on the new token's game.
  await page.evaluate(() => sessionStorage.setItem('croupier.token', 'not-a-jwt'));
  await page.goto(`${BASE}/levels?game_id=elsewhere&env=${ENV}&start=${START}&end=${END}`);
  await page.waitForURL(/\/login\?next=/, { timeout: 10000 }).catch(() => fail(`401 on levels: ${page.url()}`));
  await page.waitForSelector('#token');
  await page.fill('#token', TOKEN);
  await page.click('#login');
  await page.waitForURL(/\/levels\?/, { timeout: 10000 }).catch(() => fail(`login back to levels: ${page.url()}`));
  const returned = new URL(page.url()).searchParams.get('game_id');
  if (returned !== GAME) fail(`back after a login with another token: game_id=${returned}, not the token's ${GAME}`);
  else console.log(`back after a login: levels of ${returned}`);

  // A block drawn from another block's read shows that read's error (the summary refused).
  await page.goto(`${BASE}/payments?game_id=${GAME}&env=${ENV}&start=${END}&end=${START}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const blocks = await page.$$eval('section.card', (s) => s.map((e) => [e.querySelector('h2')?.textContent, e.dataset.state, e.querySelector('.body')?.textContent?.trim()]));
  for (const [title, state, text] of blocks) {
    if (state !== 'error' || !text) fail(`payments with a refused range: ${title} is ${state} "${text}"`);
  }
  console.log(`payments with a refused range: ${blocks.length} blocks show the API's error`);

  // Realtime without a game (an admin token names none): says to choose one, reads nothing.
  await page.goto(`${BASE}/realtime?game_id=&env=${ENV}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const noGame = await page.$$eval('section.card', (s) => s.map((e) => `${e.dataset.state} ${e.textContent}`));
  if (!noGame.every((t) => t.startsWith('ready') && t.includes('Choose a game'))) fail(`realtime without a game: ${noGame}`);
  else console.log('realtime without a game: asks for one');
  await page.goto(`${BASE}/realtime?game_id=${GAME}&env=`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const noEnv = await page.$$eval('section.card', (s) => s.map((e) => `${e.dataset.state} ${e.textContent}`));
  if (!noEnv.every((t) => t.startsWith('ready') && t.includes('Choose an environment'))) fail(`realtime without an env: ${noEnv}`);

  // The user named in the token, decoded as UTF-8 (the test's token says "dash-José").
  const user = await page.$eval('nav .user', (e) => e.textContent).catch(() => '');
  if (!user.includes('dash-José')) fail(`the token's sub shown as "${user}"`);
  // An environment other than the usual three is shown and kept: a change of the range
  // stays on it.
  await page.goto(`${BASE}/overview?game_id=${GAME}&env=live&start=${START}&end=${END}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  if ((await page.$eval('#env', (e) => e.value)) !== 'live') fail(`env=live shown as "${await page.$eval('#env', (e) => e.value)}"`);
  await page.fill('#start', END);
  await page.dispatchEvent('#start', 'change');
  await page.waitForURL(/start=/, { timeout: 10000 });
  if (new URL(page.url()).searchParams.get('env') !== 'live') fail(`a change of the range left env=live: ${page.url()}`);
  else console.log('env=live: shown and kept');
  // A link whose dates are none: passed over (the date inputs could not show them, and
  // every block would be 400 with nothing to see why), and not kept for the next page.
  await page.goto(`${BASE}/overview?game_id=${GAME}&env=${ENV}&start=garbage&end=2026-13-45`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const badDates = await page.$$eval('section.card', (s) => s.map((e) => `${e.dataset.state} ${e.textContent}`));
  if (!badDates.every((t) => t.startsWith('ready'))) fail(`a link with bad dates: ${badDates}`);
  const shownStart = await page.$eval('#start', (e) => e.value);
  if (!/^\d{4}-\d{2}-\d{2}$/.test(shownStart)) fail(`a link with bad dates shows start "${shownStart}"`);
  if (new URL(page.url()).searchParams.get('start') !== shownStart) fail(`a link with bad dates kept in the address: ${page.url()}`);
  // The address's other parameters stay (a funnel's steps).
  await page.goto(`${BASE}/behavior?game_id=${GAME}&env=${ENV}&start=garbage&end=${END}&steps=register,login`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const stepsKept = new URL(page.url()).searchParams;
  if (stepsKept.get('steps') !== 'register,login' || stepsKept.get('start') === 'garbage') fail(`a link with a bad date and steps: ${page.url()}`);
  await page.goto(`${BASE}/levels?game_id=${GAME}&env=${ENV}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const nextPage = await page.$$eval('section.card', (s) => s.map((e) => `${e.dataset.state} ${e.textContent}`));
  if (!nextPage.every((t) => t.startsWith('ready'))) fail(`after a link with bad dates, levels: ${nextPage}`);
  else console.log(`a link with bad dates: passed over (start ${shownStart}), the next page reads`);
  // Log out forgets the game and range chosen; the next token starts from its own games.
  await page.goto(`${BASE}/overview?game_id=elsewhere&env=${ENV}&start=${START}&end=${END}`);
  await page.click('#logout');
  await page.waitForURL(/\/login/, { timeout: 10000 });
  if ((await page.evaluate(() => sessionStorage.getItem('croupier.scope'))) !== null) fail('log out kept the scope');
  await page.fill('#token', TOKEN);
  await page.click('#login');
  await page.waitForURL(/\/realtime/, { timeout: 10000 }).catch(() => fail(`log in again: ${page.url()}`));
  const game = await page.$eval('#game', (e) => e.value).catch(() => '');
  if (game !== GAME) fail(`after log out and in, the game is "${game}", not the token's ${GAME}`);
  else console.log(`log out and in: the token's game ${GAME}`);

  // A read answered `503 busy` (a passing peak) is read again after its Retry-After: the
  // block shows the figures; one busy every time shows the refusal after two retries.
  const isRetention = (url) => new URL(url).pathname === '/api/analytics/retention';
  const busyBody = JSON.stringify({ error: 'busy', message: 'too many queries in flight' });
  let asks = 0;
  await page.route(isRetention, (route) => {
    asks++;
    if (asks === 1) route.fulfill({ status: 503, headers: { 'Retry-After': '1', 'Content-Type': 'application/json' }, body: busyBody });
    else route.continue();
  });
  await page.goto(`${BASE}/retention${query}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const retried = await page.$$eval('section.card', (s) => s.map((e) => e.dataset.state));
  if (asks !== 2 || !retried.every((st) => st === 'ready')) fail(`a busy read: asked ${asks} times, blocks ${retried}`);
  await page.unroute(isRetention);
  asks = 0;
  await page.route(isRetention, (route) => {
    asks++;
    route.fulfill({ status: 503, headers: { 'Retry-After': '1', 'Content-Type': 'application/json' }, body: busyBody });
  });
  await page.goto(`${BASE}/retention${query}`);
  await page.waitForFunction(settled, null, { timeout: 15000 });
  const refused = await page.$eval('section.card', (e) => e.textContent).catch(() => '');
  if (asks !== 3 || !refused.includes('503 busy')) fail(`always busy: asked ${asks} times, "${refused}"`);
  else console.log(`a busy read: read again after Retry-After; always busy: "503 busy" after ${asks} reads`);
  await page.unroute(isRetention);

  // A realtime read no one answers (a proxy holding it) fails after 30 s as `timeout`, and
  // the next refresh reads again (the build before waited for ever: the live view froze).
  // The page's clock is Playwright's, run forward; the read is held by the browser.
  const isNow = (url) => new URL(url).pathname === '/api/analytics/realtime';
  let held = 0;
  await page.clock.install();
  await page.route(isNow, () => {
    held++;
  });
  await page.goto(`${BASE}/realtime?game_id=${GAME}&env=${ENV}`);
  for (let i = 0; i < 100 && held === 0; i++) await page.waitForTimeout(100);
  const nowCard = () => page.$eval('section.card[data-src^="/api/analytics/realtime?"]', (e) => `${e.dataset.state} ${e.textContent}`).catch(() => '');
  await page.clock.runFor(29_000);
  const waiting = await nowCard();
  if (held !== 1 || !waiting.startsWith('loading')) fail(`held realtime read: ${held} held, after 29 s "${waiting}"`);
  await page.clock.runFor(2_000);
  let timedOut = '';
  // (The card shows the error; a refresh may already be reading again, `loading`.)
  for (let i = 0; i < 50 && !timedOut.includes('timeout'); i++) {
    await page.waitForTimeout(100);
    timedOut = await nowCard();
  }
  if (!timedOut.includes('timeout: no answer within 30 s')) fail(`held realtime read after 31 s: "${timedOut}"`);
  await page.unroute(isNow);
  let back = '';
  for (let i = 0; i < 50 && !back.startsWith('ready'); i++) {
    await page.clock.runFor(1_000);
    await page.waitForTimeout(100);
    back = await nowCard();
  }
  if (!back.startsWith('ready') || !back.includes('Online now')) fail(`after the held read: "${back}"`);
  else console.log(`held realtime read: "${timedOut.replace(/^\S+ Now/, '')}" after 30 s, then read again`);

  // Redis stopped (the test process stops it on `REDIS stop`): the Operations page names
  // it among the components not ready and shows no backlog (its gauges are gone), not 0.
  {
    console.log('REDIS stop');
    const downNow = /croupier_component_ready\{[^}]*component="redis"[^}]*\} 0/;
    let scrape = '';
    for (let i = 0; i < 100 && !downNow.test(scrape); i++) {
      await new Promise((r) => setTimeout(r, 200));
      scrape = await (await fetch(BASE + '/metrics')).text();
    }
    // A context of its own: the one above runs on an installed clock.
    const fresh = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    const ops = await fresh.newPage();
    await ops.goto(`${BASE}/operations${query}`);
    await ops.waitForSelector('#token');
    await ops.fill('#token', TOKEN);
    await ops.click('#login');
    await ops.waitForURL(/\/operations\?/);
    await ops.waitForFunction(settled, null, { timeout: 15000 });
    const kpis = Object.fromEntries(
      await ops.$$eval('.kpi', (els) => els.map((e) => [e.querySelector('.label')?.textContent, e.querySelector('.value')?.textContent?.trim()])),
    );
    if (!downNow.test(scrape)) fail('redis never reported not ready after it stopped');
    else if (kpis.Backlog !== '— events' || !String(kpis.Dependencies).includes('redis')) fail(`operations with Redis stopped: ${JSON.stringify(kpis)}`);
    else console.log(`operations with Redis stopped: dependencies "${kpis.Dependencies}", backlog "${kpis.Backlog}"`);
    await fresh.close();
  }
} finally {
  await browser.close();
}
console.log(`${PAGES.length} pages in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${SHOTS}`);
if (failures.length) {
  console.log(`${failures.length} failures`);
  process.exit(1);
}
