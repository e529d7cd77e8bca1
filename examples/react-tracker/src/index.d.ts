import type { Context, ReactElement, ReactNode } from 'react';
import type { Properties } from '@nexuspipe/tracker';

export type { Properties };

export interface NexusPipeProviderProps {
  /** The collector's origin, e.g. `https://collector.example`. */
  endpoint: string;
  /** Sent as `properties.site_id` on every event. */
  site?: string;
  /** Send nothing when the browser says Do-Not-Track or Global Privacy Control. */
  respectDnt?: boolean;
  /**
   * Page views from `history` (load, pushState, replaceState, popstate), as
   * the script tag does; leave it off with React Router and use
   * `<RouterPageViews />` from `@nexuspipe/react-tracker/router`.
   */
  autoPageViews?: boolean;
  children?: ReactNode;
}

export function NexusPipeProvider(props: NexusPipeProviderProps): ReactElement;

/** `track(eventType, properties)`: queues an event. */
export function useTrack(): (eventType: string, properties?: Properties) => void;
/** `identify(userId)`: sets `user_id` on the events that follow. */
export function useIdentify(): (userId: string) => void;
/** `reset()`: forgets the user, the anonymous id and the session. */
export function useReset(): () => void;
/** A page view whenever `path` (a router's path and query) changes; without it, of the address on mount. */
export function usePageView(path?: string): void;

export const NexusPipeContext: Context<unknown>;
