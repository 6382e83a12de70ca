//! Serving connections: the accept loop, and the bounds on every connection and request body.
//!
//! The bridge serves HTTP/1.1 with hyper directly (not `axum::serve`, which cannot be given a
//! timer or a connection cap). Whatever a client does, every connection is bounded:
//!
//! - **How many**: at most `max-connections` are open at once, event WebSockets included (the
//!   slot belongs to the socket, so an upgraded connection keeps it until it closes). When all
//!   are taken the bridge stops accepting: new connections wait, in the order they came, in the
//!   kernel's listen queue, and are served as slots free up. The bridge itself never refuses one,
//!   so a burst of clients is slowed down, not failed.
//! - **Headers**: a request's whole header block must arrive within `header-timeout-ms` of when
//!   the bridge starts waiting for it: on a new connection, and on a kept-alive one after the
//!   previous answer (so it is also the idle timeout). It bounds the block, not each read: a
//!   client that sends nothing, stops half-way, or drips a line a second, is disconnected at the
//!   same deadline, without an answer (hyper's `header_read_timeout`).
//! - **Bodies** ([`bound_body`], in the router's chain where the body limit is, so that its
//!   answers are logged and carry CORS like any other): a `Content-Length` above
//!   `max-body-bytes` is answered `413 payload_too_large` at once, before any of the body is
//!   read; and on every route, including the invocation and capability routes whose own 504
//!   deadline starts only once the body is in, the body must arrive within `request-timeout-ms`
//!   of the headers, or reading it fails and the request is answered `408 request_timeout`.
//!   A route that takes no body never waits for one.
//! - **Shutdown**: stops accepting (the port is closed at once), lets each connection finish the
//!   request in progress, closes idle ones, and returns once all are done. Dropping the future
//!   (`Server::shutdown` aborts it when its grace runs out) cancels every connection.
//!   Upgraded event sockets are not connections of hyper's any more: the event route says its
//!   own goodbye on them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::{BoxError, Router};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::config::BridgeConfig;
use crate::error::{self, ApiError, BodyTimeout};
use crate::Shared;

/// What bounds connections, from the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Bounds {
    pub fn new(config: &BridgeConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout(),
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true (or its sender is gone), then waits for
/// the open connections to finish (see the module documentation).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let (stream, slot) = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        // Forget the connections that have ended (a panicked one included).
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            Held {
                stream,
                _slot: slot,
            },
            app.clone(),
            bounds.header_timeout,
            stop.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The next connection, once a slot is free for it.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        match listener.accept().await {
            Ok((stream, _)) => {
                // Answers go out as they are written (a streamed file's last chunk does not wait
                // for the client's delayed acknowledgement of the one before).
                let _ = stream.set_nodelay(true);
                return (stream, slot);
            }
            // The client gave up before it was accepted.
            Err(e) if is_connection_error(&e) => {}
            // Out of file descriptors, most likely: wait for some to be closed (as hyper 0.14's
            // and axum's servers do).
            Err(e) => {
                tracing::error!(target: "capbridge::api", "accept error: {e}");
                drop(slot);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    io: Held,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stopped(&mut stop) => {
            // Finish the request in progress (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        // Header timeouts, malformed requests, clients that went away.
        tracing::debug!(target: "capbridge::api", "connection ended: {e}");
    }
}

/// A connection together with its slot: the slot is given back when the connection is dropped,
/// which for an upgraded connection is when the WebSocket that took it over ends.
struct Held {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Bounds the request body (see the module documentation): 413 at once for a declared length
/// above `max-body-bytes`, and a deadline of `request-timeout-ms` from now for reading it.
pub(crate) async fn bound_body(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limit = u64::try_from(shared.config.max_body_bytes).unwrap_or(u64::MAX);
    if declared_length(request.headers()).is_some_and(|length| length > limit) {
        return Err(error::too_large());
    }
    let deadline = Instant::now() + shared.config.request_timeout();
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            deadline,
            sleep: None,
        })
    });
    Ok(next.run(request).await)
}

/// The body length a request declares in `Content-Length`, when it declares one.
pub(crate) fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A body whose reading fails with [`BodyTimeout`] once `deadline` has passed.
struct Deadline {
    body: Body,
    deadline: Instant,
    /// Made when the body first has to be waited for.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use crate::testing::*;
    use crate::BridgeConfig;

