// Compiled by `npm run typecheck` (tsc --noEmit): the declared types
// accept what the README shows and refuse what they should.
import { NexusPipeProvider, useIdentify, useTrack, usePageView } from '@nexuspipe/react-tracker';
import { RouterPageViews } from '@nexuspipe/react-tracker/router';
import { createTracker } from '@nexuspipe/tracker';

export function Button() {
  const track = useTrack();
  const identify = useIdentify();
  usePageView('/x?y=1');
  track('add_to_cart', { product_id: 'p1', amount: 12.5, gift: false });
  identify('user-42');
  // @ts-expect-error properties are flat values
  track('bad', { nested: { a: 1 } });
  return <button onClick={() => track('click')}>x</button>;
}

export const app = (
  <NexusPipeProvider endpoint="https://collector.example" site="site123" respectDnt>
    <RouterPageViews />
    <Button />
  </NexusPipeProvider>
);

const t = createTracker({ endpoint: 'https://collector.example' });
t.track('signup');
t.watch();
// @ts-expect-error an endpoint is required
createTracker({ site: 'x' });
