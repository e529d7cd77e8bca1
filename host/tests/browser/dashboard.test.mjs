// The dashboard in a real browser (Debian's Chromium, driven by
// playwright-core), against the real server and plugins that
// host/tests/all/dashboard.rs starts. Everything asserted is read from the
// page. The Rust side restarts the server when this script prints `restart`
// and answers `restarted` on stdin.
//
// Env: BASE (the server), ADMIN_TOKEN, BASE_READ + READ_TOKEN (a second
// server with a read token), SHOTS (where screenshots go), COUNTER and
// COUNTER_V2 (two versions of a test component), T0 (a minute of event time).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = process.env;
const BASE = env.BASE;
const T0 = Number(env.T0);
const MINUTE = 60000;
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

function log(...a) { console.error('[dashboard test]', ...a); }
function fail(what) { throw new Error(what); }

async function post(base, events) {
  const r = await fetch(base + '/v1/events', {
    method: 'POST', headers: { 'Content-Type': 'application/x-ndjson' },
    body: events.map((e) => JSON.stringify(e)).join('\n'),
  });
  if (r.status !== 202) fail('POST /v1/events: ' + r.status + ' ' + (await r.text()));
  return performance.now();
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const errors = [];
let restarting = false;
// Refusals the test provokes on purpose (the browser logs every 4xx answer).
let expected = null;
async function open(base, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('console', (m) => {
    // While the server is down on purpose, the browser itself logs the
    // refused connections; anything else is an error of the page.
    const t = m.text();
    if (m.type() !== 'error') return;
    if (restarting && /ERR_CONNECTION_REFUSED|WebSocket connection/.test(t)) return;
    if (expected && expected.test(t)) return;
    errors.push(t);
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + '/');
  return page;
}

// Waits for a condition read from the page; `within` in ms.
async function until(page, what, within, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: within, polling: 50 });
  } catch (e) {
    const shot = join(env.SHOTS, 'failed.png');
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    fail(what + ' (not within ' + within + ' ms; page in ' + shot + ')');
  }
}

mkdirSync(env.SHOTS, { recursive: true });
const page = await open(BASE, { width: 1280, height: 800 });
await until(page, 'the live stream connects', 10000, () => document.querySelector('#conn').textContent === 'live');

