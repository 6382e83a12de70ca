//! The holds' logic against a fake inhibitor: no D-Bus, no wasm.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::caps::events::EventBus;

/// Counts inhibitions taken and given back; refuses when told to.
#[derive(Default)]
struct FakeInhibitor {
    taken: AtomicUsize,
    given_back: Arc<AtomicUsize>,
    refuse: bool,
}

struct FakeInhibition(Arc<AtomicUsize>);

impl Drop for FakeInhibition {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Inhibitor for FakeInhibitor {
    fn name(&self) -> &'static str {
        "the fake inhibitor"
    }

    fn inhibit(&self, _reason: &str) -> Result<Inhibition, String> {
        if self.refuse {
            return Err("no service".into());
        }
        self.taken.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeInhibition(self.given_back.clone())))
    }
}

fn service() -> (AwakeService, Arc<FakeInhibitor>, EventBus) {
    let fake = Arc::new(FakeInhibitor::default());
    let events = EventBus::default();
    (
        AwakeService::with_inhibitor(events.clone(), fake.clone()),
        fake,
        events,
    )
}

#[tokio::test]
async fn the_first_hold_inhibits_and_the_last_release_gives_back() {
    let (awake, fake, events) = service();
    let mut seen = events.subscribe();
    let a = awake.acquire("awake", Some(1), "render").await.unwrap();
    let b = awake.acquire("awake", Some(2), "export").await.unwrap();
    assert_eq!(
        fake.taken.load(Ordering::SeqCst),
        1,
        "one inhibition for two holds"
    );
    assert_eq!(awake.status().await, (true, vec![a.clone(), b.clone()]));
    // A session releases only its own holds.
    assert!(matches!(
        awake.release(Some(2), &a.id).await,
        Err(AwakeError::NotFound(_))
    ));
    awake.release(Some(1), &a.id).await.unwrap();
    assert_eq!(fake.given_back.load(Ordering::SeqCst), 0, "b still holds");
    awake.release(Some(2), &b.id).await.unwrap();
    assert_eq!(fake.given_back.load(Ordering::SeqCst), 1);
    assert_eq!(awake.status().await, (false, vec![]));
    let topics: Vec<String> = std::iter::from_fn(|| seen.try_recv().ok())
        .map(|e| e.topic)
        .collect();
    assert_eq!(
        topics,
        [
            "awake.acquired",
            "awake.acquired",
            "awake.released",
            "awake.released"
        ]
    );
}

#[tokio::test]
async fn an_ended_session_releases_only_its_holds_and_shutdown_releases_all() {
    let (awake, fake, _events) = service();
    awake.acquire("awake", Some(1), "one").await.unwrap();
    awake.acquire("awake", Some(1), "two").await.unwrap();
    let kept = awake.acquire("awake", Some(2), "kept").await.unwrap();
    Service::end_session(&awake, 1).await;
    assert_eq!(awake.status().await, (true, vec![kept]));
    assert_eq!(fake.given_back.load(Ordering::SeqCst), 0);
    Service::shutdown(&awake).await;
    assert_eq!(awake.status().await, (false, vec![]));
    assert_eq!(fake.given_back.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_reasons_and_too_many_holds_change_nothing() {
    let (awake, fake, _events) = service();
    for reason in ["", "   ", &"x".repeat(MAX_REASON_CHARS + 1), "a\u{7}b"] {
        assert!(matches!(
            awake.acquire("awake", Some(1), reason).await,
            Err(AwakeError::InvalidArgument(_))
        ));
    }
    assert_eq!(fake.taken.load(Ordering::SeqCst), 0);
    let longest = "x".repeat(MAX_REASON_CHARS);
    for _ in 0..MAX_HOLDS_PER_SESSION {
        awake.acquire("awake", Some(1), &longest).await.unwrap();
    }
    assert!(matches!(
        awake.acquire("awake", Some(1), "one more").await,
        Err(AwakeError::Unavailable(_))
    ));
    assert_eq!(awake.status().await.1.len(), MAX_HOLDS_PER_SESSION);
    // Another session is not limited by the first one's holds.
    awake.acquire("awake", Some(2), "other").await.unwrap();
}

#[tokio::test]
async fn a_system_that_cannot_inhibit_is_unavailable() {
    let fake = Arc::new(FakeInhibitor {
        refuse: true,
        ..FakeInhibitor::default()
    });
    let awake = AwakeService::with_inhibitor(EventBus::default(), fake);
    assert!(matches!(
        awake.acquire("awake", Some(1), "render").await,
        Err(AwakeError::Unavailable(m)) if m.contains("no service")
    ));
    assert_eq!(awake.status().await, (false, vec![]));
}
