//! Retry policy shared by the InfluxDB and webhook sinks: exponential backoff
//! with jitter, and which answers are worth retrying.

use std::time::Duration;

/// Exponential backoff: `initial`, doubling per attempt, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (0 for the first retry). "Equal
    /// jitter": half of the step is fixed, half random, so many hosts retrying
    /// after one outage spread out instead of arriving together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Why a delivery attempt failed, and so what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Connection error, timeout, 5xx, 429 or 408: retry the same request later.
    Transient(String),
    /// The server refused the data itself (400, 413, 422): retrying it
    /// unchanged cannot help.
    Rejected { status: u16, message: String },
    /// Any other answer (401, 403, 404...): a configuration problem on one
    /// side or the other.
    Refused { status: u16, message: String },
}

impl Failure {
    /// Classifies a non-2xx HTTP answer.
    pub fn from_status(status: u16, body: &str) -> Failure {
        let message = format!("HTTP {status}: {}", body.trim());
        match status {
            408 | 429 | 500..=599 => Failure::Transient(message),
            400 | 413 | 422 => Failure::Rejected { status, message },
            _ => Failure::Refused { status, message },
        }
    }

    /// A request that got no answer (connect, timeout, reset).
    pub fn from_reqwest(e: &reqwest::Error) -> Failure {
        if let Some(status) = e.status() {
            return Failure::from_status(status.as_u16(), "");
        }
        // The chain names the real cause ("connection refused", "timed out").
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        Failure::Transient(message)
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) => m,
            Failure::Rejected { message, .. } | Failure::Refused { message, .. } => message,
        }
    }
}

/// How much of an error answer's body is read: enough for the server's
/// message, never more (the server controls the size).
pub const ANSWER_BYTES: usize = 4096;

/// Reads at most `ANSWER_BYTES` of a response body as text, then stops:
/// what a server answers must not decide how much the host allocates.
pub async fn answer_text(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = ANSWER_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if body.len() == ANSWER_BYTES {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..10 {
            let step = (100u64 << attempt).min(1000);
            let d = b.delay(attempt).as_millis() as u64;
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d} ms");
        }
    }

    /// A server answering with an endless body costs the host 4 KiB.
    #[test]
    fn an_answer_is_read_up_to_its_cap() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/write", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let head = "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n";
            conn.write_all(head.as_bytes()).unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            // Up to 1 GiB, until the client hangs up.
            (0..16_384)
                .take_while(|_| conn.write_all(chunk.as_bytes()).is_ok())
                .count()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(async {
            let resp = reqwest::get(&url).await.unwrap();
            assert_eq!(resp.status(), 400);
            answer_text(resp).await
        });
        assert_eq!(text, format!("{}…", "x".repeat(ANSWER_BYTES)));
        drop(rt);
        let sent = server.join().unwrap();
        assert!(
            sent < 16_384,
            "the host stopped reading ({sent} chunks sent)"
        );
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            Failure::from_status(503, ""),
            Failure::Transient(_)
        ));
        assert!(matches!(
            Failure::from_status(429, ""),
            Failure::Transient(_)
        ));
        assert!(matches!(
            Failure::from_status(400, "bad"),
            Failure::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            Failure::from_status(404, "no db"),
            Failure::Refused { status: 404, .. }
        ));
    }
}
