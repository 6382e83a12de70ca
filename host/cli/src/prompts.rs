//! Where the person answers prompts while there is no desktop window: the terminal running
//! `capbridge serve` (when it is interactive), and `capbridge prompts` from another terminal of
//! the same user, over a Unix socket that checks the caller's user id (`SO_PEERCRED`). Neither
//! is reachable through the localhost contract.
//!
//! The socket speaks one JSON line each way per connection: `{"op": "list"}`, `{"op":
//! "decide", "id": "req-1", "decision": "allow_once" | "allow_and_whitelist" | "reject"}` or
//! `{"op": "stop_input"}` (`capbridge stop-input`: all automation off at once) or `{"op":
//! "open_component", "id": "dash"}` (`capbridge component open`: a one-time launch link for a
//! component's web UI, in `url`), answered by `{"ok": true, ...}` or `{"ok": false, "error":
//! "..."}`.

use std::collections::HashSet;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use capbridge_runtime::approvals::{Approvals, DecideError, Decider, Decision, Prompt};
use capbridge_runtime::caps::input::InputService;
use capbridge_runtime::caps::serve::ServeService;
use capbridge_runtime::Runtime;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted on the socket.
const MAX_LINE_BYTES: u64 = 64 << 10;
/// How long one socket connection may take, start to end.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// The prompt socket of the bridge on `port`: in `$XDG_RUNTIME_DIR/capbridge/`, else in
/// `/tmp/capbridge-<uid>/`.
pub fn socket_path(port: u16) -> PathBuf {
    let dir = crate::unix_socket::runtime_dir().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("capbridge-{}", rustix::process::getuid().as_raw()))
    });
    dir.join(format!("prompts-{port}.sock"))
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    List,
    Decide {
        id: String,
        decision: Decision,
    },
    StopInput,
    /// A one-time launch link opening component `id`'s web UI (`capbridge component open`).
    OpenComponent {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<Prompt>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    /// How many automations `stop_input` turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<usize>,
    /// The launch link `open_component` made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Response {
    fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            prompts: None,
            prompt: None,
            stopped: None,
            url: None,
        }
    }

    fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            prompts: None,
            prompt: None,
            stopped: None,
            url: None,
        }
    }
}

/// Binds the prompt socket of the bridge on `port` and answers on it for `runtime`'s prompts
/// and automation: the socket's path, and the task (abort it to stop).
pub async fn answer_on_socket(
    port: u16,
    runtime: &Runtime,
) -> anyhow::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
    let socket = socket_path(port);
    let listener = crate::unix_socket::bind(&socket).await?;
    let faces = Faces {
        approvals: runtime.approvals().clone(),
        input: runtime.service::<InputService>(),
        serve: runtime.service::<ServeService>(),
        port,
    };
    Ok((socket, tokio::spawn(serve_socket(listener, faces))))
}

/// What the prompt socket answers for.
#[derive(Clone)]
pub struct Faces {
    pub approvals: Approvals,
    pub input: Option<Arc<InputService>>,
    /// Components' web UIs, which `open_component` makes launch links for.
    pub serve: Option<Arc<ServeService>>,
    /// The bridge's port, for those links.
    pub port: u16,
}

/// Answers `capbridge prompts` and `capbridge stop-input` on `listener` until the task is
/// dropped.
pub async fn serve_socket(listener: UnixListener, faces: Faces) {
    crate::unix_socket::serve(
        listener,
        MAX_CONNECTIONS,
        CONNECTION_TIMEOUT,
        move |stream| {
            let faces = faces.clone();
            async move { answer(stream, &faces).await }
        },
    )
    .await
}

async fn answer(stream: UnixStream, faces: &Faces) -> std::io::Result<()> {
    let approvals = &faces.approvals;
    let me = rustix::process::getuid().as_raw();
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // Read the request even from a caller who is refused, so that it reads the refusal rather
    // than a broken pipe.
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE_BYTES))
        .read_line(&mut line)
        .await?;
    let response = if peer != me {
        tracing::warn!(target: "capbridge::audit", peer_uid = peer, "prompt socket: refused a caller of another user");
        Response::error("this prompt socket answers only its own user")
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("not a prompt request: {e}")),
            Ok(Request::List) => Response {
                prompts: Some(approvals.pending()),
                ..Response::ok()
            },
            Ok(Request::StopInput) => Response {
                stopped: Some(faces.input.as_ref().map_or(0, |input| input.stop_all())),
                ..Response::ok()
            },
            Ok(Request::OpenComponent { id }) => {
                let code = match &faces.serve {
                    Some(serve) => serve.launch_code(&id),
                    None => Err("this capbridge serves no component web UIs".to_string()),
                };
                match code {
                    Ok(code) => Response {
                        url: Some(capbridge_api::plugins::launch_url(&id, faces.port, &code)),
                        ..Response::ok()
                    },
                    Err(e) => Response::error(e),
                }
            }
            Ok(Request::Decide { id, decision }) => {
                match approvals.decide(&id, decision, Decider::PromptsCli) {
                    Ok(prompt) => Response {
                        prompt: Some(prompt),
                        ..Response::ok()
                    },
                    Err(e) => Response::error(e.to_string()),
                }
            }
        }
    };
    let mut text = serde_json::to_string(&response).expect("serializable");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Sends one request to the bridge on `port` and returns its answer.
