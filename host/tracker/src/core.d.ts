/** Property values the server accepts. */
export type Properties = Record<string, string | number | boolean | null>;

export interface TrackerOptions {
  /** The collector's origin, e.g. `https://collector.example` (events go to `/v1/events`). */
  endpoint: string;
  /** Sent as `properties.site_id` on every event. */
  site?: string;
  /** Send nothing when the browser says Do-Not-Track or Global Privacy Control. */
  respectDnt?: boolean;
}

export interface Tracker {
  /** Queues an event; it goes out within 2 s, or at once when 20 are queued. */
  track(eventType: string, properties?: Properties): void;
  /**
   * A `page_view` of the current address (or of `path`, a router's path and
   * query), unless it is the one tracked last.
   */
  page(path?: string): void;
  /** Sets `user_id` on the events that follow (kept in localStorage). */
  identify(userId: string): void;
  /** Forgets the user, the anonymous id and the session (on logout). */
  reset(): void;
  /** Sends what is queued now. */
  flush(): void;
  /** Page views now and on every `pushState`, `replaceState` and `popstate`. */
  watch(): void;
  /** Stops the timer and listeners; what is queued stays for the next page. */
  stop(): void;
}

export function createTracker(options: TrackerOptions): Tracker;
