//! Live-push clients for `make bench-query`: N WebSocket clients on
//! `/v1/stream`, each subscribed to everything, counting what they receive.
//!
//! `ws_clients <ws-url> <clients>` connects and subscribes them all, prints
//! `ready`, counts messages until its stdin closes, then prints
//! `{"clients": n, "messages_per_client": <median>}`. Written in Rust (a
//! thread per client, blocking reads) so that on a 2-core machine the
//! clients cost little of the CPU the server is measured on: a Python
//! client spends more per message than the server does.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

const SUBSCRIBE: &str = r#"{"subscribe": ["events", "alerts", "stats", "page_views", "revenue", "unique_users", "daily_users", "top_products", "funnel"]}"#;

fn connect(url: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    for _ in 0..600 {
        if let Ok((mut ws, _)) = tungstenite::connect(url) {
            ws.send(Message::text(SUBSCRIBE)).expect("subscribe");
            // The acknowledgement: the subscription is in place.
            loop {
                match ws.read().expect("subscribed") {
                    Message::Text(t) if t.contains("\"subscribed\"") => return ws,
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot connect to {url}");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (url, n) = match args.as_slice() {
        [url, n] => (url.clone(), n.parse::<usize>().expect("clients: a number")),
        // `cargo test --all-targets` runs every bench once without arguments: this one
        // needs a server, which host/benches/query.py starts, so it has nothing to do then.
        [] => {
            eprintln!(
                "ws_clients: run by host/benches/query.py (usage: ws_clients <ws-url> <clients>)"
            );
            return;
        }
        _ => panic!("usage: ws_clients <ws-url> <clients>"),
    };
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for i in 0..n {
        let (url, counts, ready) = (url.clone(), counts.clone(), ready_tx.clone());
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let mut ws = connect(&url);
                ready.send(()).expect("ready");
                // Pongs are answered by tungstenite inside read().
                while let Ok(m) = ws.read() {
                    if matches!(m, Message::Text(_)) {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("client thread");
    }
    for _ in 0..n {
        ready_rx.recv().expect("client ready");
    }
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    // Count until the caller closes stdin.
    for _ in std::io::stdin().lock().lines() {}
    let mut got: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    got.sort_unstable();
    let median = got.get(n / 2).copied().unwrap_or(0);
    println!("{{\"clients\": {n}, \"messages_per_client\": {median}}}");
    std::process::exit(0);
}
