import type { ReactElement } from 'react';

/** A page view on every change of React Router's location (path and query). */
export function useRouterPageViews(): void;
/** `useRouterPageViews` as a component: put it inside the router. */
export function RouterPageViews(): ReactElement | null;
