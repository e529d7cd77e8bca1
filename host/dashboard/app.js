// NexusPipe's live dashboard. Everything comes from the query API
// (/v1/metrics, /v1/alerts, /v1/plugins) and the live push (/v1/stream):
// no second data path. Charts are uPlot; a live point makes the chart ask
// again for its newest windows only and merge them in.
'use strict';

const $ = (s, root = document) => root.querySelector(s);
const MINUTE = 60000;
const tokens = {
  read: sessionStorage.getItem('nexuspipe.read') || '',
  admin: sessionStorage.getItem('nexuspipe.admin') || '',
};

// ---------------------------------------------------------------- HTTP

function readAuth() {
  const t = tokens.read || tokens.admin;
  return t ? { Authorization: 'Bearer ' + t } : {};
}

async function api(path, opts = {}) {
  const headers = { ...(opts.admin ? { Authorization: 'Bearer ' + tokens.admin } : readAuth()), ...(opts.headers || {}) };
  let r;
  try {
    r = await fetch(path, { method: opts.method || 'GET', body: opts.body, headers });
  } catch (e) {
    return { status: 0, ok: false, body: { error: 'the server did not answer (' + e.message + ')' } };
  }
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (r.status === 401 && !opts.admin) $('#read-token-box').hidden = false;
  return { status: r.status, ok: r.ok, body };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, v);
  return api('/v1/metrics?' + q.toString());
}

// ---------------------------------------------------------------- formatting

