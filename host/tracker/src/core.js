// The browser tracker's logic, shared by the <script> tag (snippet.js) and
// the React package (examples/react-tracker): ids and sessions, the queue
// kept in localStorage, batching, sending and retrying. No dependencies;
// built into tracker.min.js by build.sh.
//
// Delivery is at least once and the server makes it exactly once: every
// event gets its event_id here, an event stays queued (in memory and in
// localStorage) until an answer says the server took it, and the server
// acknowledges a copy it has already taken without counting it again.

const P = 'nexuspipe_';
const SESSION_MS = 30 * 60 * 1000; // a new session after 30 minutes without events
const FLUSH_MS = 2000;
const FLUSH_AT = 20; // queued events that send at once
const PER_SEND = 100; // events per request
const MAX_BODY = 60000; // under the 64 KiB browsers allow a keepalive request
const MAX_QUEUE = 1000; // the oldest are dropped first
const MAX_BACKOFF_MS = 60000;

// localStorage when the browser allows it, memory when not (blocked, full).
const mem = {};
const get = (k) => {
  try {
    return localStorage.getItem(P + k) ?? mem[k];
  } catch (e) {
    return mem[k];
  }
};
const set = (k, v) => {
  mem[k] = v;
  try {
    v == null ? localStorage.removeItem(P + k) : localStorage.setItem(P + k, v);
  } catch (e) {}
};

// A random (version 4) UUID; crypto.randomUUID exists only on https pages.
const uuid = () =>
  '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
    (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
  );

const warn = (what) => console.warn('nexuspipe: ' + what);

// The page of the last page view (without its #hash) and its address, per
// page rather than per tracker: a React provider mounted twice (StrictMode)
// does not count its first page twice.
let last;
let href;
let referrer = document.referrer || undefined;

/**
 * @param {{endpoint: string, site?: string, respectDnt?: boolean}} o
 */
export function createTracker(o) {
  const url = o.endpoint.replace(/\/$/, '') + '/v1/events?partial=true';
  const nav = navigator;
  const off = () =>
    (get('ignore') || 'false') != 'false' ||
    (o.respectDnt && (nav.doNotTrack == '1' || window.doNotTrack == '1' || nav.globalPrivacyControl));
  // Each page keeps its own queue under its own key, so two tabs never
  // overwrite each other's; a new page takes over what earlier ones left.
  const key = 'q.' + uuid();
  let q = [];
  try {
    for (let i = localStorage.length; i--; ) {
      const k = localStorage.key(i);
      if (k.startsWith(P + 'q.')) {
        q = q.concat(JSON.parse(localStorage.getItem(k)));
        localStorage.removeItem(k);
      }
    }
  } catch (e) {}
  const save = () => {
    q = q.slice(-MAX_QUEUE);
    set(key, q.length ? JSON.stringify(q) : null);
  };
  let wait = 0; // no sends before this time (backing off)
  let tries = 0;
  let busy = 0;

  // `hide`: the page is going away; send even while another request or a
  // backoff is pending, with keepalive so the request outlives the page.
  // Events already in a keepalive request are not sent again by the next
  // (`visibilitychange` and `pagehide` both come when a page closes).
  const kept = new Set();
  const send = (hide) => {
    const pool = hide ? q.filter((e) => !kept.has(e)) : q;
    if (!pool.length || off() || (!hide && (busy || Date.now() < wait))) return;
    let n = Math.min(pool.length, PER_SEND);
    let body;
    while ((body = JSON.stringify(pool.slice(0, n))).length > MAX_BODY && n > 1) n >>= 1;
    const batch = pool.slice(0, n);
    if (hide) batch.map((e) => kept.add(e));
    const retry = (after) => {
      wait = Date.now() + (after * 1000 || Math.min(MAX_BACKOFF_MS, 1000 * 2 ** tries++) * (0.5 + Math.random()));
    };
    busy++;
    let sent;
    try {
      sent = fetch(url, { method: 'POST', body, keepalive: !!hide && body.length <= MAX_BODY });
    } catch (e) {
      // No fetch with keepalive here: the beacon, whose fate is unknown,
      // so the batch stays queued (the server drops a copy it has).
      busy--;
      return hide && nav.sendBeacon && nav.sendBeacon(url, body);
    }
    sent
      .then((r) => {
        if (r.status == 429 || r.status >= 500) return retry(+r.headers.get('Retry-After'));
        // Taken, or refused for good (a 400 is not retried): off the queue.
        q = q.filter((e) => !batch.includes(e));
        tries = 0;
        wait = 0;
        r.text().then((t) => (!r.ok || t.includes('"rejected"')) && warn(r.status + ' ' + t), () => {});
      }, () => retry())
      .finally(() => {
        busy--;
        batch.map((e) => kept.delete(e));
        save();
        if (q.length >= FLUSH_AT) send();
      });
  };

  const track = (type, props) => {
    if (off()) return;
    const now = Date.now();
    let sid = get('sid');
    if (!sid || now - get('last') > SESSION_MS) set('sid', (sid = uuid()));
    set('last', now);
    const aid = get('aid') || (set('aid', uuid()), get('aid'));
    q.push({
      event_id: uuid(),
      event_type: type,
      timestamp: now,
      user_id: get('uid') || aid,
      session_id: sid,
      properties: Object.assign({ anonymous_id: aid }, props, o.site && { site_id: o.site }),
      metadata: { url: location.href, referrer, platform: 'web' },
    });
    save();
    if (q.length >= FLUSH_AT) send();
  };

  // A page view when the address (not its #hash) changed; or `path`, a
  // router's own (a hash or memory router's path and query).
  const page = (path) => {
    const u = path || location.href.split('#')[0];
    if (u == last) return;
    if (last) referrer = href;
    last = u;
    href = location.href;
    track('page_view', {
      path: path ? path.split('?')[0] : location.pathname,
      title: document.title,
      screen: screen.width + 'x' + screen.height,
      language: nav.language,
    });
  };

  const stop = new AbortController();
  const on = (target, type, fn) => target.addEventListener(type, fn, { signal: stop.signal });
  const timer = setInterval(send, FLUSH_MS);
  on(document, 'visibilitychange', () => document.visibilityState == 'hidden' && send(1));
  on(window, 'pagehide', () => send(1));
  on(window, 'online', () => {
    wait = 0;
    send();
  });
  save();

  return {
    track,
    page,
    identify: (id) => set('uid', id),
    // Forgets the user and the anonymous id (on logout).
    reset: () => ['uid', 'aid', 'sid'].map((k) => set(k, null)),
    flush: () => send(),
    // Page views on load and on single-page-app navigation.
    watch: () => {
      for (const m of ['pushState', 'replaceState']) {
        const f = history[m];
        history[m] = function () {
          const r = f.apply(this, arguments);
          stop.signal.aborted || page();
          return r;
        };
      }
      on(window, 'popstate', () => page());
      page();
    },
    stop: () => {
      clearInterval(timer);
      stop.abort();
      save();
    },
  };
}
