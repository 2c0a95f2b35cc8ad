//! `GET /v1/agent/monitor?loglevel=…[&logjson]`: the agent's log as it happens.
//!
//! The status line and headers go out at once; then each log line at the asked level or
//! more severe, until the client leaves or the agent stops. The lines come from the
//! agent's [`Monitor`](crate::monitor::Monitor); a client that does not keep up is cut
//! off there, and its stream ends with an error, which closes the connection.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use catalog::acl::Access;
use hyper::body::Frame;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{ApiError, Params, gate};
use crate::Context;
use crate::monitor::{LineFormat, LogLevel, Polled, SubscribeError, Subscription};

/// Streams the agent's log to the caller (`agent:read`).
pub(crate) async fn monitor(
    State(ctx): State<Context>,
    peer: Option<axum::Extension<ConnectInfo<IpAddr>>>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Read).await?;
    // Consul's default, and its text for a level it does not know.
    let asked = params.get("loglevel").filter(|l| !l.is_empty());
    let level = match asked {
        None => LogLevel::Info,
        Some(text) => LogLevel::parse(text)
            .ok_or_else(|| ApiError::BadRequest(format!("Unknown log level: {text}")))?,
    };
    let format = if params.has("logjson") {
        LineFormat::Json
    } else {
        LineFormat::Text
    };
    let who = peer.map_or_else(|| "unknown".to_owned(), |p| p.0.0.to_string());
    let subscription = ctx
        .monitor
        .subscribe(level, format, who)
        .map_err(|e| match e {
            SubscribeError::Busy => ApiError::TooManyRequests(e.to_string()),
        })?;
    let body = Lines {
        subscription,
        stopping: Box::pin(ctx.shutdown.clone().cancelled_owned()),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::new(body),
    )
        .into_response())
}

/// The response body: one reader's lines.
struct Lines {
    subscription: Subscription,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.subscription.poll_line(cx) {
            Poll::Ready(Polled::Line(line)) => Poll::Ready(Some(Ok(Frame::data(line)))),
            // An error, not the end: the client must not take a cut stream for a whole one.
            Poll::Ready(Polled::CutOff) => Poll::Ready(Some(Err(std::io::Error::other(
                "the monitor reader fell behind and was cut off",
            )))),
            // The lines logged while the agent stops are sent first.
            Poll::Pending if self.stopping.as_mut().poll(cx).is_ready() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Monitor;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_body_carries_lines_and_ends_in_an_error_when_cut_off() {
        let monitor = Monitor::default();
        let subscription = monitor
            .subscribe(LogLevel::Info, LineFormat::Text, "test".into())
            .unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let mut body = Lines {
            subscription,
            stopping: Box::pin(token.clone().cancelled_owned()),
        };
        monitor.publish(LogLevel::Info, &mut |_| Bytes::from_static(b"one\n"));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "one\n");
        for _ in 0..=crate::monitor::READER_QUEUE_LINES {
            monitor.publish(LogLevel::Info, &mut |_| Bytes::from_static(b"more\n"));
        }
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn the_body_ends_when_the_agent_stops() {
        let monitor = Monitor::default();
        let subscription = monitor
            .subscribe(LogLevel::Info, LineFormat::Text, "test".into())
            .unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let mut body = Lines {
            subscription,
            stopping: Box::pin(token.clone().cancelled_owned()),
        };
        token.cancel();
        assert!(body.frame().await.is_none());
    }
}
