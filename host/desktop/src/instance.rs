//! One shell per user, and seed 000's URL scheme: `osloop://open`, `osloop://focus`,
//! `osloop://ensure-server`, `osloop://settings` (`capbridge://…` the same). The first `capbridge`
//! on a desktop listens on a Unix socket in its state directory; a second launch (a click on an
//! `osloop://` link, through the `.desktop` file) hands its URL to the first and prints the
//! answer instead of starting another server.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a URL asks of the running shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Show the status window.
    Open,
    /// Show the status window and bring it to the front.
    Focus,
    /// Bind the persisted port if it is not bound (never another port).
    EnsureServer,
    /// Show the settings view.
    Settings,
}

/// The schemes handled: seed 000's, and capbridge's own alias.
pub const SCHEMES: [&str; 2] = ["osloop", "capbridge"];

/// The running shell's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// Longest request line a second launch may send.
const MAX_LINE: u64 = 4096;
/// How long a second launch waits for the answer (an ensure-server binds a port: quick).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

impl Action {
    /// `osloop://focus` (also `osloop://focus/`, `capbridge://focus`); anything else is refused
    /// with the URLs that are understood.
    pub fn parse(url: &str) -> Result<Self, String> {
        let known = "osloop://open, osloop://focus, osloop://ensure-server, osloop://settings \
                     (or capbridge://…)";
        let parsed =
            url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e}); use {known}"))?;
        if !SCHEMES.contains(&parsed.scheme()) {
            return Err(format!("`{url}`: capbridge handles {known}"));
        }
        let clean = parsed.path().trim_matches('/').is_empty()
            && parsed.query().is_none()
            && parsed.fragment().is_none()
            && parsed.username().is_empty()
            && parsed.port().is_none();
        let action = match parsed.host_str() {
            Some("open") => Action::Open,
            Some("focus") => Action::Focus,
            Some("ensure-server") => Action::EnsureServer,
            Some("settings") => Action::Settings,
            _ => {
                return Err(format!(
                    "`{url}`: unknown action; capbridge handles {known}"
                ))
            }
        };
        if !clean {
            return Err(format!(
                "`{url}`: these URLs take no path, query or fragment; use {known}"
            ));
        }
        Ok(action)
    }
}

/// Where the running shell listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("desktop.sock")
}

/// Becoming the shell, or having handed the action to the one running.
pub enum Claim {
    /// No shell runs: this process is it, and answers on this socket.
    First(First),
    /// The running shell answered.
    Handed(Reply),
}

/// The socket of the one shell, and the lock that makes it the one: both held while it runs.
pub struct First {
    pub listener: UnixListener,
    pub(crate) _lock: std::fs::File,
}

/// How long a launch waits for a shell that holds the lock to start answering.
const STARTING: Duration = Duration::from_secs(60);

/// Hands `action` to the running shell, or becomes the shell when none runs. Who is the shell
/// is decided by a lock (`desktop.lock` beside the socket), so two launches at once never both
/// become it, and a socket left by a shell that died is taken over.
pub fn claim(socket: &Path, action: Action) -> anyhow::Result<Claim> {
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("desktop.lock"))?;
    let started = std::time::Instant::now();
    loop {
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = std::fs::remove_file(socket);
                let listener = UnixListener::bind(socket)?;
                return Ok(Claim::First(First {
                    listener,
                    _lock: lock,
                }));
            }
            // A shell runs (or is starting): hand it the action once it listens.
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if let Ok(stream) = UnixStream::connect(socket) {
                    return Ok(Claim::Handed(hand(stream, action)?));
                }
                anyhow::ensure!(
                    started.elapsed() < STARTING,
                    "another capbridge holds {} but does not answer",
                    dir.join("desktop.lock").display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn hand(stream: UnixStream, action: Action) -> anyhow::Result<Reply> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let mut writer = &stream;
    writeln!(writer, "{}", serde_json::to_string(&action)?)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(MAX_LINE)
        .read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// Answers second launches until the shell stops: each sends one action line and gets one
/// reply line. Only this user's processes are answered.
pub async fn serve<F, Fut>(listener: UnixListener, handle: F)
where
    F: Fn(Action) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send,
{
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
        return;
    };
    let handle = std::sync::Arc::new(handle);
    let me = rustix::process::getuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            continue;
        }
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
            )
            .await;
            let reply = match (read, serde_json::from_str::<Action>(line.trim())) {
                (Ok(Ok(_)), Ok(action)) => handle(action).await,
                _ => Reply {
                    ok: false,
                    message: "expected one action line".into(),
                },
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_default();
            text.push('\n');
            let _ = tokio::time::timeout(Duration::from_secs(5), write.write_all(text.as_bytes()))
                .await;
        });
    }
}

