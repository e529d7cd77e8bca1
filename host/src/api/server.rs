//! The HTTP server loop, hardened against clients that hold connections:
//! a request's head and body must arrive within `read_timeout`, a keep-alive
//! connection idle for `idle_timeout` is closed, and past `max_connections`
//! a new connection is answered `503` and closed at once, so the clients
//! already connected are served as before.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Unsent bytes a connection may leave in the kernel: what a stalled
/// live-push client cannot take waits in its bounded queue (where the oldest
/// are dropped and it is told), not in megabytes of socket buffer it would
/// read minutes later.
const NOTSENT_LOWAT: u32 = 256 << 10;

/// Refused connections answered at once (each for at most a second); past
/// this, a flood's connections are closed without an answer, so refusing
/// costs bounded tasks and descriptors.
const MAX_ANSWERING: usize = 64;

/// The TLS side of `[http] tls_cert` and `tls_key`: TLS 1.2 and 1.3, HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("http.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "http.tls_cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("http.tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("http.tls_cert and http.tls_key do not make a certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`
/// completes, then waits for the requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    // Told to every connection at shutdown; `running` counts the connection
    // tasks (an upgraded live-push socket has left its task).
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let running = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    let mut shutdown = std::pin::pin!(shutdown);
    // Refused connections: being answered, and since the last log line.
    let answering = Arc::new(AtomicUsize::new(0));
    let (mut refused, mut last_warned) = (0u64, None);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            refused += 1;
            if last_warned.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                // At most a line a second through a flood.
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused,
                    "connections refused: http.max_connections are open"
                );
                last_warned = Some(Instant::now());
                refused = 0;
            }
            // Plain HTTP gets an answer, while few are being answered; over
            // TLS none without a handshake, and none is spent on it.
            if tls.is_none() && answering.load(Ordering::Acquire) < MAX_ANSWERING {
                answering.fetch_add(1, Ordering::AcqRel);
                let answering = answering.clone();
                tokio::spawn(async move {
                    refuse(tcp, limits.max_connections).await;
                    answering.fetch_sub(1, Ordering::AcqRel);
                });
            }
            continue;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
            tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT");
        }
        let conn = Connection::new(open.clone());
        let (app, stopping, tls) = (app.clone(), stopping.clone(), tls.clone());
        let task = Running::start(running.clone());
        tokio::spawn(async move {
            let _task = task;
            match tls {
                None => serve_connection(tcp, conn, app, limits, remote, stopping).await,
                Some(tls) => match tokio::time::timeout(limits.read_timeout, tls.accept(tcp)).await
                {
                    Ok(Ok(tcp)) => serve_connection(tcp, conn, app, limits, remote, stopping).await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %remote, "TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "TLS handshake cut off after http.read_timeout")
                    }
                },
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    loop {
        let mut done = std::pin::pin!(running.1.notified());
        // Registered before the count is read, so the last task's notice is not missed.
        done.as_mut().enable();
        if running.0.load(Ordering::Acquire) == 0 {
            break;
        }
        done.await;
    }
}

/// Counts a connection task while it runs (see [`serve`]'s shutdown).
struct Running(Arc<(AtomicUsize, tokio::sync::Notify)>);

impl Running {
    fn start(r: Arc<(AtomicUsize, tokio::sync::Notify)>) -> Self {
        r.0.fetch_add(1, Ordering::AcqRel);
        Running(r)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

/// One connection's requests, until it closes, idles out or the server stops.
async fn serve_connection<S>(
    io: S,
    conn: Arc<Connection>,
    app: Router,
    limits: Limits,
    remote: SocketAddr,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(Activity {
        inner: io,
        conn: conn.clone(),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(app.clone(), conn.clone(), remote, limits.read_timeout, req)
        })
    };
    // No hyper timer: its header_read_timeout also runs while a keep-alive
    // connection waits for its next request, so it closed idle browser
    // connections every read_timeout, and a browser's request sent on one
    // just then failed (the dashboard test saw it). The head's deadline
    // starts at its first byte instead (see `Connection::watch`).
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut served = std::pin::pin!(served);
    let idle = conn.watch(limits.idle_timeout, limits.read_timeout);
    let r = tokio::select! {
        r = served.as_mut() => Some(r),
        why = idle => {
            match why {
                Closing::Idle => tracing::debug!(peer = %remote, "idle connection closed"),
                Closing::SlowHead => tracing::warn!(peer = %remote, "request head too slow: cut off after http.read_timeout"),
            }
            None
        }
        _ = stopping.changed() => {
            // Finish the request in progress, take no more.
            served.as_mut().graceful_shutdown();
            Some(served.await)
        }
    };
    if let Some(Err(e)) = r {
        tracing::debug!(error = %e, peer = %remote, "connection ended");
    }
}

/// Answers a connection past `max_connections` and closes it.
async fn refuse(mut tcp: tokio::net::TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"too_many_connections\",\"message\":\"{max} connections are open (http.max_connections); retry later\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Then a lingering close: what the client sends meanwhile is read and
    // dropped, so its kernel does not reset the connection before it has
    // read the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One request through the app, its body bound by the read deadline.
async fn handle(
    mut app: Router,
    conn: Arc<Connection>,
    remote: SocketAddr,
    read_timeout: Duration,
    req: Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let busy = conn.busy();
    // The head is in: its deadline is over (the body has its own).
    conn.head_since.store(NO_HEAD, Ordering::Relaxed);
    let late = Arc::new(AtomicBool::new(false));
    let mut req = req.map(|body| {
        axum::body::Body::new(Deadline {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(read_timeout)),
            until: tokio::time::Instant::now() + read_timeout,
            received: 0,
            late: late.clone(),
        })
    });
    req.extensions_mut().insert(ConnectInfo(remote));
    let response = tower_service::Service::call(&mut app, req).await?;
    if late.load(Ordering::Acquire) {
        // Whatever the handler made of the cut body, the client hears why,
        // and the connection goes with the rest of that body.
        let mut r = (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": "read_timeout",
                "message": format!("the request did not arrive within {read_timeout:?} (http.read_timeout)"),
            })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        tracing::warn!(peer = %remote, "request body too slow: cut off after http.read_timeout");
        return Ok(r);
    }
    // Busy until the answer is sent: a live stream (SSE) is never idle.
    Ok(response.map(|body| {
        axum::body::Body::new(Held {
            inner: body,
            _busy: busy,
        })
    }))
}

/// A response body that keeps its connection busy while it is sent.
struct Held {
    inner: axum::body::Body,
    _busy: Busy,
}

impl Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The pace a large body may keep beyond `read_timeout`: a plugin upload of
/// tens of MiB on a slow link is not a slow client, one trickling bytes is.
const MIN_BODY_RATE: u64 = 64 << 10;

/// A request body that fails once its deadline has passed: `read_timeout`
/// from the head, plus a second per `MIN_BODY_RATE` bytes received.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When `read_timeout` from the head runs out.
    until: tokio::time::Instant,
    received: u64,
    late: Arc<AtomicBool>,
}

