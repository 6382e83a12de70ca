//! Prompts: what a person decides before the host does something risky on a component's or the
//! web app's word (start a process). The host asks, the person answers, the host enforces.
//!
//! [`Approvals`] is the one broker of pending prompts for the whole host. A capability asks
//! ([`Approvals::ask`]) and waits, never longer than [`PROMPT_TIMEOUT`]; whoever speaks for the
//! person (the terminal running `serve`, `capbridge prompts` over its Unix socket, the web app
//! only when the user opted in) lists them ([`Approvals::pending`]), watches for new ones
//! ([`Approvals::changed`]) and decides ([`Approvals::decide`]). No component can reach this
//! type: it is not behind any WIT interface.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

/// How long a prompt waits for a person before it counts as rejected.
pub const PROMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most prompts waiting at once per session (more are refused, not queued).
pub const MAX_PENDING_PER_SESSION: usize = 16;

/// What a person is asked to decide. It shows templates, never resolved values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Prompt {
    /// `req-<n>`, unique for the life of the host.
    pub id: String,
    /// `command`, `install` or `mcp-server` (registering or changing an MCP server).
    pub kind: String,
    /// The component that asked.
    pub component: String,
    /// The contract session it asked for (none outside the contract).
    pub session: Option<u64>,
    /// The run it would start (`command`, `install`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The MCP server it would register or change (`mcp-server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// One line a person reads: the program and its arguments (templates), shell-quoted; or
    /// the URL reached.
    pub summary: String,
    /// The program's host path (none for a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_path: Option<String>,
    /// The working directory (none for a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The URL reached (an MCP server over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Names of the variables the request sets (never their values).
    pub env_names: Vec<String>,
    /// Names of the HTTP headers sent (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    /// Whether it gives standard input (its content is not shown).
    pub has_stdin: bool,
    /// What the person should know before allowing it.
    pub warnings: Vec<String>,
    /// Whether "allow and whitelist" is offered (never for installs).
    pub whitelistable: bool,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// A person's answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    AllowOnce,
    AllowAndWhitelist,
    Reject,
}

impl Decision {
    /// As the contract writes it (`allow_once`, `allow_and_whitelist`, `reject`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::AllowOnce => "allow_once",
            Decision::AllowAndWhitelist => "allow_and_whitelist",
            Decision::Reject => "reject",
        }
    }
}

/// Who answered for the person.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Decider {
    /// The terminal running `capbridge serve`.
    Terminal,
    /// `capbridge prompts` over the prompt socket.
    PromptsCli,
    /// The desktop shell's prompt window.
    PromptWindow,
    /// The web app, through the resolve route (only when the user opted in).
    WebApp,
    /// Nobody answered within [`PROMPT_TIMEOUT`] (or the session or host ended).
    Nobody,
}

impl Decider {
    pub fn as_str(self) -> &'static str {
        match self {
            Decider::Terminal => "terminal",
            Decider::PromptsCli => "prompts-cli",
            Decider::PromptWindow => "prompt-window",
            Decider::WebApp => "web-app",
            Decider::Nobody => "nobody",
        }
    }
}

/// The outcome of [`Approvals::ask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    pub by: Decider,
}

/// Why a decision was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no pending prompt `{0}` (it was decided, timed out, or never existed)")]
    NotFound(String),
    #[error("prompt `{0}` cannot be whitelisted (installs and MCP server registrations are approved one at a time); allow once or reject")]
    NotWhitelistable(String),
    #[error("prompt `{0}` is for the person alone (turning automation on): answer it in its window, the terminal running capbridge, or with `capbridge prompts`")]
    PersonOnly(String),
}

/// Kinds of prompt only the person answers: never the web app, even with `web-approvals`.
pub const PERSON_ONLY_KINDS: &[&str] = &["automation"];

/// Why a prompt could not be shown.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error("this session already has {MAX_PENDING_PER_SESSION} prompts waiting; answer or let them time out first")]
    TooMany,
}

struct Pending {
    prompt: Prompt,
    answer: oneshot::Sender<Answer>,
}

/// The host's pending prompts; cheap to clone.
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every change of the pending set.
    changed: watch::Sender<u64>,
    timeout: Duration,
}

