//! A minimal HTTP/1.1 keep-alive client: one TCP connection, one request at a time.
//!
//! Written for the harness rather than taken from a general client so that its per-request cost
//! stays close to wrk's (one `write`, reads into a reused buffer, headers parsed in place with
//! `httparse`): a load generator that is slower than the server it measures measures itself.
//! It speaks exactly what the harness needs: `Content-Length` and chunked bodies, no TLS, no
//! redirects, no HTTP/2.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Largest response header block accepted; a server sending more is broken for our purposes.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest response body accepted (the biggest legitimate body is a 5 MiB image).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What can go wrong with one exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not open the connection: the request was certainly not sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed after the request may have been sent: outcome unknown.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered something that is not HTTP/1.1 as we understand it.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A request to send. The body, if any, is sent with `Content-Length`.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `Authorization: Token ...`, if any.
    pub token: Option<String>,
    /// Body and its content type.
    pub body: Option<(String, Vec<u8>)>,
    /// Another server than the run's target (stage 2 serves images from its file host).
    pub authority: Option<SocketAddr>,
}

impl Request {
    /// A GET of `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            token: None,
            body: None,
            authority: None,
        }
    }

    /// A GET of an absolute `http://host:port/path` URL, or of a path on the target.
    pub fn get_url(url: &str) -> Self {
        match crate::parse_target(url) {
            Ok((addr, path)) if url.starts_with("http://") => Self {
                authority: Some(addr),
                ..Self::get(path)
            },
            _ => Self::get(url),
        }
    }

    /// A request with a JSON body.
    pub fn json(method: &'static str, path: impl Into<String>, body: &serde_json::Value) -> Self {
        Self {
            method,
            path: path.into(),
            token: None,
            body: Some(("application/json".into(), body.to_string().into_bytes())),
            authority: None,
        }
    }

    /// The same request, authenticated.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    /// Whether retrying it can do no harm (its outcome matters less when unknown).
    pub fn is_idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD")
    }
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The app cache's answer (`hit`, `miss`, `bypass`): its `x-cache` header, or behind an edge
    /// PoP (stage 6 on), its `x-origin-cache`.
    pub cache: Option<String>,
    /// An edge PoP's `x-cache` (`HIT`, `MISS`, `STALE`, `UPDATING`, `REVALIDATED`, `PASS`: the
    /// edge answers in upper case, the app in lower case).
    pub edge: Option<String>,
    /// How many shards a write's transaction spanned (the app's `x-shards`, stage 7 on).
    pub shards: Option<u8>,
    /// The body.
    pub body: Vec<u8>,
    /// The server will close the connection after this response (`Connection: close`).
    pub close: bool,
}

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read but not yet consumed (the start of the next response, rarely).
    buf: Vec<u8>,
    out: Vec<u8>,
    /// When its last answer was read (or it was opened).
    idle_since: std::time::Instant,
}

/// A kept-alive connection idle longer than this is closed and a fresh one opened for the next
/// request, as HTTP clients do: servers close idle connections (the app after 30 s, the gateway
/// and the edges after 60 s), and a request written into a connection the server is closing is
/// lost in flight (for a write: an unknown outcome). 10 s is well under every server's bound;
/// it only matters at low rates, where a connection waits that long for its next request.
pub const MAX_IDLE: Duration = Duration::from_secs(10);

impl Connection {
    /// Opens a connection (Nagle off: requests are small and latency matters).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(ClientError::Connect)?;
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(1024),
            idle_since: std::time::Instant::now(),
        })
    }

    /// Whether it has been idle longer than [`MAX_IDLE`]: time to open a fresh one.
    pub fn stale(&self) -> bool {
        self.idle_since.elapsed() > MAX_IDLE
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.out.clear();
        self.out.extend_from_slice(request.method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(request.path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out
            .extend_from_slice(b"\r\nUser-Agent: archlab-loadtest\r\n");
        if let Some(token) = &request.token {
            self.out.extend_from_slice(b"Authorization: Token ");
            self.out.extend_from_slice(token.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if let Some((content_type, body)) = &request.body {
            self.out.extend_from_slice(b"Content-Type: ");
            self.out.extend_from_slice(content_type.as_bytes());
            self.out.extend_from_slice(
                format!("\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            self.out.extend_from_slice(body);
        } else {
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.out).await?;
        let response = self.read_response().await;
        self.idle_since = std::time::Instant::now();
        response
    }

    async fn fill(&mut self) -> Result<(), ClientError> {
        let len = self.buf.len();
        self.buf.resize(len + 16 * 1024, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e.into());
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    async fn read_response(&mut self) -> Result<Response, ClientError> {
        // Headers.
        let (status, (cache, edge, shards), header_len, length, chunked, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    let (mut cache, mut edge, mut shards) = (None, None, None);
                    let mut close = false;
                    for h in parsed.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        } else if h.name.eq_ignore_ascii_case("x-cache") {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            if value.bytes().any(|b| b.is_ascii_lowercase()) {
                                cache = Some(value);
                            } else {
                                edge = Some(value);
                            }
                        } else if h.name.eq_ignore_ascii_case("x-origin-cache") {
                            cache = Some(String::from_utf8_lossy(h.value).into_owned());
                        } else if h.name.eq_ignore_ascii_case("x-shards") {
                            shards = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u8>().ok());
                        }
                    }
                    break (
                        parsed.code.unwrap_or(0),
                        (cache, edge, shards),
                        n,
                        length,
                        chunked,
                        close,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEADER_BYTES {
                        return Err(ClientError::Protocol("response headers too large".into()));
                    }
                    self.fill().await?;
                }
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        };
        self.buf.drain(..header_len);
        // Body. 1xx, 204 and 304 never have one, whatever the headers say (RFC 9112, 6.3).
        let bodiless = status < 200 || status == 204 || status == 304;
        let body = if bodiless {
            Vec::new()
        } else if chunked {
            self.read_chunked().await?
        } else {
            // 204/304 and friends have no body; anything else without a length is unsupported.
            let length = length.unwrap_or(0);
            if length > MAX_BODY_BYTES {
                return Err(ClientError::Protocol("response body too large".into()));
            }
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Response {
            status,
            cache,
            edge,
            shards,
            body,
            close,
        })
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end])
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| ClientError::Protocol(format!("chunk size: {e}")))?;
            self.buf.drain(..line_end + 2);
            if body.len() + size > MAX_BODY_BYTES {
                return Err(ClientError::Protocol("response body too large".into()));
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}
