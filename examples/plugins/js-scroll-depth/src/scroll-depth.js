// scroll-depth: a NexusPipe aggregator in JavaScript.
//
// Average and maximum scroll depth per page, per 1-minute tumbling window of
// event time, from `scroll` events carrying a numeric `depth` property. Built
// into a component with jco + componentize-js against the repo's `wit/`
// (world `aggregator`); see README.md.
//
// WIT to JS: s64 is a BigInt, u32 a Number, options are `undefined`,
// variants are `{ tag, val }`, flags are objects of booleans, and a
// `result` error is thrown as `{ payload: <error record> }`.

import { log } from 'nexuspipe:plugin/host@0.4.0';

const STATE_VERSION = 1;
const CONFIG_KEYS = ['window_ms', 'event_type', 'depth_property', 'page_property', 'measurement'];

let config = null;
let lateness = 0;
// Open windows: "start\u0000page" -> { start, page, sum, max, count, dirty }.
let windows = new Map();
// Event time of the last `process` (null before the first one).
let watermark = null;

function configError(field, message) {
  return { payload: { field, message } };
}

function parseConfig(text) {
  let raw = {};
  if (text.trim() !== '') {
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw configError(undefined, `config is not valid JSON: ${e.message}`);
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw configError(undefined, 'config must be a JSON object');
    }
  }
  for (const key of Object.keys(raw)) {
    if (!CONFIG_KEYS.includes(key)) {
      throw configError(key, `unknown key "${key}" (expected one of ${CONFIG_KEYS.join(', ')})`);
    }
  }
  const str = (key, dflt) => {
    const v = raw[key] ?? dflt;
    if (typeof v !== 'string' || v === '') throw configError(key, 'expected a non-empty string');
    return v;
  };
  const windowMs = raw.window_ms ?? 60000;
  if (!Number.isInteger(windowMs) || windowMs <= 0) {
    throw configError('window_ms', 'expected a positive integer (milliseconds)');
  }
  return {
    windowMs,
    eventType: str('event_type', 'scroll'),
    depthProperty: str('depth_property', 'depth'),
    pageProperty: str('page_property', 'path'),
    measurement: str('measurement', 'scroll_depth'),
  };
}

// Epoch-aligned window start: ts - (ts mod size), also for negative ts.
function windowStart(ts) {
  const size = config.windowMs;
  return ts - (((ts % size) + size) % size);
}

function prop(event, key) {
  for (const p of event.properties) {
    if (p.key === key) return p.value;
  }
  return undefined;
}

// The depth of a scroll event, or undefined when it has none that is numeric.
function depthOf(event) {
  const v = prop(event, config.depthProperty);
  if (v === undefined) return undefined;
  if (v.tag === 'float') return Number.isFinite(v.val) ? v.val : undefined;
  if (v.tag === 'int') return Number(v.val);
  return undefined;
}

// The page: a string property (default `path`), else the path of metadata.url.
// Query and fragment are cut off so the tag stays bounded.
function pageOf(event) {
  const v = prop(event, config.pageProperty);
  let page = v !== undefined && v.tag === 'str' ? v.val : undefined;
  if (page === undefined && event.metadata.url) {
    const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#]*([^?#]*)/.exec(event.metadata.url);
    page = m ? m[1] || '/' : event.metadata.url;
  }
  if (page === undefined) return undefined;
  page = page.split(/[?#]/)[0];
  return page === '' ? undefined : page;
}

function expired(end) {
  return watermark !== null && end + lateness <= watermark;
}

function byStartThenPage(a, b) {
  if (a.start !== b.start) return a.start - b.start;
  return a.page < b.page ? -1 : a.page > b.page ? 1 : 0;
}

function toPoint(w) {
  return {
    measurement: config.measurement,
    tags: [['page', w.page]],
    fields: [
      ['avg', { tag: 'float', val: w.sum / w.count }],
      ['max', { tag: 'float', val: w.max }],
      ['count', { tag: 'int', val: BigInt(w.count) }],
    ],
    timestamp: BigInt(w.start),
  };
}

export const aggregate = {
  init(configText, settings) {
    config = parseConfig(configText);
    lateness = Number(settings.allowedLateness);
    windows = new Map();
    watermark = null;
    log('info', 'scroll-depth ready', [
      ['window_ms', String(config.windowMs)],
      ['event_type', config.eventType],
    ]);
    return {
      eventTypes: [config.eventType],
      properties: [config.depthProperty, config.pageProperty],
      metadata: { ipAddress: false, userAgent: false, platform: false, url: true, referrer: false },
      fields: { id: false, userId: false, sessionId: false },
    };
  },

  process(events, wm) {
    const late = [];
    events.forEach((event, i) => {
      const depth = depthOf(event);
      const page = pageOf(event);
      if (depth === undefined || page === undefined) return; // not a usable scroll event
      const start = windowStart(Number(event.timestamp));
      if (expired(start + config.windowMs)) {
        // Its window closed for good (past allowed lateness): the host reports it.
        late.push(i);
        return;
      }
      const key = `${start}\u0000${page}`;
      let w = windows.get(key);
      if (w === undefined) {
        w = { start, page, sum: 0, max: depth, count: 0, dirty: true };
        windows.set(key, w);
      }
      w.sum += depth;
      w.max = Math.max(w.max, depth);
      w.count += 1;
      w.dirty = true;
    });

    // Advance event time; never backwards. i64::MAX (the final flush) becomes
    // a Number near 9.2e18, still larger than any window end.
    // componentize-js 0.22 hands a negative s64 argument over as unsigned
    // (the first watermark of a run is negative): undo that.
    const next = Number(BigInt.asIntN(64, wm));
    watermark = watermark === null ? next : Math.max(watermark, next);

    const fired = [];
    for (const w of windows.values()) {
      if (w.dirty && w.start + config.windowMs <= watermark) fired.push(w);
    }
    fired.sort(byStartThenPage);
    const points = fired.map((w) => {
      w.dirty = false;
      return toPoint(w);
    });
    for (const [key, w] of windows) {
      if (expired(w.start + config.windowMs)) windows.delete(key);
    }
    return { points, late };
  },

  snapshot() {
    const state = {
      version: STATE_VERSION,
      watermark,
      windows: [...windows.values()].sort(byStartThenPage),
    };
    return new TextEncoder().encode(JSON.stringify(state));
  },

  restore(bytes) {
    let state;
    try {
      state = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw { payload: { message: `state is not JSON: ${e.message}` } };
    }
    if (state === null || state.version !== STATE_VERSION || !Array.isArray(state.windows)) {
      throw { payload: { message: `state not understood by this version (want version ${STATE_VERSION})` } };
    }
    const restored = new Map();
    for (const w of state.windows) {
      restored.set(`${w.start}\u0000${w.page}`, {
        start: w.start,
        page: w.page,
        sum: w.sum,
        max: w.max,
        count: w.count,
        dirty: w.dirty,
      });
    }
    windows = restored;
    watermark = state.watermark;
    // The state is one whole: report it kept (the host shows this per part).
    return { kept: ['state'], reset: [], dropped: [], added: [] };
  },
};
