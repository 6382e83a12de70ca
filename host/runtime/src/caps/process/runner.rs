//! Running one approved command: the child's environment, containment, output, timeout and
//! termination, and the run's events.
//!
//! **Containment.** Where capbridge may create PID namespaces (root, or `CAP_SYS_ADMIN`), each
//! run is `unshare --pid --fork --kill-child -- <program> <args>` (util-linux): the program is
//! the first process of its own PID namespace, so everything it starts (grandchildren that
//! `setsid` into their own group included) lives in that namespace, and the kernel kills the
//! whole namespace when its first process dies. `unshare` gets `PR_SET_PDEATHSIG = SIGKILL`, so
//! if capbridge dies (even by SIGKILL) `unshare` dies, its `--kill-child` kills the first
//! process, and the namespace goes with it. Elsewhere ([`Containment::ProcessGroup`]) the run is
//! its own process group with the same death signal: terminate and timeout reach the group, but
//! a descendant that leaves the group (`setsid`) survives them, and only the direct child dies
//! with capbridge. Which one is in force is logged at the first run and reported in each run's
//! `started` event.
//!
//! **Output.** Each stream is read in chunks of up to 64 KiB. The first [`BUFFER_BYTES`] of each
//! are kept for `GET …/runs/:id`; past that the run is marked `partial_output`. Every chunk is
//! also published as an event (`system.command.stdout` / `.stderr`), as UTF-8 text when it is
//! (a character split across two reads waits for its end) and as base64 when it is not; the
//! publisher waits while an event socket of the run's session is behind, so a slow reader slows
//! the program (its pipe fills) rather than losing bytes or growing memory.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::{RunInfo, RunStatus};
use crate::approvals::now_ms;
use crate::caps::events::{Event, EventBus};

/// Bytes of each stream kept per run (10 MiB).
pub const BUFFER_BYTES: usize = 10 << 20;
/// How long a program gets after TERM before KILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the output of an ended run may keep arriving (a leftover process holding the pipe)
/// before reading stops.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The longest a run may take to end once it is told to: TERM, the grace period, KILL, and each
/// stream's drain.
pub const LONGEST_ENDING: Duration = Duration::from_secs(2 + 2 * 2 + 1);
const CHUNK_BYTES: usize = 64 << 10;

/// How a run's processes are kept together, so that ending the run ends all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Containment {
    /// A PID namespace per run, through util-linux's `unshare` at this path.
    PidNamespace(PathBuf),
    /// A process group per run.
    ProcessGroup,
}

impl Containment {
    /// What this host can do, found out once.
    pub fn get() -> &'static Containment {
        static FOUND: OnceLock<Containment> = OnceLock::new();
        FOUND.get_or_init(|| {
            let found = Self::detect();
            match &found {
                Containment::PidNamespace(unshare) => tracing::info!(target: "capbridge::process", unshare = %unshare.display(), "each command runs in its own PID namespace"),
                Containment::ProcessGroup => tracing::warn!(target: "capbridge::process", "PID namespaces are not available (capbridge is not root, or util-linux's unshare is missing): each command runs in its own process group; a process that leaves its group survives terminate, timeout and capbridge's death"),
            }
            found
        })
    }

    fn detect() -> Containment {
        let unshare = ["/usr/bin/unshare", "/bin/unshare"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let Some(unshare) = unshare else {
            return Containment::ProcessGroup;
        };
        let works = std::process::Command::new(&unshare)
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(&unshare)
            .arg("--version")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            Containment::PidNamespace(unshare)
        } else {
            Containment::ProcessGroup
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Containment::PidNamespace(_) => "pid-namespace",
            Containment::ProcessGroup => "process-group",
        }
    }
}

/// What the child gets, all checked by the caller.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub timeout: Duration,
}

/// One run's shared record: what the routes read while the run goes on.
pub struct RunRecord {
    pub info: Mutex<RunInfo>,
    pub stdout: Mutex<Vec<u8>>,
    pub stderr: Mutex<Vec<u8>>,
    /// Set to true to end the run (terminate, session end, host stop).
    pub stop: watch::Sender<bool>,
    /// True once the run is over (its final status set).
    pub done: watch::Sender<bool>,
}