// Half an hour of shop traffic before T0, so every chart has windows (and
// the screenshots show something). No failed logins: the burst below must
// be the first of its IP.
const shop = [];
const paths = ['/', '/pricing', '/products/sku-1', '/products/sku-2', '/blog', '/checkout'];
for (let m = 30; m >= 1; m--) {
  for (let i = 0; i < 20 + (m % 7) * 3; i++) {
    const k = m * 100 + i;
    const type = ['page_view', 'page_view', 'page_view', 'product_view', 'add_to_cart', 'purchase'][k % 6];
    shop.push({
      event_id: 'shop-' + k, event_type: type, timestamp: T0 - m * MINUTE + i * 1000, user_id: 'user-' + (k % 23),
      properties: { path: paths[k % paths.length], product_id: 'sku-' + (k % 5), amount: 5 + (k % 40), currency: k % 3 ? 'EUR' : 'USD' },
      metadata: { ip_address: '81.2.69.' + (k % 200), user_agent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36' },
    });
  }
}
await post(BASE, shop);
await until(page, 'the shop traffic in the live table', 10000,
  (id) => document.querySelector(`#events tr[data-id="${id}"]`), shop[shop.length - 1].event_id);

// 1. Posted events appear in the live table within 1 s.
const counts = { page_view: 7, add_to_cart: 3, purchase: 2 };
const minute = [];
let n = 0;
for (const [type, c] of Object.entries(counts)) {
  for (let i = 0; i < c; i++) {
    minute.push({
      event_id: 'dash-' + n, event_type: type, timestamp: T0 + 1000 * n, user_id: 'u' + (n % 4),
      properties: { path: '/p/' + (n % 3), amount: 10, currency: 'EUR', product_id: 'sku-' + (n % 2) },
      metadata: { ip_address: '81.2.69.160', user_agent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148' },
    });
    n++;
  }
}
const sent = await post(BASE, minute);
await until(page, 'the posted events in the live table', 1000,
  (ids) => ids.every((id) => document.querySelector(`#events tr[data-id="${id}"]`)), minute.map((e) => e.event_id));
log('live table: ' + minute.length + ' events shown ' + Math.round(performance.now() - sent) + ' ms after the answer');
const row = await page.$eval('#events tr[data-id="dash-0"]', (tr) => [...tr.cells].map((c) => c.textContent));
if (row[1] !== 'page_view' || row[3] !== '/p/0' || row[4] !== 'GB' || row[5] !== 'mobile') fail('row of dash-0: ' + JSON.stringify(row));

// 2. The minute closes (an event past it moves the watermark): the events
//    chart shows the counts posted, per type.
await post(BASE, [{ event_id: 'dash-tick', event_type: 'tick', timestamp: T0 + MINUTE + 1 }]);
await until(page, 'the events chart shows the posted counts', 10000, ([t0, want]) => {
  const box = document.querySelector('.latest[data-chart="c-events"]');
  if (!box || Number(box.dataset.ts) !== t0) return false;
  return Object.entries(want).every(([k, v]) => Number(box.querySelector(`[data-key="${k}"]`)?.dataset.value) === v);
}, [T0, counts]);
log('events chart: the window of ' + new Date(T0).toISOString() + ' shows ' + JSON.stringify(counts));

// 3. A failed-login burst: the alert is in the firing list within 1 s.
const ip = '198.51.100.7';
const burst = (i) => ({ event_id: 'login-' + i, event_type: 'login_failed', timestamp: T0 + MINUTE + 100 + i, metadata: { ip_address: ip } });
await post(BASE, [0, 1, 2, 3, 4].map(burst));
const burstAt = await post(BASE, [burst(5)]);
await until(page, 'the failed-login alert in the firing list', 1000,
  (key) => document.querySelector(`#firing li[data-rule="failed_login_burst"][data-key="${key}"]`), ip);
log('alert: firing ' + Math.round(performance.now() - burstAt) + ' ms after the request');

// The admin token, entered once.
await page.fill('#admin-token', env.ADMIN_TOKEN);
await page.click('#tokens button');
await until(page, 'the admin controls', 5000, () => document.body.classList.contains('admin') && document.querySelector('#rule-plugin option'));
const stored = await page.evaluate(() => sessionStorage.getItem('nexuspipe.admin'));
if (stored !== env.ADMIN_TOKEN || page.url().includes(env.ADMIN_TOKEN)) fail('the admin token belongs in session storage, not the URL');
await until(page, 'live again after entering the token', 10000, () => document.querySelector('#conn').textContent === 'live');

// 4. A threshold rule added in the form fires on the events posted next.
const rule = page.locator('#rule-form');
await rule.locator('[name=id]').fill('many_clicks');
await rule.locator('[name=type]').selectOption('threshold');
await rule.locator('[name=key]').fill('user_id');
await rule.locator('[name=filter]').fill('button_click');
await rule.locator('[name=window]').fill('1 minute');
await rule.locator('[name=above]').fill('3');
await rule.locator('button[type=submit]').click();
await until(page, 'the page refuses a malformed window before sending', 2000,
  () => document.querySelector('#rule-form [name=window]').classList.contains('invalid'));
await rule.locator('[name=window]').fill('1m');
await rule.locator('button[type=submit]').click();
await until(page, 'the rule deployed', 15000, () => /added many_clicks/.test(document.querySelector('#rule-answer').textContent));
await until(page, 'the rule listed', 5000, () => document.querySelector('#rule-lists tr[data-rule="many_clicks"]'));
const clicks = [0, 1, 2, 3, 4].map((i) => ({ event_id: 'click-' + i, event_type: 'button_click', timestamp: T0 + MINUTE + 200 + i, user_id: 'clicker' }));
await post(BASE, clicks);
await until(page, 'the new rule fires', 5000, () => document.querySelector('#firing li[data-rule="many_clicks"][data-key="clicker"]'));
log('rules: many_clicks added in the form and fired');
// A storm of alerts (300 addresses bursting at once) keeps the page live:
// the firing list shows the newest 200 and counts the rest.
const storm = [];
for (let a = 0; a < 300; a++) {
  for (let i = 0; i < 6; i++) {
    storm.push({ event_id: `storm-${a}-${i}`, event_type: 'login_failed', timestamp: T0 + MINUTE + 300 + a,
      metadata: { ip_address: a < 250 ? `203.0.113.${a}` : `198.18.0.${a - 250}` } });
  }
}
const stormAt = await post(BASE, storm);
await until(page, 'the alert storm: 200 shown, the rest counted', 3000, () => {
  const shown = document.querySelectorAll('#firing li[data-rule]').length;
  const more = /and (\d+) more firing/.exec(document.querySelector('#firing').textContent);
  return shown === 200 && more && shown + Number(more[1]) >= 300
    && document.querySelector('#firing li[data-key="198.18.0.49"]') !== null;
});
log('alerts: a storm of 300 shown in ' + Math.round(performance.now() - stormAt) + ' ms');
// The plugin's own validation, shown beside the field it names.
expected = /status of 422/;
await rule.locator('[name=id]').fill('bad_window');
await rule.locator('[name=window]').fill('0s');
await rule.locator('button[type=submit]').click();
await until(page, "the plugin's refusal beside the field", 10000, () => {
  const l = document.querySelector('#rule-form [name=window]').closest('label');
  return /rules\[\d+\]\.window: must be positive/.test(l.textContent) && /refused the config/.test(document.querySelector('#rule-answer').textContent);
});

expected = null;

// 5. Uploads through the form: a new plugin, a new version of it (the
//    table shows it), and a junk file (the refusal in plain words).
async function upload(name, file) {
  await page.fill('#up-name', name);
  await page.setInputFiles('#up-file', file);
  await page.click('#upload button[type=submit]');
}
await upload('counter', env.COUNTER);
await until(page, 'the first version runs', 15000, () => /counter now runs/.test(document.querySelector('#plugin-answer').textContent));
await until(page, 'listed', 5000, () => document.querySelector('#plugin-table tr[data-plugin="counter"]'));
const v1 = await page.$eval('#plugin-table tr[data-plugin="counter"]', (tr) => tr.dataset.version);
await upload('counter', env.COUNTER_V2);
await until(page, 'the table shows the new version', 15000,
  (v) => { const tr = document.querySelector('#plugin-table tr[data-plugin="counter"]'); return tr && tr.dataset.version !== v && tr.querySelector('.version').textContent === tr.dataset.version.slice(0, 12); }, v1);
const junk = join(env.SHOTS, 'junk.wasm');
writeFileSync(junk, 'this is not wasm');
expected = /status of 415/;
await upload('junk', junk);
await until(page, 'the refusal of a junk upload', 10000,
  () => /not a WebAssembly component/.test(document.querySelector('#plugin-answer').textContent) && document.querySelector('#plugin-answer').classList.contains('err'));
expected = null;
log('uploads: new version listed, junk refused');

await page.evaluate(() => window.scrollTo(0, 0));
await page.screenshot({ path: join(env.SHOTS, 'dashboard-desktop.png'), fullPage: false });

// 6. The server restarts: the page reconnects its WebSocket by itself.
restarting = true;
const connects = await page.$eval('#conn', (e) => Number(e.dataset.connects));
console.log('restart');
const answer = await lines.next();
if (answer.value !== 'restarted') fail('the test harness did not restart the server: ' + answer.value);
await until(page, 'the page reconnected after the restart', 15000,
  (c) => document.querySelector('#conn').textContent === 'live' && Number(document.querySelector('#conn').dataset.connects) > c, connects);
restarting = false;
await post(BASE, [{ event_id: 'after-restart', event_type: 'page_view', timestamp: T0 + MINUTE + 300, properties: { path: '/back' } }]);
await until(page, 'events flow again after the restart', 15000, () => document.querySelector('#events tr[data-id="after-restart"]'));
log('restart: reconnected, events flow');

// 7. Phone width.
const phone = await open(BASE, { width: 390, height: 844 });
await until(phone, 'the page at phone width', 10000, () => document.querySelector('#conn').textContent === 'live');
const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
if (wide > 390 + 1) fail('at phone width the page is ' + wide + ' px wide');
await phone.screenshot({ path: join(env.SHOTS, 'dashboard-phone.png'), fullPage: false });

// 8. With a read token: the page asks for it, then shows the data.
expected = /status of 401/;
const guarded = await open(env.BASE_READ, { width: 1280, height: 800 });
await until(guarded, 'asks for the read token', 10000, () => !document.querySelector('#read-token-box').hidden);
await guarded.fill('#read-token', env.READ_TOKEN);
await guarded.click('#tokens button');
await until(guarded, 'live with the read token', 10000, () => document.querySelector('#conn').textContent === 'live' && document.querySelector('#plugin-table tr[data-plugin]'));
expected = null;
log('read token: asked for, then live');

if (errors.length) fail('errors in the browser console:\n' + errors.join('\n'));
await browser.close();
log('ok');
process.exit(0);
