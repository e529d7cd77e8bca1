// A NexusPipe aggregator: events and event-time progress in, metric points out.
//
// This one counts events per minute by type, in 1-minute tumbling windows of
// event time. Replace it with your logic. Built with `nexuspipe plugin build`
// (jco componentize, world `aggregator` of wit/plugin.wit).
//
// WIT to JS: s64 is a BigInt, u32 a Number, an option is a value or
// `undefined`, a variant is `{ tag, val }`, flags are objects of booleans, and
// a `result` error is thrown as `{ payload: <error record> }`.

import { log } from 'nexuspipe:plugin/host@0.4.0';

const WINDOW_MS = 60000;

// Open windows: "start event_type" -> { start, eventType, count }.
let windows = new Map();
// The highest watermark seen so far (null before the first `process`).
let watermark = null;

function windowStart(ts) {
  return ts - (((ts % WINDOW_MS) + WINDOW_MS) % WINDOW_MS);
}

export const aggregate = {
  init(config, settings) {
    // Parse your config here (an empty string means the default config).
    if (config !== '') {
      throw { payload: { field: undefined, message: 'this plugin takes no config yet' } };
    }
    windows = new Map();
    watermark = null;
    log('info', 'aggregator ready', []);
    // What the host sends: every event type, no properties, no metadata, no
    // id / user id / session id (event type and timestamp always come).
    return {
      eventTypes: [],
      properties: [],
      metadata: { ipAddress: false, userAgent: false, platform: false, url: false, referrer: false },
      fields: { id: false, userId: false, sessionId: false },
    };
  },

  process(events, wm) {
    // componentize-js 0.22 hands a negative s64 argument over as unsigned: undo that.
    wm = BigInt.asIntN(64, wm);
    // 1. Add the events. Your logic here.
    const late = [];
    events.forEach((event, i) => {
      const start = windowStart(Number(event.timestamp));
      if (watermark !== null && start + WINDOW_MS <= watermark) {
        late.push(i); // its window was already emitted
        return;
      }
      const key = `${start} ${event.eventType}`;
      const w = windows.get(key) ?? { start, eventType: event.eventType, count: 0 };
      w.count += 1;
      windows.set(key, w);
    });

    // 2. Event time moves to the watermark (never backwards).
    const now = Number(wm);
    watermark = watermark === null ? now : Math.max(watermark, now);

    // 3. Emit and forget every window that closed, oldest first.
    const closed = [...windows.values()].filter((w) => w.start + WINDOW_MS <= watermark);
    closed.sort((a, b) => a.start - b.start || (a.eventType < b.eventType ? -1 : a.eventType > b.eventType ? 1 : 0));
    const points = closed.map((w) => {
      windows.delete(`${w.start} ${w.eventType}`);
      return {
        measurement: 'events_per_minute',
        tags: [['event_type', w.eventType]],
        fields: [['count', { tag: 'int', val: BigInt(w.count) }]],
        timestamp: BigInt(w.start),
      };
    });
    return { points, late };
  },

  // All state as bytes, for checkpoints and upgrades: here, JSON.
  snapshot() {
    const state = { watermark, windows: [...windows.values()] };
    return new TextEncoder().encode(JSON.stringify(state));
  },

  restore(bytes) {
    let state = { watermark: null, windows: [] }; // empty bytes: empty state
    if (bytes.length > 0) {
      try {
        state = JSON.parse(new TextDecoder().decode(bytes));
      } catch (e) {
        throw { payload: { message: `state is not JSON: ${e.message}` } };
      }
      const ok =
        state !== null && typeof state === 'object' && Array.isArray(state.windows) &&
        (state.watermark === null || typeof state.watermark === 'number') &&
        state.windows.every((w) => Number.isInteger(w?.start) && typeof w.eventType === 'string' && Number.isInteger(w.count));
      if (!ok) throw { payload: { message: 'state not understood by this version' } };
    }
    watermark = state.watermark;
    windows = new Map();
    for (const w of state.windows) {
      windows.set(`${w.start} ${w.eventType}`, { start: w.start, eventType: w.eventType, count: w.count });
    }
    return { kept: [], reset: [], dropped: [], added: [] };
  },
};
