//! The two ways to a server, both moving whole messages and nothing else: a child process
//! spoken to over its standard input and output (kept together with everything it starts, and
//! ended with it), and Streamable HTTP to the one approved URL (no redirects; the host keeps the
//! `Mcp-Session-Id`). Whatever arrives goes into the driver's inbox; when the server is gone,
//! `gone` is called at once and the inbox hears `Closed`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::framing::{Capped, Events, Framed, Lines, MAX_MESSAGE_BYTES};
use crate::caps::process::{contained, signal_group, TERM_GRACE};

/// What a server's stderr keeps: its last 64 KiB.
pub const STDERR_BYTES: usize = 64 << 10;
/// HTTP requests open at once per server (each an exchange waiting for its answer).
const MAX_EXCHANGES: usize = 256;
/// The longest an HTTP request may take to answer (its stream may then go on).
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the driver receives (the host side of `incoming` in `capbridge:host/mcp`).
#[derive(Debug)]
pub enum Incoming {
    Message(String),
    Refused(Option<String>, String),
    Undelivered(Option<String>, String),
    Closed(String),
    Request(u64, String),
    Abandoned(u64),
    Stop,
}

/// Called once when the server is gone, with why.
pub type Gone = Arc<dyn Fn(String) + Send + Sync>;

/// A stdio server's launch, checked against the policy.
pub struct StdioLaunch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// An HTTP server's URL and headers (resolved values).
pub struct HttpTarget {
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    /// Whether the grant that allows the URL names this machine or the local network; if not,
    /// a host name that resolves to such an address is refused (as for `grants.network`).
    pub private_ok: bool,
}

/// Resolves host names to public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !capbridge_policy::is_private_address(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address, and grants.mcp.urls does not name a \
                     private one"
                )
                .into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// One open transport.
pub struct Link {
    kind: Kind,
    inbox: mpsc::Sender<Incoming>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// HTTP: the exchange of each request in flight, by its id (as JSON).
    requests: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Set by the first `close`: a process group is signalled once, never after its ids may
    /// have been reused.
    closed: std::sync::atomic::AtomicBool,
}

enum Kind {
    Stdio {
        stdin: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
        group: Option<rustix::process::Pid>,
        child: Arc<tokio::sync::Mutex<tokio::process::Child>>,
    },
    Http {
        client: reqwest::Client,
        target: HttpTarget,
        session: Arc<Mutex<Option<String>>>,
        gone: Gone,
    },
}

/// The last bytes a server wrote to its standard error.
#[derive(Default)]
pub struct StderrLog(Mutex<Vec<u8>>);

impl StderrLog {
    fn push(&self, bytes: &[u8]) {
        let mut log = self.0.lock().expect("stderr lock");
        log.extend_from_slice(bytes);
        if log.len() > STDERR_BYTES {
            let cut = log.len() - STDERR_BYTES;
            log.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("stderr lock")).into_owned()
    }
}

