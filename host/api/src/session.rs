//! Sessions: 256-bit random tokens with an expiry, refreshed by rotation, compared in constant
//! time. A session issued to a browser origin is only accepted from that origin.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

/// At most this many live sessions; issuing one more drops the oldest.
pub const MAX_SESSIONS: usize = 256;

pub struct Sessions {
    ttl: Duration,
    inner: Mutex<Inner>,
    /// Woken when a session is issued, refreshed or dropped, so whoever waits for the next
    /// expiry ([`Sessions::take_ended`]) recomputes it.
    changed: tokio::sync::Notify,
}

struct Inner {
    next_id: u64,
    sessions: Vec<Session>,
    /// Sessions that ended (dropped for a newer one, or expired and removed) and have not been
    /// reported by [`Sessions::take_ended`] yet.
    ended: Vec<u64>,
}

struct Session {
    id: u64,
    token: [u8; 32],
    origin: Option<String>,
    expires: Instant,
    /// Its expiry has been reported by [`Sessions::take_ended`].
    reported: bool,
}

/// A newly issued (or rotated) token.
#[derive(Debug)]
pub struct Issued {
    pub session_id: u64,
    pub token: String,
    pub expires_at: SystemTime,
    pub ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not a token this bridge issued (or one already rotated away by a refresh).
    Invalid,
    Expired,
    /// Issued to another origin (or to a non-browser client) than the one presenting it.
    WrongOrigin,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Invalid => "the session token is not valid; handshake again",
            AuthError::Expired => {
                "the session token has expired; refresh it before expiry or handshake again"
            }
            AuthError::WrongOrigin => "the session token was issued to another origin",
        }
    }
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner {
                next_id: 1,
                sessions: Vec::new(),
                ended: Vec::new(),
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The sessions that ended since the last call (expired, or dropped for a newer one), each
    /// reported once, and when the next live one expires.
    pub fn take_ended(&self) -> (Vec<u64>, Option<Instant>) {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("sessions lock");
        let mut ended = std::mem::take(&mut inner.ended);
        for session in inner.sessions.iter_mut() {
            if session.expires <= now && !session.reported {
                session.reported = true;
                ended.push(session.id);
            }
        }
        let next = inner
            .sessions
            .iter()
            .filter(|s| s.expires > now)
            .map(|s| s.expires)
            .min();
        (ended, next)
    }

    /// Woken whenever sessions change (see [`Sessions::take_ended`]).
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Issues a new session for a client on `origin` (`None`: a non-browser local client).
    pub fn issue(&self, origin: Option<&str>) -> anyhow::Result<Issued> {
        let token = new_token()?;
        let mut inner = self.inner.lock().expect("sessions lock");
        let now = Instant::now();
        let Inner {
            sessions, ended, ..
        } = &mut *inner;
        sessions.retain(|s| {
            let live = s.expires > now;
            if !live && !s.reported {
                ended.push(s.id);
            }
            live
        });
        if sessions.len() >= MAX_SESSIONS {
            let dropped = sessions.remove(0);
            ended.push(dropped.id);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.sessions.push(Session {
            id,
            token,
            origin: origin.map(str::to_string),
            expires: now + self.ttl,
            reported: false,
        });
        drop(inner);
        self.changed.notify_one();
        Ok(self.issued(id, &token))
    }

    /// The session `token` belongs to, if it is live and presented from its own origin.
    pub fn validate(&self, token: &str, origin: Option<&str>) -> Result<u64, AuthError> {
        let inner = self.inner.lock().expect("sessions lock");
        let session = find(&inner.sessions, token)?;
        check(session, origin)?;
        Ok(session.id)
    }

    /// Replaces a live session's token with a new one and extends its expiry; the old token
    /// stops working at once.
    pub fn refresh(&self, token: &str, origin: Option<&str>) -> Result<Issued, AuthError> {
        let new = new_token().map_err(|_| AuthError::Invalid)?;
        let mut inner = self.inner.lock().expect("sessions lock");
        let index = {
            let session = find(&inner.sessions, token)?;
            check(session, origin)?;
            inner
                .sessions
                .iter()
                .position(|s| s.id == session.id)
                .expect("found above")
        };
        let session = &mut inner.sessions[index];
        session.token = new;
        session.expires = Instant::now() + self.ttl;
        let id = session.id;
        drop(inner);
        self.changed.notify_one();
        Ok(self.issued(id, &new))
    }

    /// Whether session `id` is still live (the event socket checks this at every heartbeat).
    pub fn is_live(&self, id: u64) -> bool {
        let now = Instant::now();
        let inner = self.inner.lock().expect("sessions lock");
        inner.sessions.iter().any(|s| s.id == id && s.expires > now)
    }

    /// The web app origin session `id` was issued to (`None` for a local client, or a session
    /// that ended): what a prompt window names as the asker.
    pub fn origin(&self, id: u64) -> Option<String> {
        let inner = self.inner.lock().expect("sessions lock");
        inner
            .sessions
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.origin.clone())
    }

    /// How many sessions are live.
    pub fn live(&self) -> usize {
        let now = Instant::now();
        let inner = self.inner.lock().expect("sessions lock");
        inner.sessions.iter().filter(|s| s.expires > now).count()
    }

    fn issued(&self, session_id: u64, token: &[u8; 32]) -> Issued {
        Issued {
            session_id,
            token: URL_SAFE_NO_PAD.encode(token),
            expires_at: SystemTime::now() + self.ttl,
            ttl: self.ttl,
        }
    }
}

