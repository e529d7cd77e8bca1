// Page views on route change for React Router (v6 and later), from its
// location rather than by patching `history`, so hash and memory routers
// count too. Put <RouterPageViews /> inside the router.
import { useLocation } from 'react-router';
import { usePageView } from './index.js';

export function useRouterPageViews() {
  const { pathname, search } = useLocation();
  usePageView(pathname + search);
}

export function RouterPageViews() {
  useRouterPageViews();
  return null;
}
