// The browser tracker (GET /tracker.js) and the React package in a real
// browser (Debian's Chromium, driven by playwright-core), against the real
// server and default pipeline that host/tests/all/tracker.rs starts.
//
// The pages are served by this script from their own origin; they reach
// the server through a proxy of this script's, which records what each
// request carried and how it was answered (the reference for what the
// server should count), and can drop an answer or play a server that is
// down. The Rust side stops the server when this prints `stop` (answering
// `stopped`) and starts it on a new port on `start` (answering `started <port>`).
//
// Every page runs with navigator.webdriver set (automation): the tracker
// must not drop events for it.
//
// Env: UPSTREAM (the server's port), PAGE_PORT (this origin, the one the
// server's cors_origins allows), APP (the React test app's bundle).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { createServer, request } from 'node:http';
import { readFileSync } from 'node:fs';

const env = process.env;
let upstream = Number(env.UPSTREAM);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const log = (...a) => console.error('[tracker test]', ...a);
const fail = (what) => {
  throw new Error(what);
};
const eq = (got, want, what) => {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) fail(what + ': got ' + g + ', want ' + w);
};

// ---- the proxy: forwards to the server, records /v1/events traffic ----
const copies = new Map(); // event_id -> the event and how many copies the server took
const refused = []; // requests answered neither 202 nor reached the server
let dropNext = false; // drop the answer of the next events request
let busyNext = false; // answer the next events request 429 itself, Retry-After: 1
let busyAnswers = 0;
const proxy = createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const events = req.url.startsWith('/v1/events') && req.method === 'POST';
    if (events && busyNext) {
      busyNext = false;
      busyAnswers++;
      res.writeHead(429, { 'Retry-After': '1', 'Access-Control-Allow-Origin': req.headers.origin,
        'Access-Control-Expose-Headers': 'retry-after' });
      return res.end('{"error":"busy"}');
    }
    const up = request(
      { host: '127.0.0.1', port: upstream, path: req.url, method: req.method, headers: req.headers },
      (r) => {
        const back = [];
        r.on('data', (c) => back.push(c));
        r.on('end', () => {
          if (events) {
            if (r.statusCode === 202) {
              for (const e of JSON.parse(body)) {
                const c = copies.get(e.event_id);
                copies.set(e.event_id, { e, n: (c ? c.n : 0) + 1 });
              }
            } else refused.push(r.statusCode);
            if (dropNext) {
              // The server took the batch; its answer is lost on the way.
              dropNext = false;
              log('dropping an answer', r.statusCode);
              return req.socket.destroy();
            }
          }
          res.writeHead(r.statusCode, r.headers);
          res.end(Buffer.concat(back));
        });
      },
    );
    // The server is down: the browser sees a network error.
    up.on('error', () => req.socket.destroy());
    up.end(body);
  });
});
await new Promise((ok) => proxy.listen(0, '127.0.0.1', ok));
const PROXY = 'http://127.0.0.1:' + proxy.address().port;

// ---- the site: a plain page with the snippet, a DNT page, the React app ----
const SNIPPET = (attrs) => `<!doctype html><html><head><title>Shop</title>
<script defer src="${PROXY}/tracker.js" ${attrs}></script>
<script>window.nexuspipe=window.nexuspipe||function(){(nexuspipe.q=nexuspipe.q||[]).push(arguments)}</script>
<script>nexuspipe('track', 'early', {from: 'queue'})</script>
</head><body>
<button id="add" onclick="nexuspipe('track', 'add_to_cart', {product_id: 'p1', amount: 12.5})">Add</button>
<button id="login" onclick="nexuspipe('identify', 'user-42')">Log in</button>
<form><input id="email" name="email"></form>
</body></html>`;
const site = createServer((req, res) => {
  const path = req.url.split('?')[0];
  const send = (type, body) => {
    res.writeHead(200, { 'Content-Type': type });
    res.end(body);
  };
  if (path === '/shop.html') return send('text/html', SNIPPET('data-site="site123"'));
  if (path === '/dnt.html') return send('text/html', SNIPPET('data-site="dnt-site" data-respect-dnt'));
  if (path === '/app.js') return send('text/javascript', readFileSync(env.APP));
  if (path === '/favicon.ico') return send('image/x-icon', '');
  if (path.startsWith('/react')) {
    return send(
      'text/html',
      `<!doctype html><title>React shop</title><div id="root"></div>
<script>window.NEXUSPIPE = ${JSON.stringify(PROXY)}</script><script src="/app.js"></script>`,
    );
  }
  res.writeHead(404);
  res.end();
});
await new Promise((ok) => site.listen(Number(env.PAGE_PORT), '127.0.0.1', ok));
const SITE = 'http://127.0.0.1:' + env.PAGE_PORT;

