//! A small bounded HTTP/1.1 server on `std::net`: one request per connection, GET and HEAD
//! only, no bodies.
//!
//! Why not tiny_http: it reads requests on an internal task pool that grows a thread per
//! waiting connection, and it has no limit on header count or head size and no deadline for
//! reading a request, so a slowloris client (or a thousand) would hold threads and memory
//! without bound; `tiny_http::Server::from_listener` keeps its own accept loop, so no
//! bounded accept can be put in front of it. Here every resource has a named limit:
//!
//! - workers: a fixed pool of `concurrent_requests_max` threads;
//! - waiting connections: at most as many again in a bounded queue; past that the accept
//!   thread answers `503` at once (counted as busy) and closes;
//! - time: the whole request head must arrive within `request_timeout` (`408`), and the
//!   answer must be taken within it too;
//! - size: [`REQUEST_LINE_BYTES_MAX`] (`414`), [`REQUEST_HEAD_BYTES_MAX`] and
//!   [`HEADERS_COUNT_MAX`] (`431`); a body is refused (`413`); other methods get `405`;
//!   anything unparsable gets `400`.
//!
//! The parser ([`parse_head`]) is pure (httparse for the syntax, with the limits above
//! checked around it); [`serve_connection`] is the thin driver around it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest request line (method, target, version).
pub const REQUEST_LINE_BYTES_MAX: usize = 2048;
/// Longest request head (request line and headers).
pub const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// Most header lines in a request.
pub const HEADERS_COUNT_MAX: usize = 32;
/// Longest single wait on a socket read, so a worker notices shutdown.
pub const READ_POLL: Duration = Duration::from_millis(100);

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET` or `HEAD`.
    pub head_only: bool,
    /// The request target: path and query.
    pub target: String,
}

/// Why a request was refused; each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not HTTP/1.x, or a malformed line (`400`).
    Malformed,
    /// A method other than GET or HEAD (`405`).
    Method,
    /// The request line is too long (`414`).
    LineTooLong,
    /// Too many headers or too large a head (`431`).
    HeadTooLarge,
    /// The request has a body (`413`).
    Body,
    /// The head did not arrive within the request timeout (`408`).
    Timeout,
}

impl Reject {
    /// The status code answered.
    pub fn status(self) -> u16 {
        match self {
            Reject::Malformed => 400,
            Reject::Method => 405,
            Reject::LineTooLong => 414,
            Reject::HeadTooLarge => 431,
            Reject::Body => 413,
            Reject::Timeout => 408,
        }
    }
}

/// Parse the bytes received so far. `Ok(None)`: the head is not complete yet (and within
/// limits so far). The syntax is httparse's; the limits and what is refused are this server's.
pub fn parse_head(bytes: &[u8]) -> Result<Option<RequestHead>, Reject> {
    // The request line's limit first: httparse has none.
    match bytes.windows(2).position(|w| w == b"\r\n") {
        None if bytes.len() > REQUEST_LINE_BYTES_MAX => return Err(Reject::LineTooLong),
        Some(end) if end > REQUEST_LINE_BYTES_MAX => return Err(Reject::LineTooLong),
        _ => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if bytes.len() > REQUEST_HEAD_BYTES_MAX {
                Err(Reject::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::Malformed),
    };
    if head_len > REQUEST_HEAD_BYTES_MAX {
        return Err(Reject::HeadTooLarge);
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(Reject::Malformed);
    };
    if !target.starts_with('/') {
        return Err(Reject::Malformed);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(Reject::Method)
        }
        _ => return Err(Reject::Malformed),
    };
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("?").trim();
        if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Err(Reject::Body);
        }
    }
    Ok(Some(RequestHead {
        head_only,
        target: target.to_string(),
    }))
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A short text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The bytes on the wire; without the body for HEAD.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The reason phrase of the codes this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Status codes counted by [`ServerCounts`].
pub const COUNTED_STATUSES: [u16; 9] = [200, 400, 404, 405, 408, 413, 414, 431, 503];

/// The server's own counters: answers by status, and connections turned away busy.
#[derive(Debug, Default)]
pub struct ServerCounters {
    answered: [AtomicU64; COUNTED_STATUSES.len()],
    busy: AtomicU64,
    refused_per_ip: AtomicU64,
    evicted: AtomicU64,
}

/// A copy of [`ServerCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Answers by [`COUNTED_STATUSES`] index.
    pub answered: [u64; COUNTED_STATUSES.len()],
    /// Connections answered 503 by the accept thread.
    pub busy: u64,
    /// Connections not given to a worker because their address had
    /// `http.connections_per_ip_max` there already.
    pub refused_per_ip: u64,
    /// Workers' connections shut because they were still sending their request head after
    /// a second while new connections waited.
    pub evicted: u64,
}

impl ServerCounts {
    /// (status, count) pairs.
    pub fn answered(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        COUNTED_STATUSES
            .iter()
            .copied()
            .zip(self.answered.iter().copied())
    }
}