const fmt = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });
const num = (v) => (v === null || v === undefined || Number.isNaN(v) ? '–' : fmt.format(v));
const pad = (n, w = 2) => String(n).padStart(w, '0');
function clock(ms, withMs) {
  const d = new Date(ms);
  const s = pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds());
  return withMs ? s + '.' + pad(d.getUTCMilliseconds(), 3) : s;
}
const toMs = (t) => (typeof t === 'number' ? t : Date.parse(t));
function span(ms) {
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// ---------------------------------------------------------------- range

const range = { start: 0, end: 0, live: true };

async function setRange() {
  const len = Number($('#range').value);
  const cat = await api('/v1/metrics');
  let newest = 0;
  for (const m of (cat.body && cat.body.measurements) || []) if (m.newest) newest = Math.max(newest, toMs(m.newest));
  // Event time, not the wall clock: the range ends at the newest window.
  range.end = newest ? Math.ceil((newest + 1) / MINUTE) * MINUTE : Math.ceil(Date.now() / MINUTE) * MINUTE;
  range.start = range.end - len;
  range.live = true;
  $('#range-label').textContent = 'event time ' + new Date(range.start).toISOString().slice(0, 16).replace('T', ' ') +
    ' – ' + clock(range.end) + ' UTC, live';
  catalog = (cat.body && cat.body.measurements) || [];
  fillGeneric();
}

// ---------------------------------------------------------------- charts

const PALETTE = ['#4ea1ff', '#3fb950', '#d29922', '#f85149', '#a371f7', '#39c5cf', '#ff7b72', '#e3b341', '#79c0ff', '#56d364', '#db61a2', '#8b949e'];

// A time-series chart of one measurement's field, grouped by a tag, in
// one-minute buckets, kept as {ts -> {group -> value}} and drawn by uPlot.
class TimeChart {
  constructor(id, spec) {
    this.box = document.getElementById(id);
    this.spec = spec;
    this.rows = new Map();
    this.plot = null;
    this.keys = [];
    this.latest = el('div', { class: 'latest', 'data-chart': id });
    this.box.after(this.latest);
  }

  params(start, end) {
    const s = this.spec;
    return { metric: s.metric, field: s.field, group_by: s.groupBy || '', window: s.window || '1m', agg: s.agg || 'sum', start_time: start, end_time: end };
  }

  // A measurement nothing has emitted yet is not asked for (it would be a 400).
  known() { return catalog.some((m) => m.measurement === this.spec.metric); }

  async load() {
    this.rows.clear();
    if (!this.known()) { this.draw(); return; }
    const r = await query(this.params(range.start, range.end));
    this.merge(r, true);
  }

  // Asks again for the buckets from `from` to `to` (live points arrived
  // there); the range grows to take the newest.
  async refresh(from, to) {
    const start = Math.max(range.start, Math.floor(from / MINUTE) * MINUTE);
    if (to >= range.end) range.end = Math.ceil((to + 1) / MINUTE) * MINUTE;
    if (!this.known()) await refreshCatalog();
    if (!this.known()) return;
    const r = await query(this.params(start, range.end));
    this.merge(r, false);
  }

  merge(r, whole) {
    if (!r.ok || !r.body) {
      this.latest.textContent = r.status === 400 ? '' : 'no data (' + ((r.body && r.body.error) || r.status) + ')';
      if (whole) this.draw();
      return;
    }
    const f = this.spec.field;
    for (const s of r.body.series || []) {
      const g = this.spec.groupBy ? (s.tags[this.spec.groupBy] ?? '(none)') : f;
      const vals = (s.fields && s.fields[f]) || [];
      s.timestamps.forEach((t, i) => {
        if (vals[i] === null || vals[i] === undefined) return;
        let row = this.rows.get(t);
        if (!row) this.rows.set(t, (row = {}));
        row[g] = vals[i];
      });
    }
    this.draw();
  }

  draw() {
    const ts = [...this.rows.keys()].sort((a, b) => a - b);
    const totals = new Map();
    for (const row of this.rows.values()) for (const [k, v] of Object.entries(row)) totals.set(k, (totals.get(k) || 0) + v);
    let keys = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
    if (this.spec.top) keys = keys.slice(0, this.spec.top);
    const raw = keys.map((k) => ts.map((t) => this.rows.get(t)[k] ?? null));
    let shown = raw;
    if (this.spec.stacked) {
      // Stacked: each band is the sum of itself and those below it.
      shown = [];
      let acc = ts.map(() => 0);
      for (let i = keys.length - 1; i >= 0; i--) {
        acc = acc.map((a, j) => a + (raw[i][j] || 0));
        shown[i] = acc.slice();
      }
    }
    const data = [ts.map((t) => t / 1000), ...shown];
    const same = this.plot && keys.length === this.keys.length && keys.every((k, i) => k === this.keys[i]);
    if (same) {
      this.plot.setData(data);
    } else {
      if (this.plot) this.plot.destroy();
      this.keys = keys;
      const series = [{}, ...keys.map((k, i) => ({
        label: k, stroke: PALETTE[i % PALETTE.length], width: 1.5,
        fill: this.spec.stacked ? PALETTE[i % PALETTE.length] + '55' : undefined,
        // The legend shows each band's own value, not the stacked sum.
        value: (u, v, si, di) => num(di === null || di === undefined ? v : this.rawAt(k, di)),
      }))];
      this.plot = new uPlot({
        width: Math.max(280, this.box.clientWidth || 400), height: 200, series,
        scales: { x: { time: true } },
        axes: [{ stroke: '#8a96a3', grid: { stroke: '#2a323c' } }, { stroke: '#8a96a3', grid: { stroke: '#2a323c' } }],
        legend: { show: keys.length <= 12 },
      }, data, this.box);
    }
    this.tsList = ts;
    this.showLatest(ts, keys);
  }

  rawAt(k, i) {
    const t = this.tsList && this.tsList[i];
    return t === undefined ? null : (this.rows.get(t) || {})[k] ?? null;
  }

  // The newest window in words (its values, not the stacked sums).
  showLatest(ts, keys) {
    this.latest.replaceChildren();
    if (!ts.length) { this.latest.textContent = 'no windows in this range yet'; return; }
    const t = ts[ts.length - 1];
    const row = this.rows.get(t);
    this.latest.dataset.ts = t;
    this.latest.append(el('span', { class: 'muted' }, 'window ' + clock(t) + ': '));
    for (const k of keys) {
      if (row[k] === undefined) continue;
      this.latest.append(el('span', { class: 'v', 'data-key': k, 'data-value': row[k] }, k + ' ', el('b', {}, num(row[k]))), ' ');
    }
  }

  resize() { if (this.plot) this.plot.setSize({ width: Math.max(280, this.box.clientWidth), height: 200 }); }
}

// A ranked list from the newest window of a measurement.
class Ranked {
  constructor(id, spec) { this.box = document.getElementById(id); this.spec = spec; }
  async load() {
    if (!catalog.some((m) => m.measurement === this.spec.metric)) await refreshCatalog();
    if (!catalog.some((m) => m.measurement === this.spec.metric)) { this.box.replaceChildren(el('li', { class: 'muted' }, 'no windows yet')); return; }
    const r = await query({ metric: this.spec.metric, start_time: Math.max(range.start, range.end - 2 * 3600000), end_time: range.end + 3600000 });
    if (!r.ok || !r.body) { this.box.replaceChildren(el('li', { class: 'muted' }, 'no data')); return; }
    let newest = -Infinity;
    for (const s of r.body.series) if (s.timestamps.length) newest = Math.max(newest, s.timestamps[s.timestamps.length - 1]);
    const items = [];
    for (const s of r.body.series) {
      const i = s.timestamps.lastIndexOf(newest);
      if (i >= 0) items.push(this.spec.item(s.tags, Object.fromEntries(Object.entries(s.fields).map(([k, v]) => [k, v[i]]))));
    }
    items.sort((a, b) => a.order - b.order);
    const max = Math.max(1, ...items.map((x) => x.value || 0));
    this.box.replaceChildren(...items.map((x) => el('li', { 'data-label': x.label, 'data-value': x.value },
      el('span', { title: x.label }, x.label), (() => { const b = el('span', { class: 'bar' }); b.style.width = (100 * (x.value || 0) / max) + '%'; return b; })(),
      el('span', { class: 'v' }, x.text))));
    if (!items.length) this.box.replaceChildren(el('li', { class: 'muted' }, 'no windows in this range yet'));
    if (this.spec.at) $(this.spec.at).textContent = items.length ? '(window ' + clock(newest) + ')' : '';
  }
  refresh() { return this.load(); }
}

const charts = {
  events: new TimeChart('c-events', { metric: 'events', field: 'count', groupBy: 'event_type', stacked: true }),
  pages: new TimeChart('c-pages', { metric: 'page_views', field: 'count', groupBy: 'path', top: 10 }),
  users: new TimeChart('c-users', { metric: 'unique_users', field: 'users' }),
  revenue: new TimeChart('c-revenue', { metric: 'revenue', field: 'total', groupBy: 'currency' }),
  top: new Ranked('top-products', {
    metric: 'top_products', at: '#top-at',
    item: (tags, f) => ({ order: Number(tags.rank), label: '#' + tags.rank + ' ' + f.product_id, value: f.views, text: num(f.views) }),
  }),
  funnel: new Ranked('funnel', {
    metric: 'funnel',
    item: (tags, f) => ({ order: Number(tags.step), label: tags.step + '. ' + tags.step_name, value: f.users, text: num(f.users) + ' · ' + num(100 * (f.conversion ?? 0)) + '%' }),
  }),
  generic: null,
};
// Which chart a live point of a measurement updates.
const byMeasurement = { events: ['events'], page_views: ['pages'], unique_users: ['users'], revenue: ['revenue'], top_products: ['top'], funnel: ['funnel'] };

let catalog = [];
async function refreshCatalog() {
  const cat = await api('/v1/metrics');
  if (cat.ok && cat.body) { catalog = cat.body.measurements || []; fillGeneric(); }
}
function fillGeneric() {
  const ms = $('#g-measurement');
  const keep = ms.value;
  ms.replaceChildren(...catalog.map((m) => el('option', { value: m.measurement }, m.measurement)));
  if (keep && catalog.some((m) => m.measurement === keep)) ms.value = keep;
  fillGenericFields();
}
function fillGenericFields() {
  const m = catalog.find((x) => x.measurement === $('#g-measurement').value);
  const fields = m ? m.fields : [];
  const f = $('#g-field'), g = $('#g-group');
  const fv = f.value, gv = g.value;
  f.replaceChildren(...fields.map((x) => el('option', { value: typeof x === 'string' ? x : x.name }, typeof x === 'string' ? x : x.name)));
  if (fv) f.value = fv;
  g.replaceChildren(el('option', { value: '' }, '(none)'), ...(m ? m.tags : []).map((t) => el('option', { value: t }, t)));
  if (gv && m && m.tags.includes(gv)) g.value = gv;
}
async function loadGeneric() {
  const metric = $('#g-measurement').value;
  if (!metric) return;
  $('#c-generic').replaceChildren();
  if (charts.generic) charts.generic.latest.remove();
  charts.generic = new TimeChart('c-generic', { metric, field: $('#g-field').value, groupBy: $('#g-group').value, agg: $('#g-agg').value, top: 12 });
  await charts.generic.load();
  subscribe();
}
for (const id of ['#g-measurement', '#g-field', '#g-group', '#g-agg']) {
  $(id).addEventListener('change', () => { if (id === '#g-measurement') fillGenericFields(); loadGeneric(); });
}

// Live points: one refresh per chart per 250 ms, from the oldest point seen.
const pendingRefresh = new Map();
function onPoint(p) {
  const ids = [...(byMeasurement[p.measurement] || [])];
  if (charts.generic && charts.generic.spec.metric === p.measurement) ids.push('generic');
  const ts = toMs(p.timestamp);
  // Points that arrive together (old windows and a new one) make one
  // refresh, over all of them: the oldest to the newest.
  for (const id of ids) {
    const span = pendingRefresh.get(id);
    if (span === undefined) {
      pendingRefresh.set(id, { from: ts, to: ts });
      setTimeout(() => {
        const s = pendingRefresh.get(id);
        pendingRefresh.delete(id);
        if (charts[id]) charts[id].refresh(s.from, s.to);
      }, 250);
    } else {
      span.from = Math.min(span.from, ts);
      span.to = Math.max(span.to, ts);
    }
  }
}

async function loadCharts() {
  await setRange();
  await Promise.all(Object.values(charts).filter(Boolean).map((c) => c.load()));
  if (!charts.generic) await loadGeneric();
}
$('#range').addEventListener('change', () => { loadCharts(); loadAlerts(); });
window.addEventListener('resize', () => Object.values(charts).forEach((c) => c && c.resize && c.resize()));

// ---------------------------------------------------------------- live events

const liveRows = [];
let paused = false, seen = 0;
const types = new Set();
$('#pause').addEventListener('click', () => { paused = !paused; $('#pause').textContent = paused ? 'Resume' : 'Pause'; });
$('#type-filter').addEventListener('change', renderEvents);
function onEvent(e) {
  seen++;
  if (!types.has(e.event_type)) {
    types.add(e.event_type);
    $('#type-filter').append(el('option', { value: e.event_type }, e.event_type));
  }
  if (paused) return;
  liveRows.unshift(e);
  if (liveRows.length > 200) liveRows.length = 200;
  renderEventsSoon();
}
let renderQueued = false;
function renderEventsSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderEvents(); });
}
function renderEvents() {
  const only = $('#type-filter').value;
  const rows = liveRows.filter((e) => !only || e.event_type === only).slice(0, 100).map((e) => {
    const p = e.properties || {};
    return el('tr', { 'data-id': e.event_id, 'data-type': e.event_type },
      el('td', {}, clock(toMs(e.timestamp), true)), el('td', {}, e.event_type), el('td', {}, e.user_id || '–'),
      el('td', {}, p.path || '–'), el('td', {}, p['geo.country_code'] || p['geo.country'] || '–'), el('td', {}, p['ua.device'] || '–'));
  });
  $('#events tbody').replaceChildren(...rows);
  $('#live-count').textContent = seen + ' sampled';
}