impl Body for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let earned = Duration::from_millis(self.received * 1000 / MIN_BODY_RATE);
            let deadline = self.until + earned;
            if deadline <= tokio::time::Instant::now() {
                self.late.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(
                    "the request body did not arrive within http.read_timeout".into(),
                )));
            }
            // What came meanwhile bought time: wait on.
            self.sleep.as_mut().reset(deadline);
            let _ = self.sleep.as_mut().poll(cx);
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(data) = f.data_ref()
        {
            self.received += data.len() as u64;
        }
        frame.map_err(axum::BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's activity, for the idle watch.
struct Connection {
    open: Arc<AtomicUsize>,
    started: Instant,
    /// Milliseconds since `started` of the last byte read or written.
    last: AtomicU64,
    /// Requests being handled (a slow handler is not idleness).
    busy: AtomicUsize,
    /// Milliseconds since `started` of the first byte of a request head
    /// not yet complete; `NO_HEAD` when none is coming in.
    head_since: AtomicU64,
    /// Wakes the watch when a head begins: its deadline may be sooner than
    /// the idle check the watch sleeps until.
    head_begun: tokio::sync::Notify,
}

const NO_HEAD: u64 = u64::MAX;

/// Why the watch closes a connection.
enum Closing {
    Idle,
    SlowHead,
}

impl Connection {
    fn new(open: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Connection {
            open,
            started: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            head_begun: tokio::sync::Notify::new(),
        })
    }

    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Bytes came in: with no request at work they begin a head, whose
    /// deadline starts now.
    fn read_some(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
        if self.busy.load(Ordering::Acquire) == 0 {
            let begun =
                self.head_since
                    .compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Relaxed);
            if begun.is_ok() {
                // Stored for the watch if it is not waiting right now.
                self.head_begun.notify_one();
            }
        }
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Completes when the connection should close: no request in progress
    /// and no bytes either way for `idle`, or a request head begun more than
    /// `read_timeout` ago and still not complete.
    async fn watch(&self, idle: Duration, read_timeout: Duration) -> Closing {
        loop {
            let now = self.started.elapsed();
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = now.saturating_sub(last);
            let busy = self.busy.load(Ordering::Acquire) > 0;
            let head = self.head_since.load(Ordering::Acquire);
            let mut wait = if busy {
                idle
            } else {
                idle.saturating_sub(quiet)
            };
            if !busy && head != NO_HEAD {
                let began = now.saturating_sub(Duration::from_millis(head));
                if began >= read_timeout {
                    return Closing::SlowHead;
                }
                wait = wait.min(read_timeout - began);
            }
            if quiet >= idle && !busy {
                return Closing::Idle;
            }
            // Check again when it could first close (while a request or a
            // stream is at work, that is an idle period away at the soonest),
            // or when a head begins and its deadline starts.
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                () = self.head_begun.notified() => {}
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Busy(Arc<Connection>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting when bytes move.
struct Activity<S> {
    inner: S,
    conn: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.read_some();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