impl ServerCounters {
    /// Count an answer with `status`.
    pub fn count(&self, status: u16) {
        if let Some(i) = COUNTED_STATUSES.iter().position(|s| *s == status) {
            self.answered[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a connection turned away busy.
    pub fn count_busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.count(503);
    }

    /// Count a connection kept from the workers by its address's cap.
    pub fn count_refused_per_ip(&self) {
        self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a slow connection shut to make room.
    pub fn count_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Read them.
    pub fn snapshot(&self) -> ServerCounts {
        let mut answered = [0u64; COUNTED_STATUSES.len()];
        for (out, a) in answered.iter_mut().zip(self.answered.iter()) {
            *out = a.load(Ordering::Relaxed);
        }
        ServerCounts {
            answered,
            busy: self.busy.load(Ordering::Relaxed),
            refused_per_ip: self.refused_per_ip.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Answer a connection that found every worker and queue slot taken: 503, never blocking.
pub fn refuse_busy(mut stream: TcpStream, counters: &ServerCounters) {
    counters.count_busy();
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let response = Response::text(503, "busy: too many concurrent requests, retry shortly\n");
    let _ = stream.write_all(&response.encode(false));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    drain_unread(&mut stream);
}

/// Read one request from `stream` within `timeout`, answer it with `handle`, and close.
pub fn serve_connection(
    mut stream: TcpStream,
    timeout: Duration,
    stop: &AtomicBool,
    counters: &ServerCounters,
    handle: impl FnOnce(&RequestHead) -> Response,
) {
    let deadline = Instant::now() + timeout;
    let outcome = read_head(&mut stream, deadline, stop);
    let (response, head_only) = match outcome {
        Ok(Some(head)) => (handle(&head), head.head_only),
        Ok(None) => return, // Closed by the client, or shutting down.
        Err(reject) => (
            Response::text(
                reject.status(),
                format!("{}\n", reason_phrase(reject.status())),
            ),
            false,
        ),
    };
    let _ = stream.set_write_timeout(Some(timeout));
    answer(stream, &response, head_only, counters);
}

/// Count `response`, write it, and close: what every answer ends with.
pub fn answer(
    mut stream: TcpStream,
    response: &Response,
    head_only: bool,
    counters: &ServerCounters,
) {
    counters.count(response.status);
    let _ = stream.write_all(&response.encode(head_only));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    drain_unread(&mut stream);
}

/// Read, without waiting, what the client sent beyond the head (closing a socket with unread
/// bytes resets it, which can destroy the answer in flight). Bounded to one buffer.
fn drain_unread(stream: &mut TcpStream) {
    if stream.set_nonblocking(true).is_ok() {
        let mut scratch = [0u8; 4096];
        let _ = stream.read(&mut scratch);
    }
}

fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Option<RequestHead>, Reject> {
    let mut buffer = [0u8; REQUEST_HEAD_BYTES_MAX + 1];
    let mut filled = 0usize;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Reject::Timeout);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let wait = deadline.saturating_duration_since(now).min(READ_POLL);
        if stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .is_err()
        {
            return Ok(None);
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(Reject::Malformed)
                }
            }
            Ok(n) => {
                filled += n;
                if let Some(head) = parse_head(&buffer[..filled])? {
                    return Ok(Some(head));
                }
                if filled == buffer.len() {
                    return Err(Reject::HeadTooLarge);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_and_waits_for_the_rest() {
        let req = b"GET /stats?debug=true HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_head(&req[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse_head(req),
            Ok(Some(RequestHead {
                head_only: false,
                target: "/stats?debug=true".into()
            }))
        );
        let head = parse_head(b"HEAD / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(head.head_only);
    }

    #[test]
    fn refuses_bad_input_with_the_right_code() {
        let cases: &[(&[u8], Reject)] = &[
            (b"GARBAGE\r\n\r\n", Reject::Malformed),
            (b"GET / HTTP/2.0\r\n\r\n", Reject::Malformed),
            (b"GET noslash HTTP/1.1\r\n\r\n", Reject::Malformed),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", Reject::Malformed),
            (b"\xff\xfe / HTTP/1.1\r\n\r\n", Reject::Malformed),
            (b"POST / HTTP/1.1\r\n\r\n", Reject::Method),
            (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", Reject::Body),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::Body,
            ),
        ];
        for (bytes, reject) in cases {
            assert_eq!(
                parse_head(bytes),
                Err(*reject),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(REQUEST_LINE_BYTES_MAX));
        assert_eq!(parse_head(long_line.as_bytes()), Err(Reject::LineTooLong));
        let endless_line = vec![b'a'; REQUEST_LINE_BYTES_MAX + 1];
        assert_eq!(parse_head(&endless_line), Err(Reject::LineTooLong));
        let many = format!(
            "GET / HTTP/1.1\r\n{}",
            "X: y\r\n".repeat(HEADERS_COUNT_MAX + 1)
        );
        assert_eq!(
            parse_head(many.as_bytes()),
            Err(Reject::HeadTooLarge),
            "counted before the end"
        );
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n",
            "y".repeat(REQUEST_HEAD_BYTES_MAX)
        );
        assert_eq!(parse_head(big.as_bytes()), Err(Reject::HeadTooLarge));
    }

    #[test]
    fn encodes_answers() {
        let r = Response::text(404, "not found\n");
        let bytes = String::from_utf8(r.encode(false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(bytes.contains("Content-Length: 10\r\n"));
        assert!(bytes.ends_with("\r\n\r\nnot found\n"));
        let head = String::from_utf8(r.encode(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        let counters = ServerCounters::default();
        counters.count(200);
        counters.count_busy();
        counters.count(999);
        let s = counters.snapshot();
        assert_eq!(s.busy, 1);
        assert_eq!(s.answered().filter(|(_, n)| *n > 0).count(), 2);
    }
}