// ---------------------------------------------------------------- figures

function onStats(s) {
  const set = (id, v) => { $(id).textContent = v; };
  set('#f-in', num(s.events_in_per_s)); set('#f-out', num(s.events_out_per_s));
  set('#f-accepted', num(s.accepted)); set('#f-rejected', num(s.rejected)); set('#f-late', num(s.late));
  set('#f-dead', num(s.dead_lettered)); set('#f-queue', num(s.queue_depth));
  set('#f-wm', s.watermark === null ? '–' : clock(s.watermark));
  set('#f-lag', s.watermark === null || s.newest_event === null ? '–' : span(Math.max(0, s.newest_event - s.watermark)));
  $('#f-sinks').replaceChildren(...(s.sinks || []).map((k) => el('span', { class: 'state-' + k.state, title: k.state }, k.name + ' ' + k.state + ' ')));
  for (const p of s.plugins || []) rates.set(p.name, p.events_in_per_s);
}

// ---------------------------------------------------------------- alerts

const firing = new Map();
const alertKey = (a) => a.rule_id + '\u0000' + a.key;
function alertItem(a) {
  return el('li', { class: 'sev-' + a.severity, 'data-rule': a.rule_id, 'data-key': a.key, 'data-status': a.status },
    el('b', {}, a.rule_id), ' ', el('span', { class: 'muted' }, a.key), ' ', a.summary || '',
    el('div', { class: 'muted' }, a.severity + ' · ' + a.status + ' · since ' + (a.starts_at || '')));
}
// A busy stream can bring thousands of alerts a second: they are drawn once
// per frame, the firing list shows the newest SHOWN, the history keeps SHOWN.
const SHOWN = 200;
let alertsQueued = false, newAlerts = [];
function renderFiring() {
  const all = [...firing.values()];
  const items = all.map((a) => [toMs(a.starts_at), a]).sort((x, y) => y[0] - x[0]).slice(0, SHOWN).map((x) => alertItem(x[1]));
  if (all.length > SHOWN) items.push(el('li', { class: 'muted' }, 'and ' + (all.length - SHOWN) + ' more firing'));
  $('#firing').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'nothing fires')]));
}
function renderAlerts() {
  alertsQueued = false;
  renderFiring();
  const history = $('#history');
  history.prepend(...newAlerts.slice(-SHOWN).reverse().map(alertItem));
  newAlerts = [];
  while (history.childElementCount > SHOWN) history.lastElementChild.remove();
}
async function loadAlerts() {
  const r = await api('/v1/alerts?' + new URLSearchParams({ start_time: range.start, end_time: range.end + 86400000 }));
  if (!r.ok || !r.body) return;
  firing.clear();
  for (const a of r.body.firing || []) firing.set(alertKey(a), a);
  renderFiring();
  $('#history').replaceChildren(...(r.body.alerts || []).slice(0, SHOWN).map(alertItem));
}
function onAlert(a) {
  if (a.status === 'firing') firing.set(alertKey(a), a); else firing.delete(alertKey(a));
  newAlerts.push(a);
  if (!alertsQueued) { alertsQueued = true; requestAnimationFrame(renderAlerts); }
}