    fn config() -> BridgeConfig {
        BridgeConfig::default()
    }

    /// Nothing sent, a request line and no more, and a kept-alive connection left idle after
    /// its answer: each is closed, without an answer to the unfinished ones.
    #[tokio::test]
    async fn connections_that_stall_before_their_headers_end_are_closed() {
        let bridge = TestBridge::start(BridgeConfig {
            header_timeout_ms: 300,
            ..config()
        })
        .await;
        let silent = async {
            let mut stream = bridge.connect().await;
            assert_eq!(read_to_close(&mut stream).await, b"");
        };
        let unfinished = async {
            let mut stream = bridge.connect().await;
            stream
                .write_all(b"GET /api/v1/health HTTP/1.1\r\n")
                .await
                .unwrap();
            assert_eq!(read_to_close(&mut stream).await, b"");
        };
        let idle = async {
            let mut stream = bridge.connect().await;
            let request = format!(
                "GET /api/v1/health HTTP/1.1\r\nHost: {}\r\n\r\n",
                bridge.host()
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
            assert_eq!(status(&answer), 200, "{answer}");
        };
        tokio::join!(silent, unfinished, idle);
    }

    /// The header deadline is for the whole header block: a client that sends one header line
    /// every quarter second, forever, is closed like one that sends nothing.
    #[tokio::test]
    async fn headers_dripped_a_line_at_a_time_are_bounded_as_a_whole() {
        let bridge = TestBridge::start(BridgeConfig {
            header_timeout_ms: 1000,
            ..config()
        })
        .await;
        let stream = bridge.connect().await;
        let (mut reader, mut writer) = stream.into_split();
        let host = bridge.host();
        let drip = tokio::spawn(async move {
            let mut line = format!("GET /api/v1/health HTTP/1.1\r\nHost: {host}\r\n");
            for n in 0.. {
                if writer.write_all(line.as_bytes()).await.is_err() {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                line = format!("X-Drip-{n}: 1\r\n");
            }
            unreachable!()
        });
        let received = tokio::time::timeout(PROMPTLY, async {
            let mut received = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut received).await;
            received
        })
        .await
        .expect("a dripping client is disconnected");
        // Closed for its deadline, not answered (a 431 for too many headers would be).
        assert_eq!(String::from_utf8_lossy(&received), "");
        let lines = tokio::time::timeout(PROMPTLY, drip)
            .await
            .expect("writing fails once closed")
            .unwrap();
        assert!(lines < 40, "{lines} lines sent before the bridge closed");
    }

    /// Beyond `max-connections` (an event socket counts), a new connection is not refused but
    /// waits, and is served as soon as a slot is given back.
    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let bridge = TestBridge::start(BridgeConfig {
            max_connections: 2,
            ..config()
        })
        .await;
        let token = bridge.token().await;
        let health = format!(
            "GET /api/v1/health HTTP/1.1\r\nHost: {}\r\n\r\n",
            bridge.host()
        );

        let mut socket = bridge.connect().await;
        socket
            .write_all(websocket_request(&bridge.host(), &token).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut socket).await;
        assert_eq!(status(&head), 101, "{head}");
        // A kept-alive connection, answered: both slots are taken.
        let mut kept = bridge.connect().await;
        kept.write_all(health.as_bytes()).await.unwrap();
        assert_eq!(status(&read_head(&mut kept).await), 200);

        let mut waiting = bridge.connect().await;
        waiting.write_all(health.as_bytes()).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(500), read_head(&mut waiting)).await;
        assert!(early.is_err(), "answered beyond the cap: {early:?}");

