//! Live push through the real server: WebSocket and SSE clients get every
//! point and alert of their subscription, in the order the files hold them;
//! a client that stops reading loses its oldest messages (and is told),
//! while the engine and the other clients go on.

use crate::support::{Server, parse_ndjson, wait_until};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::Message;

const START: i64 = 1_767_225_600_000;

fn traffic(n: usize, seed: u64) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            &n.to_string(),
            "--duration",
            "1s",
            "--event-rate",
            "2",
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--start-ms",
            &START.to_string(),
            "--output",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn post_lines(s: &Server, lines: &[String]) {
    for chunk in lines.chunks(250) {
        loop {
            let (st, r) = s.post_raw(
                "/v1/events",
                "application/x-ndjson",
                chunk.join("\n").as_bytes(),
                None,
            );
            match st {
                202 => break,
                429 => std::thread::sleep(Duration::from_millis(50)),
                _ => panic!("{st}: {r}"),
            }
        }
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn connect(s: &Server, subscribe: &[&str]) -> Ws {
    connect_with(s, subscribe, None)
}

/// A client, optionally with a small socket receive buffer.
fn connect_with(s: &Server, subscribe: &[&str], recv_buffer: Option<usize>) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n).unwrap();
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/v1/stream", s.port);
    let (ws, _) =
        tungstenite::client(url, tungstenite::stream::MaybeTlsStream::Plain(stream)).unwrap();
    let mut ws = ws;
    ws.send(Message::Text(
        json!({ "subscribe": subscribe }).to_string().into(),
    ))
    .unwrap();
    let ack = next(&mut ws, Duration::from_secs(10)).expect("an answer to subscribe");
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ws
}

/// The next message, within `wait`.
fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("websocket: {e}"),
        }
    }
    None
}

/// Reads messages until `done` says so (or 30 s pass).
fn read_until(ws: &mut Ws, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !done(&got) {
        assert!(
            std::time::Instant::now() < until,
            "timed out; got {} messages",
            got.len()
        );
        if let Some(m) = next(ws, Duration::from_millis(200)) {
            got.push(m);
        }
    }
    got
}

/// The points of `measurements` in `metrics.lp`, in file order, as the stream sends them.
fn points_in_file(s: &Server, measurements: &[&str]) -> Vec<Value> {
    s.read("metrics.lp")
        .lines()
        .map(crate::sinks::parse_line)
        .filter(|(m, ..)| measurements.contains(&m.as_str()))
        .map(|(m, tags, fields, ts)| json!({"measurement": m, "tags": tags, "fields": fields, "timestamp": ts}))
        .collect()
}