// ---------------------------------------------------------------- plugins

const rates = new Map();
let plugins = [];
let lastList = null;
const REASONS = {
  unauthorized: 'the admin token is missing', forbidden: 'the admin token is wrong', admin_disabled: 'the admin API is off on this server (no admin token is configured)',
  not_a_component: 'the file is not a WebAssembly component', unknown_world: 'the component is none of the plugin worlds',
  world_mismatch: 'the component is another world than the running plugin', config_rejected: 'the plugin refused the config',
  init_failed: 'the plugin failed to start', state_rejected: 'the new version refused the running state (upload with a state reset)',
  too_large: 'the file is too large', no_previous: 'there is no previous version to roll back to', not_found: 'no such plugin',
  invalid_name: 'the name is not valid', bad_request: 'the request is malformed',
};
function explain(r) {
  if (r.ok) return '';
  const b = r.body || {};
  const words = REASONS[b.reason] || ('refused (' + r.status + ')');
  return words + (b.error ? ': ' + b.error : '');
}
async function loadPlugins() {
  const r = await api('/v1/plugins');
  if (!r.ok || !r.body) { $('#plugin-table tbody').replaceChildren(el('tr', {}, el('td', { colspan: 12, class: 'muted' }, explain(r)))); return; }
  const now = performance.now();
  const before = lastList;
  lastList = { at: now, by: new Map(r.body.plugins.map((p) => [p.name, p])) };
  plugins = r.body.plugins;
  const perSec = (p, k) => {
    const old = before && before.by.get(p.name);
    if (!old || old.version !== p.version) return null;
    return (p[k] - old[k]) / ((now - before.at) / 1000);
  };
  const rows = plugins.map((p, i) => el('tr', { 'data-plugin': p.name, 'data-version': p.version },
    el('td', {}, i + 1), el('td', {}, p.name), el('td', {}, p.world), el('td', { title: p.version, class: 'version' }, p.version.slice(0, 12)),
    el('td', {}, p.source), el('td', {}, num(rates.get(p.name) ?? perSec(p, 'events_in'))), el('td', {}, num(perSec(p, 'events_out'))),
    el('td', {}, num(p.calls)), el('td', {}, num(p.failures)), el('td', {}, num(p.dead_lettered)),
    el('td', { class: 'breaker-' + p.breaker }, p.breaker),
    el('td', { class: 'admin-only' },
      el('button', { type: 'button', onclick: () => change(p.name, 'POST', '/rollback', 'rolled back'), disabled: p.previous_version ? null : '' }, 'Roll back'), ' ',
      el('button', { type: 'button', onclick: () => { if (confirm('Delete ' + p.name + ' from the pipeline?')) change(p.name, 'DELETE', '', 'deleted'); } }, 'Delete'))));
  $('#plugin-table tbody').replaceChildren(...rows);
  renderRules();
}
function answer(id, r, okText) {
  const box = $(id);
  box.className = 'answer ' + (r.ok ? 'ok' : 'err');
  box.textContent = r.ok ? okText : explain(r);
}
async function change(name, method, tail, done) {
  const r = await api('/v1/plugins/' + encodeURIComponent(name) + tail, { method, admin: true });
  answer('#plugin-answer', r, name + ' ' + done + (r.body && r.body.version ? ': version ' + r.body.version.slice(0, 12) : ''));
  loadPlugins();
}
$('#upload').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = $('#up-name').value.trim();
  const form = new FormData();
  form.append('component', $('#up-file').files[0]);
  if ($('#up-config').files[0]) form.append('config', $('#up-config').files[0]);
  $('#plugin-answer').textContent = 'uploading…';
  const r = await api('/v1/plugins/' + encodeURIComponent(name), { method: 'PUT', body: form, admin: true });
  answer('#plugin-answer', r, r.ok ? name + ' now runs version ' + r.body.version.slice(0, 12) + ' (state ' + r.body.state + ', swap pause ' + r.body.swap_pause_us + ' µs)' : '');
  loadPlugins();
});