struct Inner {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

impl Default for Approvals {
    fn default() -> Self {
        Self::new(PROMPT_TIMEOUT)
    }
}

impl Approvals {
    /// A broker whose prompts wait `timeout` for a person.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                pending: BTreeMap::new(),
            })),
            changed: watch::channel(0).0,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Registers `prompt` (its `id`, `created_at_ms` and `expires_at_ms` are filled in here) and
    /// returns it with the future of its answer: the person's decision, or a rejection by
    /// [`Decider::Nobody`] after the timeout.
    pub fn ask(
        &self,
        mut prompt: Prompt,
    ) -> Result<
        (
            Prompt,
            impl std::future::Future<Output = Answer> + Send + 'static,
        ),
        AskError,
    > {
        let (sender, receiver) = oneshot::channel();
        let key = {
            let mut inner = self.inner.lock().expect("approvals lock");
            let waiting = inner
                .pending
                .values()
                .filter(|p| p.prompt.session == prompt.session)
                .count();
            if waiting >= MAX_PENDING_PER_SESSION {
                return Err(AskError::TooMany);
            }
            let key = inner.next_id;
            inner.next_id += 1;
            let now = now_ms();
            prompt.id = format!("req-{key}");
            prompt.created_at_ms = now;
            prompt.expires_at_ms = now + self.timeout.as_millis() as u64;
            inner.pending.insert(
                key,
                Pending {
                    prompt: prompt.clone(),
                    answer: sender,
                },
            );
            key
        };
        self.changed.send_modify(|n| *n += 1);
        let this = self.clone();
        let answer = async move {
            let rejected = Answer {
                decision: Decision::Reject,
                by: Decider::Nobody,
            };
            let answer = match tokio::time::timeout(this.timeout, receiver).await {
                Ok(Ok(answer)) => answer,
                // Timed out, or dropped by `reject_where`.
                _ => rejected,
            };
            this.remove(key);
            answer
        };
        Ok((prompt, answer))
    }

    /// Every prompt waiting for a person, oldest first.
    pub fn pending(&self) -> Vec<Prompt> {
        let inner = self.inner.lock().expect("approvals lock");
        inner.pending.values().map(|p| p.prompt.clone()).collect()
    }

    /// Whether any prompt waits for a person (cheap: input asks between keys).
    pub fn any_pending(&self) -> bool {
        !self
            .inner
            .lock()
            .expect("approvals lock")
            .pending
            .is_empty()
    }

    /// One pending prompt.
    pub fn get(&self, id: &str) -> Option<Prompt> {
        let inner = self.inner.lock().expect("approvals lock");
        inner
            .pending
            .values()
            .find(|p| p.prompt.id == id)
            .map(|p| p.prompt.clone())
    }

    /// Answers prompt `id`. Installs cannot be whitelisted.
    pub fn decide(&self, id: &str, decision: Decision, by: Decider) -> Result<Prompt, DecideError> {
        let pending = {
            let mut inner = self.inner.lock().expect("approvals lock");
            let key = inner
                .pending
                .iter()
                .find(|(_, p)| p.prompt.id == id)
                .map(|(key, _)| *key)
                .ok_or_else(|| DecideError::NotFound(id.to_string()))?;
            let prompt = &inner.pending[&key].prompt;
            if decision == Decision::AllowAndWhitelist && !prompt.whitelistable {
                return Err(DecideError::NotWhitelistable(id.to_string()));
            }
            if by == Decider::WebApp && PERSON_ONLY_KINDS.contains(&prompt.kind.as_str()) {
                return Err(DecideError::PersonOnly(id.to_string()));
            }
            inner.pending.remove(&key).expect("found above")
        };
        self.changed.send_modify(|n| *n += 1);
        // The asker may be gone (its session ended meanwhile); then nothing runs.
        let _ = pending.answer.send(Answer { decision, by });
        Ok(pending.prompt)
    }

    /// Rejects (as [`Decider::Nobody`]) every prompt `which` selects: its session ended, or the
    /// host is stopping.
    pub fn reject_where(&self, which: impl Fn(&Prompt) -> bool) {
        let gone: Vec<Pending> = {
            let mut inner = self.inner.lock().expect("approvals lock");
            let keys: Vec<u64> = inner
                .pending
                .iter()
                .filter(|(_, p)| which(&p.prompt))
                .map(|(key, _)| *key)
                .collect();
            keys.iter()
                .filter_map(|key| inner.pending.remove(key))
                .collect()
        };
        if !gone.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        for pending in gone {
            let _ = pending.answer.send(Answer {
                decision: Decision::Reject,
                by: Decider::Nobody,
            });
        }
    }

    /// A receiver that changes whenever a prompt is added or leaves.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn remove(&self, key: u64) {
        let removed = self
            .inner
            .lock()
            .expect("approvals lock")
            .pending
            .remove(&key)
            .is_some();
        if removed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(session: Option<u64>, whitelistable: bool) -> Prompt {
        Prompt {
            id: String::new(),
            kind: "command".into(),
            component: "commands".into(),
            session,
            run_id: Some("run-1".into()),
            server_id: None,
            summary: "true".into(),
            program_path: Some("/bin/true".into()),
            cwd: Some("/".into()),
            url: None,
            env_names: vec![],
            header_names: vec![],
            has_stdin: false,
            warnings: vec![],
            whitelistable,
            created_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn the_web_app_never_turns_automation_on() {
        let approvals = Approvals::default();
        let automation = Prompt {
            kind: "automation".into(),
            whitelistable: false,
            ..prompt(Some(1), false)
        };
        let (shown, answer) = approvals.ask(automation).unwrap();
        assert_eq!(
            approvals.decide(&shown.id, Decision::AllowOnce, Decider::WebApp),
            Err(DecideError::PersonOnly(shown.id.clone()))
        );
        // Still waiting for the person, who answers.
        assert_eq!(approvals.pending().len(), 1);
        approvals
            .decide(&shown.id, Decision::AllowOnce, Decider::PromptsCli)
            .unwrap();
        assert_eq!(answer.await.by, Decider::PromptsCli);
    }

    #[tokio::test]
    async fn a_decision_reaches_the_asker_once() {
        let approvals = Approvals::default();
        let (shown, answer) = approvals.ask(prompt(Some(1), true)).unwrap();
        assert_eq!(approvals.pending().len(), 1);
        approvals
            .decide(&shown.id, Decision::AllowAndWhitelist, Decider::PromptsCli)
            .unwrap();
        assert_eq!(
            answer.await,
            Answer {
                decision: Decision::AllowAndWhitelist,
                by: Decider::PromptsCli
            }
        );
        assert!(approvals.pending().is_empty());
        assert_eq!(
            approvals.decide(&shown.id, Decision::AllowOnce, Decider::Terminal),
            Err(DecideError::NotFound(shown.id.clone()))
        );
    }

    #[tokio::test]
    async fn installs_cannot_be_whitelisted() {
        let approvals = Approvals::default();
        let (shown, _answer) = approvals.ask(prompt(None, false)).unwrap();
        assert!(matches!(
            approvals.decide(&shown.id, Decision::AllowAndWhitelist, Decider::Terminal),
            Err(DecideError::NotWhitelistable(_))
        ));
        assert_eq!(approvals.pending().len(), 1, "still waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_prompt_is_rejected_after_the_timeout() {
        let approvals = Approvals::new(Duration::from_secs(60));
        let (_shown, answer) = approvals.ask(prompt(Some(1), true)).unwrap();
        let answer = answer.await;
        assert_eq!(answer.decision, Decision::Reject);
        assert_eq!(answer.by, Decider::Nobody);
        assert!(approvals.pending().is_empty());
    }

    #[tokio::test]
    async fn a_session_s_prompts_end_with_it_and_are_bounded() {
        let approvals = Approvals::default();
        let mut answers = Vec::new();
        for _ in 0..MAX_PENDING_PER_SESSION {
            answers.push(approvals.ask(prompt(Some(7), true)).unwrap().1);
        }
        assert_eq!(
            approvals.ask(prompt(Some(7), true)).err(),
            Some(AskError::TooMany)
        );
        let (_other, _keep) = approvals.ask(prompt(Some(8), true)).unwrap();
        approvals.reject_where(|p| p.session == Some(7));
        for answer in answers {
            assert_eq!(answer.await.by, Decider::Nobody);
        }
        assert_eq!(approvals.pending().len(), 1);
    }
}