/// The `.desktop` file that makes this binary the handler of `osloop://` and `capbridge://`
/// links (written to `$XDG_DATA_HOME/applications/capbridge.desktop`, atomically, when it
/// differs, and then `xdg-mime` told so when it is installed).
pub fn register_url_handler(data_home: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_home.join("applications");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("capbridge.desktop");
    let mime: Vec<String> = SCHEMES
        .iter()
        .map(|s| format!("x-scheme-handler/{s};"))
        .collect();
    // Quoted only when it must be: some launchers (xdg-open's generic one) take the first word
    // of Exec as it is.
    let exe = exe.display().to_string();
    anyhow::ensure!(
        !exe.chars().any(char::is_control),
        "the program's path has control characters; not registering it"
    );
    let exe = if exe
        .chars()
        .all(|c| c.is_alphanumeric() || "/._-+".contains(c))
    {
        exe
    } else {
        // The Desktop Entry spec's quoting: inside quotes `"`, `` ` ``, `$` and `\` take a
        // backslash, which the string escape doubles; `%` is `%%`.
        let mut quoted = String::from("\"");
        for c in exe.chars() {
            match c {
                '"' | '`' | '$' | '\\' => {
                    quoted.push_str("\\\\");
                    quoted.push(c);
                }
                '%' => quoted.push_str("%%"),
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    };
    let text = format!(
        "[Desktop Entry]\nType=Application\nName=capbridge\nComment=Native capability host \
         for web apps\nExec={exe} %u\nTerminal=false\nNoDisplay=true\nMimeType={}\n",
        mime.concat()
    );
    // Registered already (the usual start): nothing to write, no xdg-mime to run.
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(path);
    }
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(&path)?;
    for scheme in SCHEMES {
        let _ = std::process::Command::new("xdg-mime")
            .args([
                "default",
                "capbridge.desktop",
                &format!("x-scheme-handler/{scheme}"),
            ])
            .env("XDG_DATA_HOME", data_home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_urls_and_the_alias_parse_and_nothing_else_does() {
        for (url, action) in [
            ("osloop://open", Action::Open),
            ("osloop://focus", Action::Focus),
            ("osloop://focus/", Action::Focus),
            ("osloop://ensure-server", Action::EnsureServer),
            ("osloop://settings", Action::Settings),
            ("capbridge://focus", Action::Focus),
        ] {
            assert_eq!(Action::parse(url), Ok(action), "{url}");
        }
        for url in [
            "osloop://",
            "osloop://quit",
            "osloop://focus/../settings",
            "osloop://focus?port=1",
            "osloop://focus#x",
            "osloop://u@focus",
            "osloop://focus:1",
            "http://focus",
            "focus",
            "",
        ] {
            let error = Action::parse(url).unwrap_err();
            assert!(error.contains("osloop://ensure-server"), "{url}: {error}");
        }
    }

    #[test]
    fn a_second_launch_hands_its_action_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let Claim::First(first) = claim(&socket, Action::Open).unwrap() else {
            panic!("nobody ran: this one is first");
        };
        let First { listener, _lock } = first;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.spawn(serve(listener, |action| async move {
            Reply {
                ok: action == Action::Focus,
                message: format!("{action:?}"),
            }
        }));
        let socket2 = socket.clone();
        let handed = std::thread::spawn(move || claim(&socket2, Action::Focus).unwrap())
            .join()
            .unwrap();
        let Claim::Handed(reply) = handed else {
            panic!("the first one answers");
        };
        assert!(reply.ok);
        assert_eq!(reply.message, "Focus");
        drop(runtime);
        drop(_lock);
        // The first is gone: its socket is taken over by the next launch.
        assert!(matches!(
            claim(&socket, Action::Open).unwrap(),
            Claim::First(_)
        ));
    }
}