// ---------------------------------------------------------------- rules

let defaultRules = null;
// The alerter plugins whose config is the bundled alerts plugin's ({"rules": [...]}).
function rulePlugins() {
  const out = [];
  for (const p of plugins) {
    if (p.world !== 'alerter' || p.config === undefined) continue;
    let rules = null;
    try { rules = p.config.trim() === '' ? defaultRules : JSON.parse(p.config).rules; } catch (_) { rules = null; }
    if (Array.isArray(rules)) out.push({ name: p.name, rules, defaults: p.config.trim() === '' });
  }
  return out;
}
function describe(r) {
  const f = (x) => (x && x.event_type) || 'any event';
  if (r.type === 'threshold') return (r.sum ? 'sum of ' + r.sum : 'count') + ' of ' + f(r.filter) + ' per ' + r.key + ' over ' + r.window + ' above ' + r.above;
  if (r.type === 'sequence') return (r.count || 1) + '× ' + f(r.first) + ' then ' + f(r.then) + ' per ' + r.key + ' within ' + r.within;
  if (r.type === 'absence') return f(r.first) + ' without ' + f(r.then) + ' per ' + r.key + ' within ' + r.within;
  if (r.type === 'anomaly') return (r.sum ? 'sum of ' + r.sum : r.avg ? 'average of ' + r.avg : 'count') + ' of ' + f(r.filter) + ' per ' + r.key + ' each ' + r.window + ' ' + (r.direction || 'above') + ' its last ' + (r.baseline || 10) + ' windows by ' + (r.k || 3) + ' deviations';
  return JSON.stringify(r);
}
function renderRules() {
  const list = rulePlugins();
  const sel = $('#rule-plugin');
  const keep = sel.value;
  sel.replaceChildren(...list.map((p) => el('option', { value: p.name }, p.name)));
  if (keep) sel.value = keep;
  if (!list.length) {
    $('#rule-lists').replaceChildren(el('p', { class: 'muted' }, plugins.some((p) => p.world === 'alerter')
      ? 'Enter the admin token to see the rules of custom alerters.' : 'No alerter plugin runs.'));
    return;
  }
  $('#rule-lists').replaceChildren(...list.map((p) => el('div', {},
    el('h3', {}, p.name + (p.defaults ? ' (default rules)' : '')),
    el('div', { class: 'scroll' }, el('table', {}, el('thead', {}, el('tr', {}, ...['id', 'type', 'key', 'window', 'threshold', 'severity', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...p.rules.map((r) => el('tr', { 'data-rule': r.id },
        el('td', {}, r.id), el('td', {}, r.type), el('td', {}, r.key || ''), el('td', {}, r.window || r.within || ''),
        el('td', {}, describe(r)), el('td', {}, r.severity || 'warning'),
        el('td', { class: 'admin-only' },
          el('button', { type: 'button', onclick: () => editRule(p.name, r) }, 'Edit'), ' ',
          el('button', { type: 'button', onclick: () => deployRules(p.name, p.rules.filter((x) => x.id !== r.id), null, 'removed ' + r.id) }, 'Remove'))))))))));
}
const form = $('#rule-form');
function showType() {
  const t = form.elements.type.value;
  for (const l of form.querySelectorAll('.t-threshold, .t-seq, .t-absence')) {
    l.hidden = !(l.classList.contains('t-' + (t === 'sequence' ? 'seq' : t)));
  }
}
form.elements.type.addEventListener('change', showType);
showType();
function editRule(plugin, r) {
  $('#rule-plugin').value = plugin;
  const e = form.elements;
  e.id.value = r.id; e.type.value = r.type; e.severity.value = r.severity || 'warning'; e.key.value = r.key || '';
  e.summary.value = r.summary || '';
  e.filter.value = (r.filter && r.filter.event_type) || ''; e.window.value = r.window || ''; e.above.value = r.above ?? '';
  e.sum.value = r.sum || ''; e.first.value = (r.first && r.first.event_type) || ''; e.then.value = (r.then && r.then.event_type) || '';
  e.count.value = r.count ?? 1; e.within.value = r.within || '';
  $('#rule-json').value = JSON.stringify(r, null, 2);
  showType();
  form.scrollIntoView({ behavior: 'smooth' });
}
const DURATION = /^\d+(ms|s|m|h|d)$/;
// The rule the form describes, or the JSON box's if that was edited.
function formRule() {
  const e = form.elements;
  const v = (x) => x.value.trim();
  const r = { id: v(e.id), type: e.type.value, severity: e.severity.value, key: v(e.key) };
  // The plugin needs a summary: a plain one unless the form gives another.
  r.summary = v(e.summary) || (r.type === 'threshold' ? '{rule}: {value} from {key} within {window}'
    : r.type === 'sequence' ? '{rule}: {count} then one more from {key} within {window}' : '{rule}: nothing followed for {key} within {window}');
  if (r.type === 'threshold') {
    r.filter = v(e.filter) ? { event_type: v(e.filter) } : {};
    r.window = v(e.window); r.above = Number(e.above.value);
    if (v(e.sum)) r.sum = v(e.sum);
  } else {
    r.first = { event_type: v(e.first) }; r.then = { event_type: v(e.then) }; r.within = v(e.within);
    if (r.type === 'sequence') r.count = Number(e.count.value);
  }
  return r;
}
let jsonEdited = false;
$('#rule-json').addEventListener('input', () => { jsonEdited = true; });
form.addEventListener('input', (ev) => { if (ev.target.id !== 'rule-json') { jsonEdited = false; $('#rule-json').value = JSON.stringify(formRule(), null, 2); } });
function fieldError(name, message) {
  const input = form.elements[name] || $('#rule-json');
  input.classList.add('invalid');
  input.closest('label, details').append(el('span', { class: 'field-error' }, message));
}
function clearErrors() {
  for (const e of form.querySelectorAll('.field-error')) e.remove();
  for (const e of form.querySelectorAll('.invalid')) e.classList.remove('invalid');
}
// Checks the page can make before the plugin's own.
function check(r) {
  const bad = [];
  if (!r.id) bad.push(['id', 'a rule needs an id']);
  if (!r.key) bad.push(['key', 'a field path, such as user_id or metadata.ip_address']);
  for (const k of ['window', 'within']) if (r[k] !== undefined && !DURATION.test(r[k])) bad.push([k, 'a duration such as 30s, 1m or 2h']);
  if (r.type === 'threshold' && !(Number.isFinite(r.above))) bad.push(['above', 'a number']);
  if (r.type === 'sequence' && !(r.count >= 1)) bad.push(['count', 'at least 1']);
  return bad;
}
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearErrors();
  let rule;
  try { rule = jsonEdited ? JSON.parse($('#rule-json').value) : formRule(); } catch (e) { fieldError('json', 'not JSON: ' + e.message); return; }
  const bad = check(rule);
  if (bad.length) { bad.forEach(([k, m]) => fieldError(k, m)); return; }
  const p = rulePlugins().find((x) => x.name === $('#rule-plugin').value);
  if (!p) return;
  const rules = p.rules.filter((x) => x.id !== rule.id);
  const at = p.rules.findIndex((x) => x.id === rule.id);
  rules.splice(at >= 0 ? at : rules.length, 0, rule);
  await deployRules(p.name, rules, rules.indexOf(rule), (at >= 0 ? 'changed ' : 'added ') + rule.id);
});
// A new config of the same component: checked by the plugin first (dry run),
// then deployed; the state of unchanged rules is kept by the plugin.
async function deployRules(plugin, rules, index, done) {
  const config = JSON.stringify({ rules }, null, 2);
  const body = () => { const f = new FormData(); f.append('config', config); return f; };
  const path = '/v1/plugins/' + encodeURIComponent(plugin);
  const box = $('#rule-answer');
  box.className = 'answer'; box.textContent = 'checking…';
  const dry = await api(path + '?dry_run=true', { method: 'PUT', body: body(), admin: true });
  if (!dry.ok) {
    const m = dry.body && dry.body.error ? /rules\[(\d+)\]\.(\w+)/.exec(dry.body.error) : null;
    if (m && Number(m[1]) === index && form.elements[m[2]]) fieldError(m[2], dry.body.error);
    answer('#rule-answer', dry, '');
    return;
  }
  const r = await api(path, { method: 'PUT', body: body(), admin: true });
  answer('#rule-answer', r, r.ok ? plugin + ': ' + done + ' (rules kept: ' + ((r.body.parts && r.body.parts.kept.length) ?? 'all') + ')' : '');
  loadPlugins();
}