pub async fn ask(port: u16, request: &Request) -> anyhow::Result<Response> {
    let path = socket_path(port);
    let talk = async {
        let mut stream = UnixStream::connect(&path).await.with_context(|| {
            format!(
                "no capbridge answers prompts at {} (is `capbridge serve` running on port {port}? \
                 pass --port to choose another bridge)",
                path.display()
            )
        })?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(stream.take(16 << 20))
            .read_line(&mut answer)
            .await?;
        serde_json::from_str::<Response>(&answer).context("unreadable answer from the bridge")
    };
    tokio::time::timeout(CONNECTION_TIMEOUT, talk)
        .await
        .context("the bridge did not answer in time")?
}

/// How a prompt reads in a terminal.
pub fn describe(prompt: &Prompt) -> String {
    let mut text = format!(
        "{} wants to {} (prompt {}{}):\n    {}\n",
        prompt.component,
        match prompt.kind.as_str() {
            "install" => "install a tool".to_string(),
            "mcp-server" => format!(
                "register MCP server `{}`",
                prompt.server_id.as_deref().unwrap_or_default()
            ),
            "automation" => "turn automation on".to_string(),
            _ => "run a command".to_string(),
        },
        prompt.id,
        prompt
            .session
            .map(|s| format!(", session {s}"))
            .unwrap_or_default(),
        prompt.summary,
    );
    for (label, value) in [
        ("program", &prompt.program_path),
        ("in", &prompt.cwd),
        ("reaching", &prompt.url),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("  {label} {value}\n"));
        }
    }
    if !prompt.env_names.is_empty() {
        text.push_str(&format!("  setting {}\n", prompt.env_names.join(", ")));
    }
    if !prompt.header_names.is_empty() {
        text.push_str(&format!(
            "  sending headers {}\n",
            prompt.header_names.join(", ")
        ));
    }
    if prompt.has_stdin {
        text.push_str("  with standard input (not shown)\n");
    }
    for warning in &prompt.warnings {
        text.push_str(&format!("  WARNING: {warning}\n"));
    }
    let left = prompt
        .expires_at_ms
        .saturating_sub(capbridge_runtime::approvals::now_ms())
        .div_ceil(1000);
    text.push_str(&format!("  rejected unless answered within {left} s\n"));
    text
}

/// Asks in the terminal running `serve`, one prompt at a time, when its standard input is a
/// terminal it has in the foreground; does nothing otherwise (`serve &` would be stopped by the
/// terminal for reading it).
pub fn ask_in_terminal(approvals: Approvals) {
    let stdin = std::io::stdin();
    let foreground =
        rustix::termios::tcgetpgrp(&stdin).is_ok_and(|group| group == rustix::process::getpgrp());
    if !stdin.is_terminal() || !foreground {
        return;
    }
    let (lines_tx, lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if lines_tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    tokio::spawn(terminal_loop(approvals, lines));
}

async fn terminal_loop(approvals: Approvals, mut lines: tokio::sync::mpsc::Receiver<String>) {
    let mut changed = approvals.changed();
    let mut shown = HashSet::new();
    loop {
        let next = approvals
            .pending()
            .into_iter()
            .find(|p| !shown.contains(&p.id));
        let Some(prompt) = next else {
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                line = lines.recv() => if line.is_none() { return },
            }
            continue;
        };
        shown.insert(prompt.id.clone());
        // What was typed before this prompt appeared does not answer it.
        while lines.try_recv().is_ok() {}
        let shown_at = tokio::time::Instant::now();
        let choices = if prompt.whitelistable {
            "[o]nce, [a]lways (whitelist), [r]eject"
        } else {
            "[o]nce, [r]eject (installs are never whitelisted)"
        };
        say(&format!(
            "\ncapbridge: {}  answer {choices}: ",
            describe(&prompt)
        ));
        loop {
            tokio::select! {
                result = changed.changed() => {
                    if result.is_err() { return }
                    if approvals.get(&prompt.id).is_none() {
                        say(&format!("\ncapbridge: prompt {} was answered elsewhere or timed out\n", prompt.id));
                        break;
                    }
                }
                line = lines.recv() => {
                    let Some(line) = line else { return };
                    // Faster than anyone reads: typed for something else.
                    if shown_at.elapsed() < std::time::Duration::from_millis(300) {
                        say(&format!("(ignored: typed before the prompt appeared)\nanswer {choices}: "));
                        continue;
                    }
                    let decision = match line.trim().to_ascii_lowercase().as_str() {
                        "o" | "once" | "y" | "yes" => Decision::AllowOnce,
                        "a" | "always" if prompt.whitelistable => Decision::AllowAndWhitelist,
                        "r" | "reject" | "n" | "no" => Decision::Reject,
                        _ => {
                            say(&format!("answer {choices}: "));
                            continue;
                        }
                    };
                    match approvals.decide(&prompt.id, decision, Decider::Terminal) {
                        Ok(_) => say(&format!("capbridge: prompt {} answered: {}\n", prompt.id, decision_name(decision))),
                        Err(DecideError::NotFound(_)) => say(&format!("capbridge: prompt {} had already been answered or timed out\n", prompt.id)),
                        Err(e) => {
                            say(&format!("{e}\nanswer {choices}: "));
                            continue;
                        }
                    }
                    break;
                }
            }
        }
    }
}

pub fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::AllowOnce => "allow once",
        Decision::AllowAndWhitelist => "allow and whitelist",
        Decision::Reject => "reject",
    }
}

fn say(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}