/// A point message in the shape `points_in_file` gives (numbers as f64).
fn as_point(m: &Value) -> Value {
    let fields: serde_json::Map<String, Value> = m["fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().map_or(v.clone(), |f| json!(f))))
        .collect();
    json!({"measurement": m["measurement"], "tags": m["tags"], "fields": fields, "timestamp": m["timestamp"]})
}

#[test]
fn live_push_delivers_every_point_and_alert_in_order() {
    let s = Server::start("[engine]\nidle_timeout = \"1h\"\n");
    let mut ws = connect(&s, &["page_views", "revenue", "alerts"]);
    let mut sampled = connect(&s, &["events", "stats"]);
    // SSE, as curl would read it.
    let sse = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    std::io::Write::write_all(
        &mut &sse,
        b"GET /v1/stream?subscribe=page_views,alerts HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let lines = traffic(3_000, 21);
    post_lines(&s, &lines);
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 3 * 3_600_000}).to_string()],
    );
    s.wait_idle();
    let want_points = points_in_file(&s, &["page_views", "revenue"]);
    let want_alerts = parse_ndjson(&s.read("alerts.jsonl"));
    assert!(
        want_points.len() > 50 && want_alerts.len() > 3,
        "{} {}",
        want_points.len(),
        want_alerts.len()
    );
    let count = |v: &[Value], t: &str| v.iter().filter(|m| m["type"] == t).count();
    let got = read_until(&mut ws, |v| {
        count(v, "point") >= want_points.len() && count(v, "alert") >= want_alerts.len()
    });
    let points: Vec<Value> = got
        .iter()
        .filter(|m| m["type"] == "point")
        .map(as_point)
        .collect();
    let alerts: Vec<Value> = got
        .iter()
        .filter(|m| m["type"] == "alert")
        .map(|m| {
            let mut a = m.clone();
            a.as_object_mut().unwrap().remove("type");
            a
        })
        .collect();
    assert_eq!(
        points, want_points,
        "every point of the subscription, in file order"
    );
    assert_eq!(alerts, want_alerts, "every alert, in file order");
    assert_eq!(count(&got, "dropped"), 0);
    assert!(
        got.iter()
            .all(|m| m["type"] != "event" && m["measurement"] != "events"),
        "only what was asked for"
    );
    // The SSE client got the same page views and alerts.
    let mut reader = BufReader::new(sse);
    let want_sse = points_in_file(&s, &["page_views"]).len() + want_alerts.len();
    let mut sse_msgs = Vec::new();
    while sse_msgs.len() < want_sse {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "SSE closed");
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            sse_msgs.push(serde_json::from_str::<Value>(data.trim()).unwrap());
        }
    }
    let sse_points: Vec<Value> = sse_msgs
        .iter()
        .filter(|m| m["type"] == "point")
        .map(as_point)
        .collect();
    assert_eq!(sse_points, points_in_file(&s, &["page_views"]));
    // The sample: enriched events, at most sample_rate (20) a second, and figures once a second.
    let sample = read_until(&mut sampled, |v| count(v, "stats") >= 2);
    let events: Vec<&Value> = sample.iter().filter(|m| m["type"] == "event").collect();
    assert!(!events.is_empty(), "a sample of the stream");
    assert!(
        events.len() <= 20 * 3,
        "{} events sampled in under three seconds",
        events.len()
    );
    assert!(
        events
            .iter()
            .all(|e| e["event_id"].is_string() && e["properties"].is_object())
    );
    let stats = sample.iter().find(|m| m["type"] == "stats").unwrap();
    assert_eq!(
        stats["processed"],
        s.metric("nexuspipe_events_processed_total") as u64,
        "{stats}"
    );
}

#[test]
fn a_slow_client_loses_its_oldest_messages_and_nobody_waits_for_it() {
    let s = Server::start(
        "[engine]\nidle_timeout = \"1h\"\n[stream]\nsample_rate = 1000000\nclient_queue = 256\nmax_clients = 3\n",
    );
    // Asks for every event, then never reads: its socket fills, then its queue.
    let mut slow = connect_with(&s, &["events"], Some(4096));
    // The other client keeps up: it reads all along, on its own thread.
    let fast = connect(&s, &["page_views", "alerts"]);
    let got = Arc::new(Mutex::new(Vec::<Value>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (got, stop) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut fast = fast;
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = next(&mut fast, Duration::from_millis(200)) {
                    got.lock().unwrap().push(m);
                }
            }
            fast
        })
    };
    let lines = traffic(20_000, 22);
    post_lines(&s, &lines);
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 4 * 3_600_000}).to_string()],
    );
    // The engine went on: everything accepted was processed.
    s.wait_idle();
    let want_points = points_in_file(&s, &["page_views"]);
    let want_alerts = parse_ndjson(&s.read("alerts.jsonl")).len();
    let count = |v: &[Value], t: &str| v.iter().filter(|m| m["type"] == t).count();
    wait_until(
        30,
        "the other client got as many points and alerts as the files",
        || {
            let v = got.lock().unwrap();
            count(&v, "point") >= want_points.len() && count(&v, "alert") >= want_alerts
        },
    );
    stop.store(true, Ordering::Relaxed);
    // Still connected: it counts against max_clients below.
    let _fast = reader.join().unwrap();
    let got = got.lock().unwrap();
    let points: Vec<Value> = got
        .iter()
        .filter(|m| m["type"] == "point")
        .map(as_point)
        .collect();
    assert_eq!(points, want_points, "the other client got everything");
    assert_eq!(count(&got, "dropped"), 0);
    drop(got);
    // The slow client, reading at last, is told what it missed (soon: the
    // server keeps little of it in socket buffers, the rest in its queue).
    let late = read_until(&mut slow, |v| v.iter().any(|m| m["type"] == "dropped"));
    let dropped = late.iter().find(|m| m["type"] == "dropped").unwrap();
    assert!(dropped["count"].as_u64().unwrap() > 0, "{dropped}");
    // max_clients: the next one past three is refused.
    let _third = connect(&s, &["stats"]);
    match tungstenite::connect(format!("ws://127.0.0.1:{}/v1/stream", s.port)) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a fourth client was let in: {:?}", other.map(|_| ())),
    }
    wait_until(5, "metrics still answer", || {
        s.metric("nexuspipe_events_processed_total") > 0.0
    });
}