// ---- helpers ----
async function until(what, within, cond) {
  const end = Date.now() + within;
  while (!(await cond())) {
    if (Date.now() > end) fail(what + ' (not within ' + within + ' ms)');
    await new Promise((ok) => setTimeout(ok, 50));
  }
}
const arrived = (pred) => [...copies.values()].filter((c) => pred(c.e)).map((c) => c.e);
const isView = (e) => e.event_type === 'page_view';
const waitFor = (what, pred, n) =>
  until(what + ': ' + n + ' events', 15000, () => arrived(pred).length >= n)
    .catch((e) => fail(e.message + ', ' + arrived(pred).length + ' came; refused: ' + refused))
    .then(() => arrived(pred));
async function metric(name) {
  const text = await (await fetch(`http://127.0.0.1:${upstream}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  if (!line) fail('no metric ' + name);
  return Number(line.split(' ')[1]);
}
// Counters of the server's earlier runs (they restart at zero).
const earlier = { nexuspipe_events_processed_total: 0, nexuspipe_events_duplicate_total: 0 };
const total = async (name) => earlier[name] + (await metric(name));
// Duplicates the server should have dropped: copies beyond the first.
const extraCopies = () => [...copies.values()].reduce((s, c) => s + c.n - 1, 0);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const errors = [];
const warnings = [];
let quiet = null; // console errors a scenario provokes on purpose
async function open(context, url) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'warning') warnings.push(m.text());
    if (m.type() === 'error' && !(quiet && quiet.test(m.text()))) errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  return page;
}
// A new browser (its own localStorage) on the shop page, once its page view arrived.
async function shopVisit() {
  const ctx = await browser.newContext();
  const views = arrived(isView).length;
  const page = await open(ctx, SITE + '/shop.html');
  await waitFor('the page view', isView, views + 1);
  return { ctx, page };
}
// `e` taken by the server a second time, and that copy dropped as a duplicate.
// The request sent again may hold other events queued with `e`: each copy
// the server took again is one duplicate dropped.
async function copyDropped(e, [dupsBefore, extraBefore]) {
  await until('the copy sent again', 15000, () => copies.get(e.event_id).n === 2);
  await settled();
  const dups = await metric('nexuspipe_events_duplicate_total');
  const want = dupsBefore + extraCopies() - extraBefore;
  if (dups !== want) fail('duplicates dropped: ' + dups + ', want ' + want);
}
// The duplicate counter and the copies taken again so far.
const dupsNow = async () => [await metric('nexuspipe_events_duplicate_total'), extraCopies()];
// Until the engine has processed what it accepted (so its counters stand).
const settled = () => until('every accepted event processed', 15000, async () =>
  (await metric('nexuspipe_events_processed_total')) >= (await metric('nexuspipe_events_accepted_total')));
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// ---- 1. a page load, the queued call, a click, identify, SPA navigation ----
{
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'de-DE' });
  const page = await open(ctx, SITE + '/shop.html?utm_source=test');
  const mine = (e) => e.properties.site_id === 'site123';
  await waitFor('the queued call and the page view', mine, 2);
  await page.click('#add');
  await waitFor('the click', mine, 3);
  await page.fill('#email', 'someone@example.com'); // form contents are never sent
  await page.click('#login');
  await page.evaluate(() => history.pushState({}, '', '/products/p1'));
  await page.evaluate(() => history.replaceState({ step: 2 }, '', '/products/p1')); // same address: no page view
  await page.evaluate(() => (location.hash = '#reviews')); // a #hash is no page view either
  await page.evaluate(() => history.back());
  await page.evaluate(() => history.back());
  const got = await waitFor('two SPA page views', mine, 5);
  got.sort((a, b) => a.timestamp - b.timestamp);
  eq(
    got.map((e) => [e.event_type, e.properties.path || null]),
    [['early', null], ['page_view', '/shop.html'], ['add_to_cart', null], ['page_view', '/products/p1'],
      ['page_view', '/shop.html']],
    'events of the page, in order',
  );
  const [early, view, cart, spa, back] = got;
  eq(early.properties.from, 'queue', 'the call made before the script loaded');
  eq(cart.properties.product_id + ' ' + cart.properties.amount, 'p1 12.5', 'track properties');
  eq(view.metadata, { url: SITE + '/shop.html?utm_source=test', platform: 'web' }, 'page view metadata');
  eq([view.properties.title, view.properties.screen, view.properties.language], ['Shop', '1280x800', 'de-DE'],
    'title, screen size and language');
  eq(spa.metadata.url, SITE + '/products/p1', 'the SPA page view address');
  eq(spa.metadata.referrer, SITE + '/shop.html?utm_source=test', 'the SPA referrer: the page before');
  eq(back.metadata.referrer, SITE + '/products/p1', 'popstate page view referrer');
  for (const e of got) {
    if (!UUID4.test(e.event_id)) fail('event_id is not a UUID: ' + e.event_id);
    if (e.session_id !== early.session_id) fail('one session for the visit');
    if (!UUID4.test(e.properties.anonymous_id)) fail('anonymous id: ' + JSON.stringify(e));
  }
  eq(spa.user_id, 'user-42', 'identify sets user_id on what follows');
  eq(early.user_id, early.properties.anonymous_id, 'before identify: the anonymous id');
  if (JSON.stringify(got).includes('someone@')) fail('form contents were sent');
  const stored = await page.evaluate(() => Object.keys(localStorage).sort());
  eq(stored.filter((k) => !k.startsWith('nexuspipe_q.')), ['nexuspipe_aid', 'nexuspipe_last', 'nexuspipe_sid',
    'nexuspipe_uid'], 'what the tracker keeps (no cookies)');
  eq(await page.evaluate(() => document.cookie), '', 'no cookies');
  log('page, track, identify and SPA navigation:', got.length, 'events');
  await ctx.close();
}

// ---- 2. closed right after a track: the event goes with the page; the next visit's copy is dropped ----
{
  const { ctx, page } = await shopVisit();
  await settled();
  const dupsBefore = await dupsNow();
  await page.evaluate(() => nexuspipe('track', 'last_click'));
  await page.close({ runBeforeUnload: true });
  const [last] = await waitFor('the event of the closed page', (e) => e.event_type === 'last_click', 1);
  // Whether that request's answer came back is unknown to the closed page,
  // so the event stayed queued: the next page sends it again, and the
  // server acknowledges the copy without counting it.
  await open(ctx, SITE + '/shop.html');
  await copyDropped(last, dupsBefore);
  log('beacon on close: delivered, its copy dropped');
  await ctx.close();
}

// ---- 3. the server is down while the page tracks and closes; the next visit delivers ----
{
  const { ctx, page } = await shopVisit();
  await until('the server processed what it took', 15000, async () =>
    (await metric('nexuspipe_events_processed_total')) === (await metric('nexuspipe_events_accepted_total')));
  for (const name of Object.keys(earlier)) earlier[name] += await metric(name);
  console.log('stop');
  eq((await lines.next()).value, 'stopped', 'the server stopped');
  quiet = /ERR_CONNECTION|Failed to load resource|net::/;
  // 1 005 events: the queue keeps the newest 1 000.
  await page.evaluate(() => {
    for (let i = 1; i <= 1005; i++) nexuspipe('track', 'offline', { offline: i });
  });
  const kept = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('nexuspipe_q.'))
    .flatMap((k) => JSON.parse(localStorage[k])).map((e) => e.properties.offline));
  eq([kept.length, Math.min(...kept), Math.max(...kept)], [1000, 6, 1005], 'the queue in localStorage');
  await page.close({ runBeforeUnload: true });
  console.log('start');
  const started = (await lines.next()).value;
  if (!started.startsWith('started ')) fail('the server did not start: ' + started);
  upstream = Number(started.split(' ')[1]);
  quiet = null;
  await open(ctx, SITE + '/shop.html');
  // The new page's own first two events join that queue, so the oldest
  // one or two may go (never more, never a newer one); the rest arrive once.
  await waitFor('the events of the page closed offline', (e) => e.properties.offline >= 8, 998);
  const offline = arrived((e) => e.properties.offline);
  const numbers = offline.map((e) => e.properties.offline).sort((a, b) => a - b);
  if (numbers[0] < 6 || numbers[0] > 8 || numbers.some((n, i) => n !== numbers[0] + i) || numbers.at(-1) !== 1005) {
    fail('the offline events that arrived: ' + numbers[0] + '..' + numbers.at(-1) + ' (' + numbers.length + ')');
  }
  if (offline.some((e) => copies.get(e.event_id).n !== 1)) fail('an offline event taken twice');
  log('server down, page closed, next visit: delivered', offline.length);
  await ctx.close();
}

// ---- 4. the answer is lost after the server took the batch: the retry is counted once ----
{
  const { ctx, page } = await shopVisit();
  await settled();
  const dupsBefore = await dupsNow();
  quiet = /ERR_|Failed to load resource|net::/;
  dropNext = true;
  await page.evaluate(() => nexuspipe('track', 'answer_lost'));
  const [lost] = await waitFor('the batch whose answer is lost', (e) => e.event_type === 'answer_lost', 1);
  await copyDropped(lost, dupsBefore);
  // A 429 with Retry-After: sent again after it, once.
  busyNext = true;
  await page.evaluate(() => nexuspipe('track', 'rate_limited'));
  const [limited] = await waitFor('the batch after a 429', (e) => e.event_type === 'rate_limited', 1);
  eq([busyAnswers, copies.get(limited.event_id).n], [1, 1], '429 answers, copies taken');
  // A 400 is not retried: the reason goes to the console, the event off the queue.
  await page.evaluate(() => nexuspipe('track', ''));
  await until('the 400 reported on the console', 15000, () => warnings.some((w) => /^nexuspipe: 400 .*event_type/.test(w)));
  eq(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('nexuspipe_q.'))), [],
    'nothing left queued after the 400');
  quiet = null;
  log('answer lost: retried, counted once; 429: retried after Retry-After; 400: reported, not retried');
  await ctx.close();
}

// ---- 5. Do-Not-Track, Global Privacy Control, opted out: nothing sent ----
for (const [what, init] of [
  ['Do-Not-Track', () => Object.defineProperty(Navigator.prototype, 'doNotTrack', { get: () => '1' })],
  ['Global Privacy Control', () => Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true })],
  ['nexuspipe_ignore', () => localStorage.setItem('nexuspipe_ignore', 'true')],
]) {
  const ctx = await browser.newContext();
  await ctx.addInitScript(init);
  const url = SITE + (what === 'nexuspipe_ignore' ? '/shop.html?ignored' : '/dnt.html');
  const page = await open(ctx, url);
  await page.waitForFunction(() => typeof nexuspipe === 'function' && !nexuspipe.q);
  await page.click('#add');
  await page.evaluate(() => nexuspipe('flush'));
  const state = await page.evaluate(() => Object.keys(localStorage).filter((k) => k !== 'nexuspipe_ignore'));
  eq(state, [], what + ': nothing queued, no ids kept');
  await page.close({ runBeforeUnload: true });
  // A marker sent after the page is gone: when it has arrived, anything
  // the page sent before it would have too.
  const marker = { event_id: crypto.randomUUID(), event_type: 'marker', properties: { site_id: 'test' } };
  const r = await fetch(PROXY + '/v1/events', { method: 'POST', body: JSON.stringify([marker]) });
  eq(r.status, 202, 'the marker');
  const leaked = arrived((e) => e.properties.site_id === 'dnt-site' || (e.metadata && /ignored/.test(e.metadata.url)));
  eq(leaked, [], what + ': events sent');
  log(what + ': nothing sent');
  await ctx.close();
}

// ---- 6. the React package: React Router page views, useTrack, useIdentify (in StrictMode) ----
{
  const ctx = await browser.newContext();
  const page = await open(ctx, SITE + '/react');
  const mine = (e) => e.properties.site_id === 'react-shop';
  await waitFor('the first page view', mine, 1);
  await page.click('#p1');
  await page.click('#add');
  await page.click('#login');
  await page.click('#cart');
  const got = await waitFor('the app events', mine, 4);
  got.sort((a, b) => a.timestamp - b.timestamp);
  eq(got.map((e) => [e.event_type, e.properties.path || e.properties.product_id, e.user_id === 'user-42']),
    [['page_view', '/', false], ['page_view', '/products/p1', false], ['add_to_cart', 'p1', false],
      ['page_view', '/cart', true]], 'the React app events');
  eq(got[3].metadata.url, SITE + '/react/cart?step=1', 'the address of the routed page');
  log('React: page views on route change, track, identify');
  await ctx.close();
}

// ---- all of it, counted by the server once ----
// An event two minutes ahead moves event time past every window of the
// test, so the page_views windows close now rather than a minute later.
const sentinel = { event_id: crypto.randomUUID(), event_type: 'sentinel', timestamp: Date.now() + 120000,
  properties: { site_id: 'test' } };
eq((await fetch(PROXY + '/v1/events', { method: 'POST', body: JSON.stringify([sentinel]) })).status, 202,
  'the sentinel');
const unique = copies.size;
await until('the server processed every event once', 15000, async () =>
  (await total('nexuspipe_events_processed_total')) - (await total('nexuspipe_events_duplicate_total')) ===
    unique);
// Nothing sent twice as a new event (a page view mounted twice, say).
eq(arrived((e) => e.properties.site_id === 'react-shop').length, 4, 'React app events in all');
eq(arrived((e) => e.properties.from === 'queue').length, 6, 'queued calls: one per load of the shop page');
eq(refused, [400], 'requests the server refused: the one with an empty event_type');
eq(errors, [], 'errors in the pages');
// Page views by path, from what the browser sent, against the page_views
// metric: every window has closed (idle_timeout) once the store has them.
const want = {};
for (const e of arrived(isView)) {
  want[e.properties.path] = (want[e.properties.path] || 0) + 1;
}
const q = `http://127.0.0.1:${upstream}/v1/metrics?metric=page_views&field=count&group_by=path` +
  `&start_time=${Date.now() - 3600000}&end_time=${Date.now() + 3600000}&window=1d&agg=sum`;
let stored = {};
await until('the page_views metric', 15000, async () => {
  const r = await (await fetch(q)).json();
  stored = {};
  for (const s of r.series || []) stored[s.tags.path] = s.fields.count.reduce((a, b) => a + b, 0);
  return JSON.stringify(Object.entries(stored).sort()) === JSON.stringify(Object.entries(want).sort());
}).catch((e) => fail(e.message + ': page_views ' + JSON.stringify(stored) + ', sent ' + JSON.stringify(want)));
eq(await total('nexuspipe_events_duplicate_total'), extraCopies(), 'duplicates dropped: the copies sent again');
log('copies:', [...copies.values()].filter((c) => c.n > 1).map((c) => c.e.event_type + ' ' + (c.e.properties.path || '') + ' x' + c.n));
log('the server took', unique, 'events once each and dropped', extraCopies(), 'copies;', 'page views', want);
await browser.close();
proxy.close();
site.close();
process.exit(0);
