//! The raw client of an agent's HTTP API: one request on one connection, the whole
//! answer read into memory, every request bounded by [`REQUEST_TIMEOUT`]. proconsul's
//! CLI verbs and tests use it directly; [`super::AgentClient`] decodes its answers into
//! typed values.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

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

/// Why [`Client::new`] refused an address. Nothing was sent; the user should give
/// another address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// An `https://` or `unix://` address: this client speaks plain HTTP over TCP only.
    #[error("{addr}: only plain http:// agent addresses are supported")]
    Scheme {
        /// The address as given (trimmed).
        addr: String,
    },
    /// Nothing left once `http://` and trailing slashes are taken off.
    #[error("the HTTP address is empty")]
    Empty,
}

/// Why a request failed. Each message carries the text of its cause (so `{:#}` and
/// `to_string` print the same line); the variant says whether the request can have
/// reached the agent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The agent could not be reached, so nothing was sent: check the address or that
    /// the agent runs, or ask another agent.
    #[error("Error connecting to the agent at {authority}: {error}")]
    Connect {
        /// The agent's `host:port`.
        authority: String,
        /// What connecting reported.
        error: std::io::Error,
    },
    /// No whole answer within [`REQUEST_TIMEOUT`]. The agent may have acted on the
    /// request (a write may have been applied); try again later or ask another agent.
    #[error("no answer from the agent at {authority} within {REQUEST_TIMEOUT:?}: {error}")]
    Timeout {
        /// The agent's `host:port`.
        authority: String,
        /// The elapsed timer.
        error: tokio::time::error::Elapsed,
    },
    /// The HTTP exchange broke after the connection was made (the handshake, sending, or
    /// the response head). The agent may have acted on the request.
    #[error("{}", Chain(.0))]
    Exchange(hyper::Error),
    /// The request could not be built: the path is not a valid request target. Fix the
    /// path; nothing was sent.
    #[error("{}", Chain(.0))]
    Request(hyper::http::Error),
    /// The body of the answer could not be read, or was larger than this client reads
    /// (64 MiB). The agent may have acted on the request.
    #[error("reading the response: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
    /// The agent answered with a status other than 200 (from [`Client::get`] and
    /// [`Client::put`] only; [`Client::call`] returns every answer). `message` is its
    /// text, trimmed: report it to the user. The words are Consul's CLI's.
    #[error("Unexpected response code: {status} ({message})")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The agent's plain-text error.
        message: String,
    },
}

/// An error followed by its sources, `: `-separated, the way `{:#}` prints an
/// `anyhow::Error`.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl Client {
    /// `127.0.0.1:8500` or `http://127.0.0.1:8500`.
    pub fn new(http_addr: &str) -> Result<Client, AddressError> {
        let addr = http_addr.trim().trim_end_matches('/');
        let authority = if let Some(rest) = addr.strip_prefix("http://") {
            rest
        } else if addr.starts_with("https://") || addr.starts_with("unix://") {
            return Err(AddressError::Scheme {
                addr: addr.to_owned(),
            });
        } else {
            addr
        };
        if authority.is_empty() {
            return Err(AddressError::Empty);
        }
        Ok(Client {
            authority: authority.to_owned(),
        })
    }

    /// Sends a request and reads the whole response, whatever its status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Response, RequestError> {
        let body = body.map(String::into_bytes).unwrap_or_default();
        self.call_bytes(method, path, body).await
    }

    /// Sends a request whose body is any bytes (a key's value, say) and reads the whole
    /// response, whatever its status.
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(answer) => answer,
            Err(elapsed) => Err(RequestError::Timeout {
                authority: self.authority.clone(),
                error: elapsed,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|error| RequestError::Connect {
                authority: self.authority.clone(),
                error,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(RequestError::Exchange)?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(RequestError::Request)?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(RequestError::Exchange)?;
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
                .map_err(RequestError::Body)?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        let (response, _) = tokio::join!(exchange, conn);
        response
    }

    /// GET, failing on a non-200 answer with the agent's message.
    pub async fn get(&self, path: &str) -> Result<String, RequestError> {
        let r = self.call(Method::GET, path, None).await?;
        ok(r)
    }

    /// PUT, failing on a non-200 answer with the agent's message.
    pub async fn put(&self, path: &str, body: Option<String>) -> Result<String, RequestError> {
        let r = self.call(Method::PUT, path, body).await?;
        ok(r)
    }
}

fn ok(r: Response) -> Result<String, RequestError> {
    if r.status == 200 {
        Ok(r.body)
    } else {
        Err(RequestError::Status {
            status: r.status,
            message: r.body.trim().to_owned(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_addresses_say_why() {
        assert_eq!(
            Client::new("https://127.0.0.1:8501")
                .unwrap_err()
                .to_string(),
            "https://127.0.0.1:8501: only plain http:// agent addresses are supported"
        );
        assert_eq!(Client::new("  ").unwrap_err(), AddressError::Empty);
    }

    #[tokio::test]
    async fn an_agent_that_is_not_there_is_a_connect_error_naming_its_address() {
        // A port the OS handed out and nobody listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&addr.to_string()).unwrap();
        let error = client.get("/v1/status/leader").await.unwrap_err();
        assert!(matches!(error, RequestError::Connect { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("Error connecting to the agent at {addr}: ")),
            "{text}"
        );
    }
}
