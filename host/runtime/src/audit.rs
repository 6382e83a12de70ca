//! The audit log: every grant use that matters, appended as it happens, kept 90 days.
//!
//! - **Stored** append-only as JSON lines (`<state>/audit/audit.jsonl`), written by one thread in
//!   batches, each batch `fsync`ed before anyone waiting on it hears it is done
//!   ([`AuditLog::flush`]: the contract answers a request only after its entries are on disk).
//! - **Queried** through a SQLite projection (`audit.sqlite` beside it), built from the lines at
//!   start and kept current by the same thread.
//! - **Kept** for the retention window (90 days by default): older entries are dropped from the
//!   projection, and the lines rewritten from what is kept, at start and every hour.
//! - **After a crash** a torn last line is cut off and malformed lines are skipped: what a flush
//!   acknowledged is whole on disk.
//!
//! What an entry holds is metadata: kind, component, session, the session's origin, an outcome
//! and a small `detail` object. Never a token, never file contents or event payloads; a command
//! appears as its template, with secret placeholders as placeholders.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long entries are kept unless the config says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Most entries one query returns.
pub const MAX_PAGE: usize = 1000;
/// How often the writer drops entries past the retention window.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Most entries written (and `fsync`ed) as one batch.
const MAX_BATCH: usize = 4096;
/// Most entries kept for a retry while the log cannot be written.
const MAX_PENDING: usize = 100_000;

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Increasing across the log's life.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The `capbridge serve` run it happened in (session numbers restart with each run).
    pub run: String,
    /// What happened: `session.opened`, `event.published`, `process.started`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// The web app origin of the session, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub outcome: Outcome,
    /// Kind-specific facts (a topic, a path, a command template); never contents.
    #[serde(default)]
    pub detail: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Denied,
    Failed,
}

impl Outcome {
    /// The outcome's name, as stored.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// What to look for; every field narrows.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub component: Option<String>,
    /// A session of a run.
    pub session: Option<(String, u64)>,
    /// A kind (`process.started`), or a family with a trailing `.*` (`process.*`).
    pub kind: Option<String>,
    /// Only entries older than this `seq` (the previous page's `next`).
    pub before: Option<u64>,
    pub limit: usize,
}

/// One page of entries, newest first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// The audit log of this host; cheap to clone. [`AuditLog::off`] records nothing (the CLI's
/// one-off commands: only `capbridge serve` keeps the log).
#[derive(Clone)]
pub struct AuditLog(Option<Arc<Inner>>);

struct Inner {
    /// Held while the log is open: one writer at a time.
    _lock: std::fs::File,
    run: String,
    next_seq: AtomicU64,
    /// Entries sent to the writer, and entries it has made durable: a flush with nothing new
    /// returns at once.
    sent: AtomicU64,
    written: Arc<AtomicU64>,
    sender: Mutex<mpsc::Sender<Message>>,
    /// The origin of each live session, to stamp its entries.
    origins: Mutex<HashMap<u64, String>>,
    reader: Mutex<Connection>,
    jsonl: PathBuf,
}