/// A point pushed live can be queried the moment it arrives: the push goes
/// out once the store shows it, so a dashboard that asks for the window it
/// was told about finds it. The store's disk is full at first (its thread
/// waits on its log), which is when a push sent ahead of the store's write
/// would name points a query cannot find yet.
#[test]
fn a_point_pushed_live_can_be_queried_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = crate::sinks::SmallDisk::mount(dir.path().join("data"), "8m");
    // The funnel alone, its points bound for an InfluxDB that is not there
    // (held in memory): the store is what writes to the small disk (no
    // write-ahead log, which would refuse the events instead).
    let config = format!(
        "[engine]\nidle_timeout = \"1h\"\ndurability = \"memory\"\n[[plugins]]\nname = \"funnel\"\npath = {:?}\n\
         [influxdb]\nurl = \"http://127.0.0.1:9\"\napi = \"v1\"\ndatabase = \"np\"\n",
        crate::support::plugin_dir()
            .join("funnel.wasm")
            .display()
            .to_string()
    );
    let s = Server::start_in(dir, &config);
    let mut ws = connect(&s, &["page_views"]);
    let filler = disk.fill();
    let lines = traffic(3_000, 33);
    let port = s.port;
    let poster = std::thread::spawn(move || {
        let url = format!("http://127.0.0.1:{port}/v1/events");
        for chunk in lines.chunks(100) {
            loop {
                match ureq::post(&url)
                    .set("Content-Type", "application/x-ndjson")
                    .send_string(&chunk.join("\n"))
                {
                    Ok(_) => break,
                    Err(ureq::Error::Status(429, _)) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    });
    let mut checked = 0;
    let mut freed = false;
    while checked < 40 {
        // Room again once the pipeline has been held back a while.
        if !freed && (checked >= 5 || s.metric("nexuspipe_events_processed_total") >= 1_000.0) {
            std::fs::remove_file(&filler).unwrap();
            freed = true;
        }
        let Some(m) = next(&mut ws, Duration::from_millis(500)) else {
            continue;
        };
        if m["type"] != "point" {
            continue;
        }
        let ts = m["timestamp"].as_i64().unwrap_or_else(|| panic!("{m}"));
        let url = s.url(&format!(
            "/v1/metrics?metric=page_views&start_time={ts}&end_time={}",
            ts + 1
        ));
        let body: Value =
            serde_json::from_str(&ureq::get(&url).call().unwrap().into_string().unwrap()).unwrap();
        let found = body["series"].as_array().is_some_and(|series| {
            series.iter().any(|s| {
                s["tags"] == m["tags"]
                    && s["timestamps"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t.as_i64() == Some(ts)))
            })
        });
        assert!(found, "pushed {m}, but the query at once gave {body}");
        checked += 1;
    }
    poster.join().unwrap();
}
