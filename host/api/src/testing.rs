//! Test support: the real server on 127.0.0.1:0 with no components, spoken to in raw bytes, so
//! that tests can send what no well-behaved client library would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capbridge_runtime::Picker;
use capbridge_runtime::{Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{BridgeConfig, ServeOptions, Server};

/// How long anything that should happen promptly may take before a test fails.
pub const PROMPTLY: Duration = Duration::from_secs(10);

pub struct TestBridge {
    pub server: Server,
    /// Holds the components directory.
    pub _dir: tempfile::TempDir,
}

impl TestBridge {
    /// Serves `config` (its port ignored) with an empty components directory.
    pub async fn start(config: BridgeConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("create dir");
            path
        };
        let runtime = Runtime::new(RuntimeConfig {
            components_dir: sub("components"),
            policy_dir: sub("policy"),
            cache_dir: sub("cache"),
            record_dir: None,
            audit_retention: None,
            picker: Picker::Headless,
            own_files: Default::default(),
            state_dir: dir.path().join("state"),
        })
        .expect("runtime");
        runtime.load_all(&mut |_| {}).expect("load nothing");
        let listener = crate::bind(0).await.expect("bind 127.0.0.1:0");
        let server = Server::start(listener, Arc::new(runtime), config, ServeOptions::default())
            .expect("start");
        Self { server, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The `Host` the bridge answers to.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr()).await.expect("connect")
    }

    /// Sends `request` on a new connection and returns everything received until the bridge
    /// closes it (send `Connection: close` to have it closed after the answer).
    pub async fn exchange(&self, request: &str) -> String {
        let mut stream = self.connect().await;
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
    }

    /// A local client's session token.
    pub async fn token(&self) -> String {
        let answer = self
            .exchange(&format!(
                "POST /api/v1/session/handshake HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.host()
            ))
            .await;
        assert_eq!(status(&answer), 200, "{answer}");
        body(&answer)["sessionToken"]
            .as_str()
            .expect("a token")
            .to_string()
    }
}

/// Everything received until the peer closes the connection; fails the test unless that
/// happens within [`PROMPTLY`].
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PROMPTLY, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the bridge did not close the connection within {PROMPTLY:?} (received so far: {:?})",
        String::from_utf8_lossy(&received)
    );
    received
}

/// Reads up to the end of a response head (`\r\n\r\n`), byte by byte so that nothing after it
/// is consumed; fails the test unless it arrives within [`PROMPTLY`].
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    tokio::time::timeout(PROMPTLY, async {
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await.expect("a response head");
            head.push(byte);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no response head within {PROMPTLY:?} (received: {:?})",
            String::from_utf8_lossy(&head)
        )
    });
    String::from_utf8_lossy(&head).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
pub fn status(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {answer:?}"))
}

/// The JSON body of a raw answer (sent with a `Content-Length`, as every answer of the API is).
pub fn body(answer: &str) -> serde_json::Value {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// The `error.code` of a raw error answer.
pub fn error_code(answer: &str) -> String {
    body(answer)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error format: {answer:?}"))
        .to_string()
}

/// The WebSocket upgrade request for the event socket.
pub fn websocket_request(host: &str, token: &str) -> String {
    format!(
        "GET /ws/v1/events?sessionToken={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One WebSocket frame from the server (unmasked): its opcode and payload.
pub async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(PROMPTLY, async {
        let first = stream.read_u8().await.expect("frame");
        let length = match stream.read_u8().await.expect("frame length") & 0x7f {
            126 => u64::from(stream.read_u16().await.expect("frame length")),
            127 => stream.read_u64().await.expect("frame length"),
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(length).expect("a small frame")];
        stream.read_exact(&mut payload).await.expect("payload");
        (first & 0x0f, payload)
    })
    .await
    .expect("a frame within the bound")
}
