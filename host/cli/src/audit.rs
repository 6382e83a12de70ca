//! `capbridge audit`: the audit log for the person at the terminal.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use capbridge_runtime::audit::{self, AuditEntry, Query};

pub struct Filters {
    pub since: Option<String>,
    pub component: Option<String>,
    pub session: Option<String>,
    pub kind: Option<String>,
    pub limit: usize,
}

pub fn show(dir: &Path, filters: Filters, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=audit::MAX_PAGE).contains(&filters.limit),
        "--limit must be from 1 to {}",
        audit::MAX_PAGE
    );
    let since_ms = match &filters.since {
        Some(text) => {
            let ago = parse_duration(text)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
            Some(now.saturating_sub(ago).as_millis() as u64)
        }
        None => None,
    };
    let session = match &filters.session {
        None => None,
        Some(text) => Some(match text.split_once(':') {
            Some((run, n)) => (run.to_string(), n.parse().context("--session RUN:N")?),
            None => {
                let n: u64 = text.parse().context("--session takes N or RUN:N")?;
                let latest = audit::query_dir(
                    dir,
                    &Query {
                        limit: 1,
                        ..Query::default()
                    },
                )?;
                let run = latest
                    .entries
                    .first()
                    .map(|e| e.run.clone())
                    .unwrap_or_default();
                (run, n)
            }
        }),
    };
    let page = audit::query_dir(
        dir,
        &Query {
            since_ms,
            until_ms: None,
            component: filters.component,
            session,
            kind: filters.kind,
            before: None,
            limit: filters.limit,
        },
    )?;
    if json {
        for entry in &page.entries {
            println!("{}", serde_json::to_string(entry)?);
        }
    } else if page.entries.is_empty() {
        println!("no audit entries (the log is in {})", dir.display());
    } else {
        for entry in &page.entries {
            println!("{}", line(entry));
        }
        if page.next.is_some() {
            println!(
                "(more: raise --limit or narrow with --since, --component, --session, --kind)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-12-02 01:02:03  run 1a2b3c4d  session 3  echo  event.published  allowed  {"topic":…}`
fn line(entry: &AuditEntry) -> String {
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(entry.time_ms));
    let mut parts = vec![time.to_string(), format!("run {}", entry.run)];
    if let Some(session) = entry.session {
        parts.push(format!("session {session}"));
    }
    if let Some(origin) = &entry.origin {
        parts.push(origin.clone());
    }
    if let Some(component) = &entry.component {
        parts.push(component.clone());
    }
    parts.push(entry.kind.clone());
    parts.push(entry.outcome.name().to_string());
    if !entry.detail.is_null() {
        parts.push(entry.detail.to_string());
    }
    parts.join("  ")
}

/// `90s`, `15m`, `2h`, `7d`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number
        .parse()
        .with_context(|| format!("--since `{text}`: a number and s, m, h or d (`2h`)"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since `{text}`: the unit is s, m, h or d (`2h`)"),
    };
    Ok(Duration::from_secs(seconds))
}
