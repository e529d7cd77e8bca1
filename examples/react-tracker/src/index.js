// React bindings for NexusPipe's browser tracker. All batching, retrying,
// ids and sessions are the tracker's own (@nexuspipe/tracker, the code
// behind GET /tracker.js); this file only puts it in a React context.
import { createContext, createElement, useCallback, useContext, useEffect, useRef } from 'react';
import { createTracker } from '@nexuspipe/tracker';

export const NexusPipeContext = createContext(null);

// Children's effects run before their parent's, so calls made before the
// tracker exists wait in a queue, like the script tag's `nexuspipe.q`.
function useHandle() {
  const ref = useRef(null);
  if (!ref.current) {
    const h = { tracker: null, queue: [] };
    h.call = (method, ...args) => (h.tracker ? h.tracker[method](...args) : h.queue.push([method, args]));
    ref.current = h;
  }
  return ref.current;
}

export function NexusPipeProvider({ endpoint, site, respectDnt = false, autoPageViews = false, children }) {
  const h = useHandle();
  useEffect(() => {
    const t = createTracker({ endpoint, site, respectDnt });
    h.tracker = t;
    for (const [method, args] of h.queue.splice(0)) t[method](...args);
    if (autoPageViews) t.watch();
    return () => {
      h.tracker = null;
      t.stop();
    };
  }, [h, endpoint, site, respectDnt, autoPageViews]);
  return createElement(NexusPipeContext.Provider, { value: h }, children);
}

function useHandleOf(hook) {
  const h = useContext(NexusPipeContext);
  if (!h) throw new Error(hook + ' needs a <NexusPipeProvider> above it');
  return h;
}

export function useTrack() {
  const h = useHandleOf('useTrack');
  return useCallback((eventType, properties) => h.call('track', eventType, properties), [h]);
}

export function useIdentify() {
  const h = useHandleOf('useIdentify');
  return useCallback((userId) => h.call('identify', userId), [h]);
}

export function useReset() {
  const h = useHandleOf('useReset');
  return useCallback(() => h.call('reset'), [h]);
}

// A page view whenever `path` (a router's path and query) changes; without
// it, of the browser's address on mount.
export function usePageView(path) {
  const h = useHandleOf('usePageView');
  useEffect(() => {
    h.call('page', path);
  }, [h, path]);
}