impl Link {
    /// Starts a stdio server.
    pub fn stdio(
        launch: StdioLaunch,
        stderr: Arc<StderrLog>,
        inbox: mpsc::Sender<Incoming>,
        gone: Gone,
    ) -> Result<Link, String> {
        let mut command = contained(&launch.program, &launch.args, &launch.cwd, &launch.env);
        command.stdin(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.program.display()))?;
        let group = child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let reader = {
            let inbox = inbox.clone();
            let child = child.clone();
            tokio::spawn(async move {
                let mut lines = Lines::default();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match stdout.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    for framed in lines.feed(&buf[..n]) {
                        if inbox.send(incoming(framed)).await.is_err() {
                            return;
                        }
                    }
                }
                // The output closed: the server exited (or is about to).
                let status =
                    tokio::time::timeout(Duration::from_secs(1), child.lock().await.wait()).await;
                let why = match status {
                    Ok(Ok(status)) => match (status.code(), status_signal(&status)) {
                        (Some(code), _) => format!("the server exited with code {code}"),
                        (None, Some(signal)) => format!("the server was killed by signal {signal}"),
                        _ => "the server exited".to_string(),
                    },
                    _ => "the server closed its standard output".to_string(),
                };
                // Its standard error is not quoted: it may hold anything, secrets included
                // (the `server-log` export reads it).
                gone(why.clone());
                let _ = inbox.send(Incoming::Closed(why)).await;
            })
        };
        let logger = tokio::spawn(async move {
            let mut buf = vec![0u8; 8 << 10];
            while let Ok(n) = stderr_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                stderr.push(&buf[..n]);
            }
        });
        Ok(Link {
            kind: Kind::Stdio {
                stdin: tokio::sync::Mutex::new(stdin),
                group,
                child,
            },
            inbox,
            tasks: Mutex::new(vec![reader, logger]),
            requests: Mutex::new(HashMap::new()),
            closed: Default::default(),
        })
    }

    /// Opens an HTTP server's link (nothing is sent until the first message).
    pub fn http(
        target: HttpTarget,
        inbox: mpsc::Sender<Incoming>,
        gone: Gone,
    ) -> Result<Link, String> {
        let mut client = reqwest::Client::builder()
            // The approved URL and nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .no_proxy();
        if !target.private_ok {
            client = client.dns_resolver(Arc::new(PublicOnly));
        }
        let client = client
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Link {
            kind: Kind::Http {
                client,
                target,
                session: Arc::new(Mutex::new(None)),
                gone,
            },
            inbox,
            tasks: Mutex::new(Vec::new()),
            requests: Mutex::new(HashMap::new()),
            closed: Default::default(),
        })
    }

    /// Sends one message. Over stdio it is written at once; over HTTP it is POSTed and whatever
    /// answers it (JSON, or an event stream) reaches the inbox later.
    pub async fn send(
        &self,
        message: String,
        protocol_version: Option<String>,
    ) -> Result<(), String> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(format!(
                "the message is larger than {} MiB",
                MAX_MESSAGE_BYTES >> 20
            ));
        }
        if message.contains('\n') {
            return Err("a message may not contain a newline (write JSON on one line)".into());
        }
        match &self.kind {
            Kind::Stdio { stdin, .. } => {
                let mut stdin = stdin.lock().await;
                let pipe = stdin.as_mut().ok_or("the server's input is closed")?;
                let mut line = message.into_bytes();
                line.push(b'\n');
                pipe.write_all(&line)
                    .await
                    .map_err(|e| format!("cannot write to the server: {e}"))
            }
            Kind::Http {
                client,
                target,
                session,
                gone,
            } => {
                let facts = Facts::of(&message);
                {
                    let mut requests = self.requests.lock().expect("requests lock");
                    requests.retain(|_, t| !t.is_finished());
                    if requests.len() >= MAX_EXCHANGES {
                        return Err(format!(
                            "{MAX_EXCHANGES} HTTP requests to the server are open already"
                        ));
                    }
                }
                let id = facts.id.clone();
                // In the stateless revision a request's HTTP exchange is the request: closing it
                // is how a server hears of a cancellation.
                if let Some(cancelled) = &facts.cancels {
                    if let Some(task) = self
                        .requests
                        .lock()
                        .expect("requests lock")
                        .remove(cancelled)
                    {
                        task.abort();
                    }
                }
                let mut request = client
                    .post(target.url.clone())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream");
                for (name, value) in &target.headers {
                    request = request.header(name, value);
                }
                if let Some(version) = protocol_version {
                    request = request.header("mcp-protocol-version", version);
                }
                // The stateless revision routes on these without reading the body.
                if let Some(method) = &facts.method {
                    request = request.header("mcp-method", method);
                }
                if let Some(name) = &facts.name {
                    request = request.header("mcp-name", name);
                }
                if let Some(id) = session.lock().expect("session lock").clone() {
                    request = request.header("mcp-session-id", id);
                }
                let request = request.body(message);
                let inbox = self.inbox.clone();
                let session = session.clone();
                let gone = gone.clone();
                let task = tokio::spawn(async move {
                    let undelivered = |why: String| Incoming::Undelivered(id.clone(), why);
                    let response = match request.send().await {
                        Ok(response) => response,
                        Err(e) => {
                            let why = format!("the server cannot be reached: {e}");
                            if e.is_connect() {
                                gone(why.clone());
                            }
                            let _ = inbox.send(undelivered(why)).await;
                            return;
                        }
                    };
                    if let Some(id) = response
                        .headers()
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        *session.lock().expect("session lock") = Some(id.to_string());
                    }
                    let status = response.status();
                    if status == reqwest::StatusCode::ACCEPTED {
                        return;
                    }
                    if !status.is_success() {
                        // Its first 300 bytes say enough; the rest is never read.
                        let mut head = Vec::new();
                        let mut body = response.bytes_stream();
                        while let Some(Ok(chunk)) = body.next().await {
                            head.extend_from_slice(&chunk);
                            if head.len() >= 300 {
                                break;
                            }
                        }
                        head.truncate(300);
                        let body = String::from_utf8_lossy(&head);
                        let _ = inbox
                            .send(undelivered(format!(
                                "the server answered HTTP {status}: {body}"
                            )))
                            .await;
                        return;
                    }
                    let stream = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|t| t.starts_with("text/event-stream"));
                    let mut body = response.bytes_stream();
                    if !stream {
                        // One JSON message, however it is laid out.
                        let mut whole = Capped::default();
                        while let Some(Ok(chunk)) = body.next().await {
                            whole.push(&chunk);
                        }
                        if let Some(framed) = whole.take() {
                            let _ = inbox.send(incoming(framed)).await;
                        }
                        return;
                    }
                    let mut events = Events::default();
                    while let Some(Ok(chunk)) = body.next().await {
                        for framed in events.feed(&chunk) {
                            // The answer to this request ends its exchange (a server may keep
                            // the stream open after it).
                            let done = matches!(&framed, Framed::Message(m) if answers(m, id.as_deref()))
                                || matches!(&framed, Framed::Refused { id: refused, .. } if refused.is_some() && *refused == id);
                            if inbox.send(incoming(framed)).await.is_err() || done {
                                return;
                            }
                        }
                    }
                });
                let mut requests = self.requests.lock().expect("requests lock");
                requests.retain(|_, t| !t.is_finished());
                match facts.id {
                    Some(id) if facts.method.is_some() => {
                        requests.insert(id, task);
                    }
                    _ => {
                        let mut tasks = self.tasks.lock().expect("tasks lock");
                        tasks.retain(|t| !t.is_finished());
                        tasks.push(task);
                    }
                }
                Ok(())
            }
        }
    }

    /// Ends the link: a stdio server's whole process group gets TERM, then KILL after the grace
    /// period; an HTTP session is ended with DELETE (best effort).
    pub async fn close(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match &self.kind {
            Kind::Stdio {
                stdin,
                group,
                child,
            } => {
                stdin.lock().await.take();
                signal_group(*group, rustix::process::Signal::TERM);
                let exited =
                    tokio::time::timeout(TERM_GRACE, async { child.lock().await.wait().await })
                        .await;
                if exited.is_err() {
                    signal_group(*group, rustix::process::Signal::KILL);
                    let _ = child.lock().await.kill().await;
                }
                // Anything left of the group (a grandchild that ignored TERM).
                signal_group(*group, rustix::process::Signal::KILL);
            }
            Kind::Http {
                client,
                target,
                session,
                ..
            } => {
                let id = session.lock().expect("session lock").take();
                if let Some(id) = id {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        client
                            .delete(target.url.clone())
                            .header("mcp-session-id", id)
                            .send(),
                    )
                    .await;
                }
            }
        }
        self.abort_all();
    }

    fn abort_all(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        for (_, task) in self.requests.lock().expect("requests lock").drain() {
            task.abort();
        }
    }

    /// The server's process id (stdio).
    pub fn pid(&self) -> Option<i32> {
        match &self.kind {
            Kind::Stdio { group, .. } => group.map(|p| p.as_raw_nonzero().get()),
            Kind::Http { .. } => None,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if *self.closed.get_mut() {
            return;
        }
        if let Kind::Stdio { group, .. } = &self.kind {
            signal_group(*group, rustix::process::Signal::KILL);
        }
        self.abort_all();
    }
}

