//! Forwarding of names outside the domain to the configured recursors.
//!
//! Each recursor is tried in turn (configured order, or shuffled with the `random`
//! strategy), each attempt bounded by `recursor_timeout`. The first NOERROR or NXDOMAIN
//! answer is relayed as is; any other code (SERVFAIL, REFUSED) moves on to the next
//! recursor, as Consul does since its fix for issue #4461. Names inside the domain are
//! never forwarded (Consul issue #6183: that makes loops).

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::Transport;
use super::{DnsConfig, RecursorStrategy};

/// Forwards `request`; `None` when every recursor failed.
pub(super) async fn forward(
    config: &DnsConfig,
    request: &Message,
    transport: Transport,
) -> Option<Vec<u8>> {
    let query = request.to_vec().ok()?;
    let mut order = config.recursors.clone();
    if config.recursor_strategy == RecursorStrategy::Random {
        order.shuffle(&mut rand::rng());
    }
    for upstream in order {
        let attempt = async {
            match transport {
                Transport::Udp => ask_udp(upstream, &query).await,
                Transport::Tcp => ask_tcp(upstream, &query).await,
            }
        };
        let reply = match tokio::time::timeout(config.recursor_timeout, attempt).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::debug!(peer = %upstream, error = %e, "recursor failed");
                continue;
            }
            Err(_) => {
                tracing::debug!(peer = %upstream, "recursor timed out");
                continue;
            }
        };
        let Ok(parsed) = Message::from_vec(&reply) else {
            tracing::debug!(peer = %upstream, "recursor sent an undecodable answer");
            continue;
        };
        if parsed.metadata.id != request.metadata.id {
            continue;
        }
        match parsed.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => return Some(reply),
            code => tracing::debug!(peer = %upstream, %code, "recursor refused, trying the next"),
        }
    }
    None
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    stream.write_u16(len).await?;
    stream.write_all(query).await?;
    let n = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}
