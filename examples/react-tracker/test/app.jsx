// A small shop in React, for the browser test (host/tests/browser/tracker.test.mjs):
// React Router page views, a tracked click, identify. The collector's
// origin comes from the page (window.NEXUSPIPE).
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { BrowserRouter, Link, Route, Routes } from 'react-router';
import { NexusPipeProvider, useIdentify, useTrack } from '../src/index.js';
import { RouterPageViews } from '../src/router.js';

function Product() {
  const track = useTrack();
  const identify = useIdentify();
  return (
    <>
      <h1>Product p1</h1>
      <button id="add" onClick={() => track('add_to_cart', { product_id: 'p1', amount: 12.5 })}>
        Add to cart
      </button>
      <button id="login" onClick={() => identify('user-42')}>
        Log in
      </button>
    </>
  );
}

function App() {
  return (
    <NexusPipeProvider endpoint={window.NEXUSPIPE} site="react-shop">
      <BrowserRouter basename="/react">
        <RouterPageViews />
        <nav>
          <Link id="home" to="/">Home</Link> <Link id="p1" to="/products/p1">p1</Link>{' '}
          <Link id="cart" to="/cart?step=1">Cart</Link>
        </nav>
        <Routes>
          <Route path="/" element={<h1>Home</h1>} />
          <Route path="/products/p1" element={<Product />} />
          <Route path="/cart" element={<h1>Cart</h1>} />
        </Routes>
      </BrowserRouter>
    </NexusPipeProvider>
  );
}

// StrictMode mounts every effect twice in development: the test shows no
// event is lost or doubled by that.
createRoot(document.getElementById('root')).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
