//! Clients that hold connections: slow bodies, idle keep-alives, floods
//! (`[http] read_timeout`, `idle_timeout`, `max_connections`), over raw TCP;
//! and the API over TLS (`tls_cert`, `tls_key`).

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn connect(s: &Server) -> TcpStream {
    let t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // A bound on every read: a test that waits for a close cannot hang.
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    t
}

/// Reads one response (head, then `content-length` bytes): status and head.
fn response(t: &mut impl Read) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(t.read(&mut byte).unwrap(), 1, "closed mid-head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    t.read_exact(&mut body).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head + &String::from_utf8_lossy(&body))
}

fn get(t: &mut (impl Read + Write), path: &str) -> (u16, String) {
    write!(t, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    response(t)
}

/// Whether the server closed the connection: a read gives end of file (or a reset).
fn closed(t: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match t.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// A body trickling in (a byte every 300 ms against a 2 s `read_timeout`)
/// is answered 408 and its connection closed; a head trickling in is cut
/// off too; the server goes on serving others.
#[test]
fn a_request_trickling_in_is_cut_off_after_read_timeout() {
    let s = Server::start("[http]\nread_timeout = \"2s\"\n");
    let mut t = connect(&s);
    let started = Instant::now();
    write!(
        t,
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    let mut writer = t.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (status, text) = response(&mut t);
    let took = started.elapsed();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("read_timeout"), "{text}");
    assert!(closed(&mut t), "the connection stayed open");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "cut off after {took:?}"
    );
    trickle.join().unwrap();

    // On a kept-alive connection, after a first request, as a slow client's
    // second request would come.
    let mut head = connect(&s);
    assert_eq!(get(&mut head, "/healthz").0, 200);
    let started = Instant::now();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    assert!(
        closed(&mut head),
        "a head left unfinished kept its connection"
    );
    // After read_timeout (kept in whole milliseconds), not after the
    // (default, 60 s) idle_timeout.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "a head left unfinished was cut off after {took:?}"
    );

    assert_eq!(get(&mut connect(&s), "/healthz").0, 200);
    assert!(s.log().contains("read_timeout"), "{}", s.log());
}

/// A large body arriving at a steady pace (256 KiB/s, for about 3 s against
/// a 2 s `read_timeout`) is not a slow client: each 64 KiB received buys a
/// second, and the events are taken.
#[test]
fn a_large_body_at_a_steady_pace_outlasts_read_timeout() {
    let s = Server::start("[http]\nread_timeout = \"2s\"\n");
    let pad = "x".repeat(900);
    let body: String = (0..800)
        .map(|i| format!("{{\"event_type\":\"page_view\",\"event_id\":\"big-{i}\",\"properties\":{{\"pad\":\"{pad}\"}}}}\n"))
        .collect();
    let mut t = connect(&s);
    let started = Instant::now();
    write!(
        t,
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for chunk in body.as_bytes().chunks(32 << 10) {
        t.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(125));
    }
    let (status, text) = response(&mut t);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the body took {:?}, not longer than read_timeout",
        started.elapsed()
    );
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("\"accepted\":800"), "{text}");
}

/// A keep-alive connection serves one request after another, then, left
/// idle for `idle_timeout`, is closed by the server.
#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let s = Server::start("[http]\nidle_timeout = \"1s\"\n");
    let mut t = connect(&s);
    assert_eq!(get(&mut t, "/healthz").0, 200);
    assert_eq!(get(&mut t, "/readyz").0, 200, "not kept alive");
    let idle_from = Instant::now();
    assert!(closed(&mut t), "an idle connection stayed open");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(15),
        "closed after {idle:?} idle"
    );
}

/// With `max_connections = 3`, connections past three are answered 503 and
/// closed, while those already open go on being served; once one closes,
/// a new one is taken.
#[test]
fn connections_past_max_connections_are_refused_and_the_others_served() {
    let s = Server::start("[http]\nmax_connections = 3\n");
    // Some of the three may be taken already (the readiness probe's pooled
    // connection): open until one is refused.
    let mut open = Vec::new();
    let refused = loop {
        let mut t = connect(&s);
        let (status, text) = get(&mut t, "/healthz");
        if status == 503 {
            break (t, text);
        }
        assert_eq!(status, 200, "{text}");
        open.push(t);
        assert!(open.len() <= 3, "a fourth connection was served");
    };
    let (mut t, text) = refused;
    assert!(!open.is_empty(), "no connection was served");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("max_connections"), "{text}");
    assert!(closed(&mut t), "a refused connection stayed open");
    // The open ones are still served.
    for t in &mut open {
        assert_eq!(get(t, "/healthz").0, 200);
    }
    drop(open.pop());
    wait_until(10, "a connection taken once another closed", || {
        get(&mut connect(&s), "/healthz").0 == 200
    });
}

/// With `tls_cert` and `tls_key` (a certificate made here for 127.0.0.1),
/// the API speaks HTTPS: a client trusting that certificate posts an event
/// and sees it processed; plain HTTP on the port gets no HTTP answer.
#[test]
fn the_api_speaks_tls_with_the_configured_certificate() {
    use std::sync::Arc;
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let s = Server::launch_role(
        &format!("[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
        "all",
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let tls = || {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        rustls::StreamOwned::new(conn, connect(&s))
    };
    wait_until(60, "the API over TLS", || {
        // Not listening yet: refused, and the next try comes.
        if TcpStream::connect(("127.0.0.1", s.port)).is_err() {
            return false;
        }
        let mut t = tls();
        write!(t, "GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n").is_ok() && t.flush().is_ok() && {
            let mut first = [0u8; 12];
            t.read_exact(&mut first).is_ok() && &first == b"HTTP/1.1 200"
        }
    });
    let event = r#"{"event_type":"page_view","user_id":"u1"}"#;
    let mut t = tls();
    write!(
        t,
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
        event.len()
    )
    .unwrap();
    let (status, text) = response(&mut t);
    assert_eq!(status, 202, "{text}");
    wait_until(30, "the event processed", || {
        let (_, text) = get(&mut tls(), "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("nexuspipe_events_processed_total "))
            .is_some_and(|v| v.trim() == "1")
    });
    // Plain HTTP on the TLS port.
    let mut plain = connect(&s);
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A live stream being sent is not idle: an SSE client quiet for longer than
/// `idle_timeout` (pings every 30 s) still gets what comes next.
#[test]
fn a_live_stream_outlasts_idle_timeout() {
    let s = Server::start("[http]\nidle_timeout = \"1s\"\n[stream]\nping_interval = \"30s\"\n");
    let mut sse = connect(&s);
    sse.write_all(
        b"GET /v1/stream?subscribe=events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sse.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Quiet for more than idle_timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, _) =
        s.post(&serde_json::json!({"event_type": "page_view", "event_id": "after-quiet"}));
    assert_eq!(status, 202);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("after-quiet") {
        let n = sse.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "the stream was closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}
