//! The raw client of an agent's HTTP API: one request on one connection, the whole
//! answer read into memory, every request bounded by [`REQUEST_TIMEOUT`]. proconsul's
//! CLI verbs and tests use it directly; [`super::AgentClient`] decodes its answers into
//! typed values.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Method;

/// Budget of one request, from connecting to the last byte of the answer: a CLI verb or
/// a program waits no longer for an agent that does not answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read; a bigger one fails rather than filling memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// An agent's HTTP API, as `-http-addr` / `CONSUL_HTTP_ADDR` name it.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
}

/// A response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    /// `127.0.0.1:8500` or `http://127.0.0.1:8500`.
    pub fn new(http_addr: &str) -> anyhow::Result<Client> {
        let addr = http_addr.trim().trim_end_matches('/');
        let authority = if let Some(rest) = addr.strip_prefix("http://") {
            rest
        } else if addr.starts_with("https://") || addr.starts_with("unix://") {
            bail!("{addr}: only plain http:// agent addresses are supported");
        } else {
            addr
        };
        if authority.is_empty() {
            bail!("the HTTP address is empty");
        }
        Ok(Client {
            authority: authority.to_owned(),
        })
    }

    /// Sends a request and reads the whole response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .with_context(|| {
                format!(
                    "no answer from the agent at {} within {REQUEST_TIMEOUT:?}",
                    self.authority
                )
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("Error connecting to the agent at {}", self.authority))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
                .to_bytes();
            anyhow::Ok(Response {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        let (response, _) = tokio::join!(exchange, conn);
        response
    }

    /// GET, failing on a non-200 answer with the agent's message.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        let r = self.call(Method::GET, path, None).await?;
        ok(r)
    }

    /// PUT, failing on a non-200 answer with the agent's message.
    pub async fn put(&self, path: &str, body: Option<String>) -> anyhow::Result<String> {
        let r = self.call(Method::PUT, path, body).await?;
        ok(r)
    }
}

fn ok(r: Response) -> anyhow::Result<String> {
    if r.status == 200 {
        Ok(r.body)
    } else {
        bail!("Unexpected response code: {} ({})", r.status, r.body.trim())
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay as they are).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