impl RunRecord {
    pub fn new(info: RunInfo) -> Self {
        Self {
            info: Mutex::new(info),
            stdout: Mutex::new(Vec::new()),
            stderr: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
            done: watch::channel(false).0,
        }
    }

    pub fn info(&self) -> RunInfo {
        self.info.lock().expect("run lock").clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut RunInfo)) -> RunInfo {
        let mut info = self.info.lock().expect("run lock");
        change(&mut info);
        info.clone()
    }

    /// Sets the final state and tells whoever waits.
    pub fn finish(&self, change: impl FnOnce(&mut RunInfo)) -> RunInfo {
        let info = self.update(|info| {
            change(info);
            info.ended_at_ms.get_or_insert_with(now_ms);
        });
        self.done.send_replace(true);
        info
    }

    /// Waits (at most `limit`) until the run is over.
    pub async fn wait_done(&self, limit: Duration) {
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(limit, done.wait_for(|d| *d)).await;
    }
}

/// Publishes a run's events, each only to the session that asked.
#[derive(Clone)]
pub struct RunEvents {
    pub bus: EventBus,
    pub audit: crate::audit::AuditLog,
    pub session: Option<u64>,
    pub run_id: String,
}

impl RunEvents {
    pub fn publish(&self, topic: &str, mut payload: serde_json::Value) {
        payload["runId"] = json!(self.run_id);
        self.bus.publish(self.event(topic, payload));
    }

    async fn publish_paced(&self, topic: &str, payload: serde_json::Value) {
        self.bus.publish_paced(self.event(topic, payload)).await;
    }

    fn event(&self, topic: &str, payload: serde_json::Value) -> Event {
        Event::host(topic, payload, self.session)
    }
}