// ---------------------------------------------------------------- live push

let ws = null, backoff = 500;
function subscription() {
  const names = ['events', 'stats', 'alerts', 'metric:events', 'page_views', 'unique_users', 'revenue', 'top_products', 'funnel'];
  if (charts.generic) names.push('metric:' + charts.generic.spec.metric);
  return names;
}
function subscribe() { if (ws && ws.readyState === 1) ws.send(JSON.stringify({ subscribe: subscription() })); }
const needsToken = () => !$('#read-token-box').hidden && !(tokens.read || tokens.admin);
function connect() {
  if (needsToken()) { $('#conn').textContent = 'needs the read token'; return; }
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/stream';
  const t = tokens.read || tokens.admin;
  // The token goes as a subprotocol: a browser's WebSocket cannot send headers.
  ws = t ? new WebSocket(url, ['nexuspipe', 'bearer.' + t]) : new WebSocket(url);
  const pill = $('#conn');
  ws.onopen = () => {
    backoff = 500;
    pill.dataset.connects = Number(pill.dataset.connects || 0) + 1;
    pill.textContent = 'live'; pill.className = 'pill live';
    subscribe();
    // What happened while disconnected: ask again.
    if (started) { loadCharts(); loadAlerts(); loadPlugins(); }
  };
  ws.onmessage = (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch (_) { return; }
    switch (msg.type) {
      case 'event': onEvent(msg); break;
      case 'point': onPoint(msg); break;
      case 'alert': onAlert(msg); break;
      case 'stats': onStats(msg); break;
      case 'dropped': loadCharts(); break;
      default: break;
    }
  };
  ws.onclose = () => {
    // Refused for want of a read token: wait for it (the form reconnects).
    if (needsToken()) { pill.textContent = 'needs the read token'; pill.className = 'pill down'; ws = null; return; }
    pill.textContent = 'reconnecting'; pill.className = 'pill down';
    setTimeout(connect, backoff);
    backoff = Math.min(5000, backoff * 2);
  };
}

// ---------------------------------------------------------------- tokens

function applyTokens() {
  document.body.classList.toggle('admin', !!tokens.admin);
  $('#admin-token').value = tokens.admin;
  $('#read-token').value = tokens.read;
}
$('#tokens').addEventListener('submit', (ev) => {
  ev.preventDefault();
  tokens.admin = $('#admin-token').value.trim();
  tokens.read = $('#read-token').value.trim();
  sessionStorage.setItem('nexuspipe.admin', tokens.admin);
  sessionStorage.setItem('nexuspipe.read', tokens.read);
  applyTokens();
  // The stream reconnects with the new token (its close handler reopens it).
  if (ws) ws.close(); else start().then(connect);
  if (ws) start();
});

let started = false;
async function start() {
  const d = await fetch('/dashboard/alerts-default.json').then((r) => r.json()).catch(() => null);
  defaultRules = d && d.rules;
  await loadCharts();
  await Promise.all([loadAlerts(), loadPlugins()]);
  started = true;
}
applyTokens();
start().then(connect);
setInterval(() => { if (!needsToken()) loadPlugins(); }, 2000);
