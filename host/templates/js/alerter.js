// A NexusPipe alerter: events and event-time progress in, alerts out.
//
// This one raises an alert for every `error` event. Replace it with your
// rules. Built with `nexuspipe plugin build` (jco componentize, world
// `alerter` of wit/plugin.wit).
//
// WIT to JS: s64 is a BigInt, u32 a Number, an option is a value or
// `undefined`, a variant is `{ tag, val }`, an enum is its name as a string,
// flags are objects of booleans, and a `result` error is thrown as
// `{ payload: <error record> }`.

import { log } from 'nexuspipe:plugin/host@0.4.0';

export const alerting = {
  init(config, settings) {
    // Parse your config here (an empty string means the default config).
    if (config !== '') {
      throw { payload: { field: undefined, message: 'this plugin takes no config yet' } };
    }
    log('info', 'alerter ready', []);
    // What the host sends: `error` events only, no properties, no metadata,
    // with their id and user id.
    return {
      eventTypes: ['error'],
      properties: [],
      metadata: { ipAddress: false, userAgent: false, platform: false, url: false, referrer: false },
      fields: { id: true, userId: true, sessionId: false },
    };
  },

  process(events, watermark) {
    const alerts = [];
    for (const event of events) {
      // Your rules here.
      if (event.eventType !== 'error') continue;
      const key = event.userId ?? 'anonymous';
      alerts.push({
        ruleId: 'error_event',
        key,
        status: 'firing',
        severity: 'warning',
        summary: `an error from ${key}`,
        labels: [['rule', 'error_event']],
        startsAt: event.timestamp,
        endsAt: undefined,
        fingerprint: event.id,
      });
    }
    return { alerts, late: [] };
  },

  // This alerter keeps no state between batches; a windowed rule would
  // serialize its state here and read it back in `restore`.
  snapshot() {
    return new Uint8Array(0);
  },

  restore(bytes) {
    return { kept: [], reset: [], dropped: [], added: [] };
  },
};