fn new_token() -> anyhow::Result<[u8; 32]> {
    let mut token = [0u8; 32];
    getrandom::fill(&mut token)
        .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    Ok(token)
}

/// Every stored token is compared, each in constant time, so the time taken says nothing about
/// how much of a guess was right.
fn find<'a>(sessions: &'a [Session], token: &str) -> Result<&'a Session, AuthError> {
    let mut presented = [0u8; 32];
    match URL_SAFE_NO_PAD.decode(token.as_bytes()) {
        Ok(bytes) if bytes.len() == 32 => presented.copy_from_slice(&bytes),
        _ => return Err(AuthError::Invalid),
    }
    let mut found = None;
    for session in sessions {
        if bool::from(session.token.ct_eq(&presented)) {
            found = Some(session);
        }
    }
    found.ok_or(AuthError::Invalid)
}

fn check(session: &Session, origin: Option<&str>) -> Result<(), AuthError> {
    if session.expires <= Instant::now() {
        return Err(AuthError::Expired);
    }
    match origin {
        Some(origin) if session.origin.as_deref() != Some(origin) => Err(AuthError::WrongOrigin),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let a = sessions.issue(None).unwrap();
        let b = sessions.issue(None).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.token).unwrap().len(), 32);
        assert_ne!(a.token, b.token);
        assert_eq!(sessions.validate(&a.token, None), Ok(a.session_id));
    }

    #[test]
    fn refresh_rotates_the_token() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let old = sessions.issue(Some("https://app.example")).unwrap();
        let new = sessions
            .refresh(&old.token, Some("https://app.example"))
            .unwrap();
        assert_eq!(new.session_id, old.session_id);
        assert_eq!(
            sessions.validate(&old.token, Some("https://app.example")),
            Err(AuthError::Invalid)
        );
        assert!(sessions
            .validate(&new.token, Some("https://app.example"))
            .is_ok());
    }

    #[test]
    fn expired_tokens_are_refused_and_not_refreshable() {
        let sessions = Sessions::new(Duration::from_millis(20));
        let issued = sessions.issue(None).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            sessions.validate(&issued.token, None),
            Err(AuthError::Expired)
        );
        assert_eq!(
            sessions.refresh(&issued.token, None).unwrap_err(),
            AuthError::Expired
        );
        assert!(!sessions.is_live(issued.session_id));
    }

    #[test]
    fn a_token_is_bound_to_its_origin() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let issued = sessions.issue(Some("https://app.example")).unwrap();
        assert_eq!(
            sessions.validate(&issued.token, Some("https://evil.example")),
            Err(AuthError::WrongOrigin)
        );
        let local = sessions.issue(None).unwrap();
        assert_eq!(
            sessions.validate(&local.token, Some("https://app.example")),
            Err(AuthError::WrongOrigin)
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let sessions = Sessions::new(Duration::from_secs(60));
        sessions.issue(None).unwrap();
        for bad in ["", "x", "%%%", &"A".repeat(43), &"A".repeat(500)] {
            assert_eq!(
                sessions.validate(bad, None),
                Err(AuthError::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let first = sessions.issue(None).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.issue(None).unwrap();
        }
        assert_eq!(sessions.live(), MAX_SESSIONS);
        assert_eq!(
            sessions.validate(&first.token, None),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn ended_sessions_are_reported_once() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let first = sessions.issue(None).unwrap();
        let (ended, next) = sessions.take_ended();
        assert!(ended.is_empty());
        assert!(next.is_some(), "the live session's expiry");
        std::thread::sleep(Duration::from_millis(80));
        let (ended, next) = sessions.take_ended();
        assert_eq!(ended, [first.session_id]);
        assert_eq!(next, None);
        assert!(sessions.take_ended().0.is_empty(), "reported once");
        // Dropped for a newer one: reported too.
        let sessions = Sessions::new(Duration::from_secs(60));
        let oldest = sessions.issue(None).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.issue(None).unwrap();
        }
        assert_eq!(sessions.take_ended().0, [oldest.session_id]);
    }
}