enum Message {
    Entry(Box<AuditEntry>),
    /// Answered once every entry sent before it is on disk.
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`: rebuilds the projection from the lines, drops what
    /// is past `retention`, and starts the writer.
    pub fn open(dir: &Path, retention: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::File::create(dir.join("audit.lock"))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            anyhow::bail!(
                "the audit log in {} is in use by another capbridge serve; stop it first",
                dir.display()
            );
        }
        let jsonl = dir.join("audit.jsonl");
        let sqlite = dir.join("audit.sqlite");
        let (entries, good_len, malformed) = read_lines(&jsonl)?;
        // A line torn by a crash is cut off, so the next one starts clean.
        if let Ok(meta) = std::fs::metadata(&jsonl) {
            if meta.len() > good_len {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&jsonl)?
                    .set_len(good_len)?;
            }
        }
        let mut db = open_db(&sqlite)?;
        let known: u64 = db.query_row("SELECT COALESCE(MAX(seq), 0) FROM entries", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        let last = entries.iter().map(|e| e.seq).max().unwrap_or(0).max(known);
        // Every line, not only the newer ones: a write whose projection update failed is
        // still on disk, and belongs in the projection.
        let lines: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default())
            .collect();
        insert(
            &mut db,
            entries.iter().zip(lines.iter().map(String::as_str)),
        )?;
        let written = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            written: written.clone(),
            db,
            jsonl: jsonl.clone(),
            file: None,
            retention,
            pruned_at: Instant::now(),
        };
        writer.prune(malformed > 0)?;
        let reader = Connection::open(&sqlite)?;
        reader.busy_timeout(Duration::from_secs(5))?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("capbridge-audit".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Self(Some(Arc::new(Inner {
            _lock: lock,
            run: crate::state_file::random_hex()
                .map_err(anyhow::Error::msg)?
                .chars()
                .take(8)
                .collect(),
            next_seq: AtomicU64::new(last + 1),
            sent: AtomicU64::new(0),
            written,
            sender: Mutex::new(sender),
            origins: Mutex::new(HashMap::new()),
            reader: Mutex::new(reader),
            jsonl,
        }))))
    }

    /// A log that records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// This run's id, as entries carry it (empty when off).
    pub fn run(&self) -> &str {
        self.0.as_ref().map_or("", |inner| inner.run.as_str())
    }

    /// The file the entries are appended to (`None` when off).
    pub fn path(&self) -> Option<&Path> {
        self.0.as_ref().map(|inner| inner.jsonl.as_path())
    }

    /// Appends an entry (written by the next batch; [`Self::flush`] waits for it).
    pub fn record(
        &self,
        kind: &str,
        component: Option<&str>,
        session: Option<u64>,
        outcome: Outcome,
        detail: Value,
    ) {
        let Some(inner) = &self.0 else {
            return;
        };
        let origin = session.and_then(|s| {
            inner
                .origins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&s)
                .cloned()
        });
        let entry = AuditEntry {
            seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
            time_ms: now_ms(),
            run: inner.run.clone(),
            kind: kind.to_string(),
            component: component.map(str::to_string),
            session,
            origin,
            outcome,
            detail,
        };
        let sender = inner.sender.lock().unwrap_or_else(|p| p.into_inner());
        if sender.send(Message::Entry(Box::new(entry))).is_ok() {
            inner.sent.fetch_add(1, Ordering::Release);
        }
    }

    /// A session began for a client on `origin`; its entries carry the origin from now on.
    pub fn session_opened(&self, session: u64, origin: Option<&str>) {
        if let (Some(origin), Some(inner)) = (origin, &self.0) {
            inner
                .origins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session, origin.to_string());
        }
        self.record(
            "session.opened",
            None,
            Some(session),
            Outcome::Allowed,
            Value::Null,
        );
    }

    /// A session ended (`why`: expired, replaced, …).
    pub fn session_ended(&self, session: u64, why: &str) {
        self.record(
            "session.ended",
            None,
            Some(session),
            Outcome::Allowed,
            serde_json::json!({ "why": why }),
        );
        if let Some(inner) = &self.0 {
            inner
                .origins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&session);
        }
    }

    /// Waits until every entry recorded before this call is on disk.
    pub async fn flush(&self) -> Result<(), String> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        if inner.written.load(Ordering::Acquire) >= inner.sent.load(Ordering::Acquire) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        inner
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Message::Flush(tx))
            .map_err(|_| "the audit writer stopped".to_string())?;
        rx.await
            .map_err(|_| "the audit writer stopped".to_string())?
    }

    /// Entries matching `query`, newest first.
    pub fn query(&self, query: &Query) -> anyhow::Result<Page> {
        let Some(inner) = &self.0 else {
            return Ok(Page {
                entries: Vec::new(),
                next: None,
            });
        };
        let db = inner.reader.lock().unwrap_or_else(|p| p.into_inner());
        query_db(&db, query)
    }
}

/// Reads the entries of an audit log without opening it for writing (`capbridge audit` while
/// a bridge runs, or after).
pub fn query_dir(dir: &Path, query: &Query) -> anyhow::Result<Page> {
    let sqlite = dir.join("audit.sqlite");
    if !sqlite.exists() {
        return Ok(Page {
            entries: Vec::new(),
            next: None,
        });
    }
    let db = Connection::open_with_flags(
        &sqlite,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(Duration::from_secs(5))?;
    query_db(&db, query)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The entries of the JSON lines file, the length of its whole lines, and how many whole lines
/// were malformed.
fn read_lines(path: &Path) -> anyhow::Result<(Vec<AuditEntry>, u64, usize)> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(e.into()),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut entries = Vec::new();
    let mut good = 0u64;
    let mut malformed = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        good += n as u64;
        match serde_json::from_slice::<AuditEntry>(&line) {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                malformed += 1;
                tracing::warn!("audit log: skipping a malformed line: {e}");
            }
        }
    }
    Ok((entries, good, malformed))
}

fn open_db(path: &Path) -> anyhow::Result<Connection> {
    let open = |path: &Path| -> rusqlite::Result<Connection> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // The projection is rebuilt from the lines at every start: its commits need not wait
        // for the disk (the lines' own fsync is what makes an entry durable).
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (
                seq INTEGER PRIMARY KEY,
                time_ms INTEGER NOT NULL,
                run TEXT NOT NULL,
                kind TEXT NOT NULL,
                component TEXT,
                session INTEGER,
                entry TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS entries_time ON entries (time_ms);",
        )?;
        Ok(db)
    };
    match open(path) {
        Ok(db) => Ok(db),
        Err(e) => {
            // The projection is derived: rebuild it from the lines.
            tracing::warn!(
                "audit projection {} unusable ({e}); rebuilding",
                path.display()
            );
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            Ok(open(path)?)
        }
    }
}

/// Adds entries to the projection, each with its JSON line (without the newline).
fn insert<'a>(
    db: &mut Connection,
    entries: impl Iterator<Item = (&'a AuditEntry, &'a str)>,
) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO entries (seq, time_ms, run, kind, component, session, entry)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (e, line) in entries {
            stmt.execute(params![
                e.seq as i64,
                e.time_ms as i64,
                e.run,
                e.kind,
                e.component,
                e.session.map(|s| s as i64),
                line,
            ])?;
        }
    }
    tx.commit()
}

fn query_db(db: &Connection, query: &Query) -> anyhow::Result<Page> {
    let mut sql = String::from("SELECT seq, entry FROM entries WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
        args.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(since) = query.since_ms {
        arg(&mut sql, "time_ms >=", (since as i64).into());
    }
    if let Some(until) = query.until_ms {
        arg(&mut sql, "time_ms <", (until as i64).into());
    }
    if let Some(component) = &query.component {
        arg(&mut sql, "component =", component.clone().into());
    }
    if let Some((run, session)) = &query.session {
        arg(&mut sql, "run =", run.clone().into());
        arg(&mut sql, "session =", (*session as i64).into());
    }
    match query.kind.as_deref() {
        Some(family) if family.ends_with(".*") => {
            let prefix = &family[..family.len() - 1];
            let clause = format!("substr(kind, 1, {}) =", prefix.chars().count());
            arg(&mut sql, &clause, prefix.to_string().into());
        }
        Some(kind) => arg(&mut sql, "kind =", kind.to_string().into()),
        None => {}
    }
    if let Some(before) = query.before {
        arg(&mut sql, "seq <", (before as i64).into());
    }
    let limit = query.limit.clamp(1, MAX_PAGE);
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", limit + 1));
    let mut stmt = db.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let text: String = row.get(1)?;
        entries.push(serde_json::from_str::<AuditEntry>(&text)?);
    }
    let next = (entries.len() > limit).then(|| {
        entries.truncate(limit);
        entries.last().map(|e| e.seq)
    });
    Ok(Page {
        entries,
        next: next.flatten(),
    })
}

/// The one thread that writes: lines first (and `fsync`), then the projection.
struct Writer {
    written: Arc<AtomicU64>,
    db: Connection,
    jsonl: PathBuf,
    file: Option<std::fs::File>,
    retention: Duration,
    pruned_at: Instant,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        // Entries a failed write left: retried with the next batch.
        let mut pending: Vec<AuditEntry> = Vec::new();
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let mut waiting = Vec::new();
            for message in batch {
                match message {
                    Message::Entry(entry) => pending.push(*entry),
                    Message::Flush(reply) => waiting.push(reply),
                }
            }
            let count = pending.len() as u64;
            let written = self.write(&pending).map_err(|e| {
                tracing::error!(target: "capbridge::audit", file = %self.jsonl.display(), "cannot write the audit log: {e:#}");
                format!("cannot write the audit log: {e}")
            });
            if written.is_ok() {
                self.written.fetch_add(count, Ordering::Release);
                pending.clear();
            } else if pending.len() > MAX_PENDING {
                let dropped = pending.len() - MAX_PENDING;
                pending.drain(..dropped);
                tracing::error!(target: "capbridge::audit", dropped, "audit entries dropped: the log cannot be written");
            }
            for reply in waiting {
                let _ = reply.send(written.clone());
            }
            if self.pruned_at.elapsed() > PRUNE_EVERY {
                if let Err(e) = self.prune(false) {
                    tracing::error!(target: "capbridge::audit", "cannot prune the audit log: {e:#}");
                }
            }
        }
    }

    fn write(&mut self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // Each entry serialised once: the line on disk, and the projection's copy.
        let lines = entries
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<String>, _>>()?;
        let mut text = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in &lines {
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.jsonl)?,
            ),
        };
        let good = file.metadata()?.len();
        if let Err(e) = file.write_all(&text).and_then(|()| file.sync_data()) {
            // No torn line for the next batch to follow: back to the last whole one.
            let _ = file.set_len(good);
            return Err(e.into());
        }
        // The lines are on disk (acknowledged); a projection that missed them catches up at
        // the next start.
        if let Err(e) = insert(
            &mut self.db,
            entries.iter().zip(lines.iter().map(String::as_str)),
        ) {
            tracing::error!(target: "capbridge::audit", "the audit projection missed entries: {e}");
        }
        Ok(())
    }

    /// Drops entries past the retention window; rewrites the lines from what is kept when any
    /// were dropped (or `rewrite`: the file holds malformed lines).
    fn prune(&mut self, rewrite: bool) -> anyhow::Result<()> {
        self.pruned_at = Instant::now();
        let cutoff = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let dropped = self.db.execute(
            "DELETE FROM entries WHERE time_ms < ?1",
            params![cutoff as i64],
        )?;
        if dropped == 0 && !rewrite {
            return Ok(());
        }
        let dir = self.jsonl.parent().unwrap_or(Path::new("."));
        let mut temp = tempfile::Builder::new()
            .prefix("audit.jsonl.new-")
            .tempfile_in(dir)?;
        {
            let mut stmt = self.db.prepare("SELECT entry FROM entries ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            let mut out = std::io::BufWriter::new(temp.as_file_mut());
            while let Some(row) = rows.next()? {
                let text: String = row.get(0)?;
                out.write_all(text.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        temp.as_file().sync_all()?;
        temp.persist(&self.jsonl).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()?;
        // Appends go to the new file from now on.
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(seq: u64, time_ms: u64, kind: &str) -> AuditEntry {
        AuditEntry {
            seq,
            time_ms,
            run: "old".into(),
            kind: kind.into(),
            component: Some("echo".into()),
            session: Some(1),
            origin: None,
            outcome: Outcome::Allowed,
            detail: json!({ "topic": "echo.said" }),
        }
    }

    fn lines(entries: &[AuditEntry]) -> String {
        entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect()
    }

    fn all(log: &AuditLog) -> Vec<AuditEntry> {
        log.query(&Query {
            limit: MAX_PAGE,
            ..Query::default()
        })
        .unwrap()
        .entries
    }

    #[tokio::test]
    async fn entries_past_retention_are_dropped_from_the_projection_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let day = 24 * 3600 * 1000;
        let now = now_ms();
        let old = entry(1, now - 100 * day, "event.published");
        let recent = entry(2, now - 10 * day, "event.published");
        std::fs::write(
            dir.path().join("audit.jsonl"),
            lines(&[old, recent.clone()]),
        )
        .unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_RETENTION).unwrap();
        assert_eq!(all(&log), std::slice::from_ref(&recent));
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(text, lines(&[recent]));
        // Numbering goes on after what is kept.
        log.record(
            "session.opened",
            None,
            Some(7),
            Outcome::Allowed,
            Value::Null,
        );
        log.flush().await.unwrap();
        assert_eq!(all(&log)[0].seq, 3);
        // A shorter retention drops more at the next start.
        drop(log);
        let log = AuditLog::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(all(&log).len(), 1, "only the entry of this hour is left");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_malformed_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let whole = entry(1, now, "event.published");
        let text = format!(
            "{}not json\n{}",
            lines(std::slice::from_ref(&whole)),
            &serde_json::to_string(&entry(3, now, "file.read")).unwrap()[..40]
        );
        std::fs::write(dir.path().join("audit.jsonl"), text).unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_RETENTION).unwrap();
        assert_eq!(all(&log), std::slice::from_ref(&whole));
        log.record(
            "file.written",
            Some("filesystem"),
            None,
            Outcome::Allowed,
            json!({"path": "a"}),
        );
        log.flush().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let kinds: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditEntry>(l).unwrap().kind)
            .collect();
        assert_eq!(kinds, ["event.published", "file.written"], "{text}");
    }

    #[tokio::test]
    async fn queries_filter_by_time_component_session_and_kind_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_RETENTION).unwrap();
        log.session_opened(1, Some("https://app.example"));
        for i in 0..5 {
            log.record(
                "event.published",
                Some("echo"),
                Some(1),
                Outcome::Allowed,
                json!({ "i": i }),
            );
        }
        log.record(
            "process.started",
            Some("commands"),
            Some(2),
            Outcome::Allowed,
            Value::Null,
        );
        log.record(
            "process.ended",
            Some("commands"),
            Some(2),
            Outcome::Allowed,
            Value::Null,
        );
        log.flush().await.unwrap();
        let query = |q: Query| {
            log.query(&Query {
                limit: q.limit.max(1),
                ..q
            })
            .unwrap()
        };
        let mine = query(Query {
            session: Some((log.run().to_string(), 1)),
            limit: 100,
            ..Query::default()
        });
        assert_eq!(mine.entries.len(), 6);
        assert!(mine
            .entries
            .iter()
            .all(|e| e.origin.as_deref() == Some("https://app.example")));
        let other_run = query(Query {
            session: Some(("another".into(), 1)),
            limit: 100,
            ..Query::default()
        });
        assert!(other_run.entries.is_empty());
        let family = query(Query {
            kind: Some("process.*".into()),
            limit: 100,
            ..Query::default()
        });
        assert_eq!(family.entries.len(), 2);
        assert_eq!(
            query(Query {
                component: Some("echo".into()),
                limit: 100,
                ..Query::default()
            })
            .entries
            .len(),
            5
        );
        // Two at a time, newest first, to the end.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = query(Query {
                before,
                limit: 2,
                ..Query::default()
            });
            seen.extend(page.entries.iter().map(|e| e.seq));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, [8, 7, 6, 5, 4, 3, 2, 1]);
        let future = query(Query {
            since_ms: Some(now_ms() + 60_000),
            limit: 10,
            ..Query::default()
        });
        assert!(future.entries.is_empty());
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = AuditLog::open(dir.path(), DEFAULT_RETENTION).unwrap();
        let second = AuditLog::open(dir.path(), DEFAULT_RETENTION).err().unwrap();
        assert!(
            second
                .to_string()
                .contains("in use by another capbridge serve"),
            "{second}"
        );
    }
}