fn incoming(framed: Framed) -> Incoming {
    match framed {
        Framed::Message(text) => Incoming::Message(text),
        Framed::Refused { id, why } => Incoming::Refused(id, why),
    }
}

fn status_signal(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal()
}

/// Whether `message` is the answer (result or error) to the request with `id` (as JSON).
fn answers(message: &str, id: Option<&str>) -> bool {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        id: Option<serde_json::Value>,
        #[serde(default)]
        method: Option<serde::de::IgnoredAny>,
    }
    let Some(id) = id else { return false };
    serde_json::from_str::<Head>(message).is_ok_and(|head| {
        head.method.is_none()
            && head
                .id
                .is_some_and(|v| serde_json::to_string(&v).is_ok_and(|text| text == id))
    })
}

/// What the HTTP transport needs to know of an outgoing message.
#[derive(Default)]
struct Facts {
    /// Its `id`, as JSON.
    id: Option<String>,
    method: Option<String>,
    /// The tool or prompt name, or resource URI, of the requests that name one.
    name: Option<String>,
    /// The request a `notifications/cancelled` is about (its id as JSON).
    cancels: Option<String>,
}

impl Facts {
    fn of(message: &str) -> Self {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(message) else {
            return Self::default();
        };
        let method = value
            .get("method")
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let params = value.get("params");
        let text = |key: &str| params?.get(key)?.as_str().map(str::to_string);
        let name = match method.as_deref() {
            Some("tools/call" | "prompts/get") => text("name"),
            Some("resources/read") => text("uri"),
            _ => None,
        };
        let cancels = match method.as_deref() {
            Some("notifications/cancelled") => params
                .and_then(|p| p.get("requestId"))
                .map(ToString::to_string),
            _ => None,
        };
        Self {
            id: value.get("id").map(ToString::to_string),
            method,
            name,
            cancels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_ends_with_the_answer_to_its_own_request() {
        assert!(answers(
            r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
            Some("5")
        ));
        assert!(answers(r#"{"error":{"code":1},"id":"a"}"#, Some(r#""a""#)));
        // A request of the server's with the same id, a string id "5", progress: not the answer.
        assert!(!answers(r#"{"id":5,"method":"roots/list"}"#, Some("5")));
        assert!(!answers(r#"{"id":"5","result":{}}"#, Some("5")));
        assert!(!answers(
            r#"{"method":"notifications/progress"}"#,
            Some("5")
        ));
        assert!(!answers(r#"{"id":5,"result":{}}"#, None));
    }

    #[test]
    fn outgoing_messages_give_the_headers_and_what_they_cancel() {
        let call = Facts::of(r#"{"id":3,"method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(call.id.as_deref(), Some("3"));
        assert_eq!(call.method.as_deref(), Some("tools/call"));
        assert_eq!(call.name.as_deref(), Some("echo"));
        let read = Facts::of(r#"{"id":4,"method":"resources/read","params":{"uri":"a://b"}}"#);
        assert_eq!(read.name.as_deref(), Some("a://b"));
        let cancel = Facts::of(r#"{"method":"notifications/cancelled","params":{"requestId":3}}"#);
        assert_eq!(cancel.cancels.as_deref(), Some("3"));
        assert!(cancel.id.is_none());
    }
}