        drop(socket);
        assert_eq!(status(&read_head(&mut waiting).await), 200);
    }

    fn stalled_post(host: &str, path: &str, token: &str, length: usize, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-OSLOOP-BRIDGE-TOKEN: {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n{body}"
        )
    }

    /// A body that never completes is answered 408 on every route, including those the request
    /// timeout does not cover (their own deadline starts after the body).
    #[tokio::test]
    async fn bodies_that_never_complete_time_out_on_every_route() {
        let bridge = Arc::new(
            TestBridge::start(BridgeConfig {
                request_timeout_ms: 300,
                ..config()
            })
            .await,
        );
        let token = bridge.token().await;
        let mut answers = tokio::task::JoinSet::new();
        for path in [
            "/api/v1/commands/echo.noop/invoke",
            "/api/v1/filesystem/read",
            "/api/v1/awake/acquire",
            "/api/v1/system/tools/locate",
            "/api/v1/session/handshake",
        ] {
            let bridge = bridge.clone();
            let request = stalled_post(&bridge.host(), path, &token, 100, "{");
            answers.spawn(async move { (path, bridge.exchange(&request).await) });
        }
        while let Some(answer) = answers.join_next().await {
            let (path, answer) = answer.unwrap();
            assert_eq!(status(&answer), 408, "{path}: {answer}");
            assert_eq!(error_code(&answer), "request_timeout", "{path}");
        }
    }

    /// A declared length above `max-body-bytes` is answered 413 at once, before the session
    /// check and without waiting for a byte of the body.
    #[tokio::test]
    async fn declared_bodies_above_the_limit_are_refused_at_once() {
        let bridge = TestBridge::start(BridgeConfig {
            max_body_bytes: 1024,
            ..config()
        })
        .await;
        let token = bridge.token().await;
        let host = bridge.host();
        for (path, token) in [
            ("/api/v1/session/handshake", ""),
            ("/api/v1/commands/echo.noop/invoke", token.as_str()),
            ("/api/v1/filesystem/write", ""),
        ] {
            let answer = bridge
                .exchange(&stalled_post(&host, path, token, 1025, ""))
                .await;
            assert_eq!(status(&answer), 413, "{path}: {answer}");
            assert_eq!(error_code(&answer), "payload_too_large", "{path}");
        }
        // Within the limit, bodies are read as before.
        let answer = bridge
            .exchange(&stalled_post(
                &host,
                "/api/v1/session/handshake",
                "",
                2,
                "{}",
            ))
            .await;
        assert_eq!(status(&answer), 200, "{answer}");
    }

    /// Shutdown stops accepting, lets the request in progress finish, closes idle connections,
    /// and says goodbye on event sockets (upgraded through the hand-made server).
    #[tokio::test]
    async fn shutdown_finishes_requests_in_progress_and_says_goodbye_on_sockets() {
        let bridge = TestBridge::start(config()).await;
        let host = bridge.host();
        let token = bridge.token().await;
        let mut socket = bridge.connect().await;
        socket
            .write_all(websocket_request(&host, &token).as_bytes())
            .await
            .unwrap();
        assert_eq!(status(&read_head(&mut socket).await), 101);
        let (opcode, hello) = read_frame(&mut socket).await;
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&hello).contains("bridge.connected"));

        // In progress: the handler is reading the body (the 100 Continue says so).
        let mut in_progress = bridge.connect().await;
        let request = format!(
            "POST /api/v1/session/handshake HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        );
        in_progress.write_all(request.as_bytes()).await.unwrap();
        assert!(read_head(&mut in_progress)
            .await
            .starts_with("HTTP/1.1 100"));
        let mut idle = bridge.connect().await;

        let addr = bridge.addr();
        let TestBridge { server, _dir } = bridge;
        let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(60)));

        in_progress.write_all(b"{}").await.unwrap();
        let answer = String::from_utf8_lossy(&read_to_close(&mut in_progress).await).into_owned();
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(body(&answer)["sessionToken"].is_string());
        assert_eq!(read_to_close(&mut idle).await, b"");

        let mut goodbye = Vec::new();
        loop {
            let (opcode, payload) = read_frame(&mut socket).await;
            if opcode == 8 {
                assert_eq!(payload[..2], 1001u16.to_be_bytes());
                break;
            }
            goodbye.push(String::from_utf8_lossy(&payload).into_owned());
        }
        assert!(
            goodbye.iter().any(|m| m.contains("bridge.stopping")),
            "{goodbye:?}"
        );
        tokio::time::timeout(PROMPTLY, shutdown)
            .await
            .expect("shutdown does not wait for its grace when nothing runs")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