/// Runs an approved command to its end, updating `record` and publishing its events.
pub async fn run(launch: Launch, record: Arc<RunRecord>, events: RunEvents) {
    // Withdrawn (terminated, its session ended, the host stopping) while it waited.
    if *record.stop.borrow() {
        record.finish(|info| {
            info.status = RunStatus::Terminated;
            info.message = Some("terminated before it started".into());
        });
        events.publish(
            "system.command.terminated",
            json!({ "message": "terminated before it started" }),
        );
        return;
    }
    let containment = Containment::get();
    let mut command = contained(&launch.program, &launch.args, &launch.cwd, &launch.env);
    command.stdin(if launch.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {}: {e}", launch.program.display());
            let info = record.finish(|info| {
                info.status = RunStatus::Failed;
                info.message = Some(message.clone());
            });
            tracing::info!(target: "capbridge::audit", run = %info.id, component = %info.component, "command failed to start: {message}");
            events.audit.record(
                "process.started",
                Some(&info.component),
                info.session,
                crate::audit::Outcome::Failed,
                json!({ "run": info.id, "program": info.program_path }),
            );
            events.publish(
                "system.command.failed",
                json!({ "reason": "spawn", "message": message }),
            );
            return;
        }
    };
    let group = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
    let info = record.update(|info| {
        info.status = RunStatus::Running;
        info.started_at_ms = Some(now_ms());
    });
    tracing::info!(target: "capbridge::audit", run = %info.id, component = %info.component, session = ?info.session, program = %info.program_path, containment = containment.name(), "command started");
    events.audit.record(
        "process.started",
        Some(&info.component),
        info.session,
        crate::audit::Outcome::Allowed,
        json!({ "run": info.id, "program": info.program_path, "containment": containment.name() }),
    );
    events.publish(
        "system.command.started",
        json!({
            "kind": info.kind.as_str(),
            "programPath": info.program_path,
            "cwd": info.cwd,
            "containment": containment.name(),
            "pid": child.id(),
        }),
    );

    let feeding = match (launch.stdin, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => Some(tokio::spawn(async move {
            // A program that does not read its input closes the pipe: not an error of the run.
            let _ = stdin.write_all(text.as_bytes()).await;
        })),
        _ => None,
    };
    let stdout = tokio::spawn(capture(
        child.stdout.take().expect("piped"),
        record.clone(),
        Stream::Stdout,
        events.clone(),
    ));
    let stderr = tokio::spawn(capture(
        child.stderr.take().expect("piped"),
        record.clone(),
        Stream::Stderr,
        events.clone(),
    ));

    let mut stop = record.stop.subscribe();
    let ended = tokio::select! {
        status = child.wait() => Ending::Exited(status),
        _ = tokio::time::sleep(launch.timeout) => Ending::TimedOut,
        _ = stop.wait_for(|s| *s) => Ending::Stopped,
    };
    let status = match ended {
        Ending::Exited(ref status) => status.as_ref().ok().copied(),
        Ending::TimedOut | Ending::Stopped => {
            signal_group(group, rustix::process::Signal::TERM);
            match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    signal_group(group, rustix::process::Signal::KILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    // Whatever of the group is left (a background process of a finished command) goes too; in
    // a PID namespace the kernel has already ended it with its first process.
    signal_group(group, rustix::process::Signal::KILL);
    // Input nobody read any more is dropped with its pipe.
    if let Some(feeding) = feeding {
        feeding.abort();
    }
    for reader in [stdout, stderr] {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }

    let (exit_code, signal) = exit_of(status);
    let info = record.finish(|info| {
        info.exit_code = exit_code;
        info.signal = signal;
        match ended {
            Ending::Exited(_) => info.status = RunStatus::Completed,
            Ending::TimedOut => {
                info.status = RunStatus::Failed;
                info.message = Some(format!(
                    "timed out after {} ms; ended with TERM, then KILL",
                    launch.timeout.as_millis()
                ));
            }
            Ending::Stopped => {
                info.status = RunStatus::Terminated;
                info.message.get_or_insert_with(|| "terminated".into());
            }
        }
    });
    tracing::info!(target: "capbridge::audit", run = %info.id, component = %info.component, status = info.status.as_str(), exit_code = ?exit_code, signal = ?signal, "command ended");
    events.audit.record(
        "process.ended",
        Some(&info.component),
        info.session,
        crate::audit::Outcome::Allowed,
        json!({ "run": info.id, "status": info.status.as_str(), "exitCode": exit_code, "signal": signal }),
    );
    let summary = json!({
        "exitCode": info.exit_code,
        "signal": info.signal,
        "partial_output": info.partial_output,
        "stdoutBytes": info.stdout_bytes,
        "stderrBytes": info.stderr_bytes,
        "message": info.message,
    });
    let topic = match info.status {
        RunStatus::Completed => "system.command.completed",
        RunStatus::Terminated => "system.command.terminated",
        _ => "system.command.failed",
    };
    events.publish(topic, summary);
}

enum Ending {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Stopped,
}

/// A child process kept together with everything it starts ([`Containment`]): its own process
/// group (or PID namespace), killed when capbridge dies (PDEATHSIG) or the handle is dropped,
/// with exactly `env` as its environment. Its output streams are piped; its input is null
/// unless the caller says otherwise.
pub fn contained(
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> tokio::process::Command {
    let mut command = match Containment::get() {
        Containment::PidNamespace(unshare) => {
            let mut command = tokio::process::Command::new(unshare);
            command
                .args(["--pid", "--fork", "--kill-child", "--"])
                .arg(program);
            command
        }
        Containment::ProcessGroup => tokio::process::Command::new(program),
    };
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let parent = rustix::process::getpid();
    // SAFETY: between fork and exec only async-signal-safe system calls (prctl, getppid, kill).
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // capbridge may have died between fork and the prctl: then nobody is left to wait.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("capbridge exited"));
            }
            Ok(())
        });
    }
    command
}

