// A NexusPipe enricher: gets a batch of events, returns what to change.
//
// This one sets the property `is_mobile` on every event, from its user agent.
// Replace it with your logic. Built with `nexuspipe plugin build` (jco
// componentize, world `enricher` of wit/plugin.wit).
//
// WIT to JS: s64 is a BigInt, u32 a Number, an option is a value or
// `undefined`, a variant is `{ tag, val }`, flags are objects of booleans, and
// a `result` error is thrown as `{ payload: <error record> }`.

import { log } from 'nexuspipe:plugin/host@0.4.0';

export const enrich = {
  init(config, settings) {
    // Parse your config here (an empty string means the default config).
    if (config !== '') {
      throw { payload: { field: undefined, message: 'this plugin takes no config yet' } };
    }
    log('info', 'enricher ready', []);
    // What the host sends: every event type (empty list), no properties, only
    // the user agent from the metadata, no id / user id / session id.
    return {
      eventTypes: [],
      properties: [],
      metadata: { ipAddress: false, userAgent: true, platform: false, url: false, referrer: false },
      fields: { id: false, userId: false, sessionId: false },
    };
  },

  process(events) {
    const changes = [];
    events.forEach((event, index) => {
      // Your logic here: return a patch, a drop or an emit for any event.
      // Events not mentioned pass through unchanged.
      const userAgent = event.metadata.userAgent ?? '';
      changes.push({
        tag: 'patch',
        val: {
          index,
          eventType: undefined,
          userId: undefined,
          sessionId: undefined,
          setProperties: [{ key: 'is_mobile', value: { tag: 'boolean', val: userAgent.includes('Mobile') } }],
          removeProperties: [],
          metadata: undefined,
        },
      });
    });
    return changes;
  },
};
