// N open dashboards for `make bench-query --only dashboards`: one headless
// Debian Chromium with N pages of GET /, each live on /v1/stream. Prints
// `ready` once every page is live, then, when stdin closes, a JSON line with
// the rows each page's live table took, and exits.
import { createRequire } from 'node:module';
import { execSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
const require = createRequire(new URL('../tests/browser/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [base, n] = [process.argv[2], Number(process.argv[3] || 10)];
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
// Playwright starts the browser in a session of its own, so on Linux it has
// its own scheduler autogroup and `nice` on this process does not reach it:
// give the browser's autogroup the lowest priority too.
for (const pid of execSync(`ps -o pid= --ppid ${process.pid}`).toString().split(/\s+/).filter(Boolean)) {
  try { writeFileSync(`/proc/${pid}/autogroup`, '19'); } catch (_) { /* not Linux, or no autogroups */ }
}
const pages = [];
for (let i = 0; i < n; i++) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + '/');
  await page.waitForFunction(() => document.querySelector('#conn').textContent === 'live', null, { timeout: 30000 });
  pages.push(page);
}
console.log('ready');
process.stdin.resume();
process.stdin.on('end', async () => {
  // A page still busy with the load's last messages must not hang the run:
  // a page that does not answer in 10 s counts as -1.
  const count = (p) => Promise.race([
    p.$eval('#live-count', (e) => parseInt(e.textContent, 10) || 0),
    new Promise((resolve) => setTimeout(() => resolve(-1), 10000)),
  ]).catch(() => -1);
  const seen = await Promise.all(pages.map(count));
  console.log(JSON.stringify({ pages: n, sampled_per_page: seen }));
  // Closing a busy browser can take long too; exiting ends it.
  process.exit(0);
});