pub fn signal_group(group: Option<rustix::process::Pid>, signal: rustix::process::Signal) {
    if let Some(group) = group {
        // ESRCH: nobody left in the group.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// The exit code or signal of what ran. Under `unshare`, the program's own exit code comes
/// through, and a signal that ended the program `unshare` raises on itself, so it comes through
/// as a signal too.
fn exit_of(status: Option<ExitStatus>) -> (Option<i32>, Option<i32>) {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (Some(code), None),
            (None, signal) => (None, signal),
        },
        None => (None, None),
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads one stream to its end: keeps the first [`BUFFER_BYTES`], publishes every byte.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    record: Arc<RunRecord>,
    stream: Stream,
    events: RunEvents,
) {
    let topic = match stream {
        Stream::Stdout => "system.command.stdout",
        Stream::Stderr => "system.command.stderr",
    };
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut text = Utf8Chunks::default();
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = &chunk[..n];
        {
            let mut buffer = match stream {
                Stream::Stdout => record.stdout.lock(),
                Stream::Stderr => record.stderr.lock(),
            }
            .expect("buffer lock");
            let room = BUFFER_BYTES.saturating_sub(buffer.len());
            buffer.extend_from_slice(&bytes[..room.min(n)]);
            record.update(|info| {
                match stream {
                    Stream::Stdout => info.stdout_bytes += n as u64,
                    Stream::Stderr => info.stderr_bytes += n as u64,
                }
                info.partial_output |= room < n;
            });
        }
        if let Some((data, encoding)) = text.encode(bytes, false) {
            let payload = json!({ "runId": events.run_id, "data": data, "encoding": encoding });
            events.publish_paced(topic, payload).await;
        }
    }
    if let Some((data, encoding)) = text.encode(&[], true) {
        let payload = json!({ "runId": events.run_id, "data": data, "encoding": encoding });
        events.publish_paced(topic, payload).await;
    }
}

/// Turns a byte stream into event texts without losing a byte: UTF-8 text where the bytes are
/// UTF-8 (a character split between reads is held until its end arrives), base64 of the exact
/// bytes where they are not. Concatenating the decoded texts gives the stream back.
#[derive(Default)]
pub struct Utf8Chunks {
    held: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `bytes` (after what was held) and its encoding; `None` when there is nothing
    /// to send yet. `end`: the stream is over, hold nothing back.
    pub fn encode(&mut self, bytes: &[u8], end: bool) -> Option<(String, &'static str)> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(bytes);
        if data.is_empty() {
            return None;
        }
        match std::str::from_utf8(&data) {
            Ok(_) => Some((String::from_utf8(data).expect("checked"), "utf-8")),
            Err(e) if e.error_len().is_none() && !end => {
                // Only the last character is incomplete: hold it for the next read.
                self.held = data.split_off(e.valid_up_to());
                (!data.is_empty()).then(|| (String::from_utf8(data).expect("checked"), "utf-8"))
            }
            Err(_) => Some((
                base64::engine::general_purpose::STANDARD.encode(&data),
                "base64",
            )),
        }
    }
}

/// Finds `program` the way `execvp` would: an absolute path as it is, a bare name in each
/// directory of `path` in turn (the first executable file).
pub fn resolve_program(program: &str, path: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        let candidate = Path::new(program);
        return is_executable(candidate).then(|| candidate.to_path_buf());
    }
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_text_split_characters_wait_and_other_bytes_are_base64() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(
            chunks.encode(b"hello", false),
            Some(("hello".into(), "utf-8"))
        );
        let euro = "€".as_bytes();
        assert_eq!(chunks.encode(&euro[..1], false), None);
        assert_eq!(
            chunks.encode(&[euro[1], euro[2], b'!'], false),
            Some(("€!".into(), "utf-8"))
        );
        let (data, encoding) = chunks.encode(&[0xff, 0xfe, b'a'], false).unwrap();
        assert_eq!(encoding, "base64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
            vec![0xff, 0xfe, b'a']
        );
        // An incomplete character at the very end is sent as bytes.
        assert_eq!(chunks.encode(&euro[..2], false), None);
        let (data, encoding) = chunks.encode(&[], true).unwrap();
        assert_eq!(encoding, "base64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
            euro[..2].to_vec()
        );
    }

    #[test]
    fn programs_resolve_like_execvp() {
        assert_eq!(
            resolve_program("sh", "relative:/nonexistent:/bin:/usr/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("/bin/sh", ""),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("no-such-program-here", "/bin:/usr/bin"),
            None
        );
        assert_eq!(resolve_program("/etc/passwd", ""), None, "not executable");
    }
}
