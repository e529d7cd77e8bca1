// What `GET /tracker.js` runs: reads the <script> tag's data- attributes,
// replays the calls queued before it loaded (window.nexuspipe.q), then
// tracks page views.
//
//   <script defer src="https://collector.example/tracker.js" data-site="site123"></script>
//   <script>window.nexuspipe=window.nexuspipe||function(){(nexuspipe.q=nexuspipe.q||[]).push(arguments)}</script>
import { createTracker } from './core.js';

const s = document.currentScript;
const d = s.dataset;
const t = createTracker({
  // Events go where the script came from, unless data-api says otherwise.
  endpoint: d.api || new URL(s.src).origin,
  site: d.site,
  respectDnt: 'respectDnt' in d,
});
const queued = (window.nexuspipe && window.nexuspipe.q) || [];
window.nexuspipe = (method, ...args) => (t[method] ? t[method](...args) : console.warn('nexuspipe: no method ' + method));
for (const args of queued) window.nexuspipe(...args);
if (d.auto != 'false') t.watch();
